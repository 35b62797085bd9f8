"""The rage-click rules of established tools, to compare against on the same stream.

These are references for `frustration evaluate --baseline`, not part of our detection: they have
no exclusions for steppers, text selection or carousels, which is exactly what the comparison
shows. Rules as published in their code (see the anchors notes):

- PostHog (posthog-js `rageclick.ts`): 3 clicks, each within 30 px (Manhattan) and 1000 ms of the
  previous one; fires on the third click, then starts counting again.
- Datadog RUM (`computeFrustration.ts`): 3 consecutive clicks on the same target, each within
  100 px of the previous, spanning at most 1000 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from signals.events import ClickEvent

BaselineName = Literal["posthog", "datadog"]


@dataclass(slots=True)
class _Clicks:
    recent: list[tuple[int, float, float, str | None]] = field(default_factory=list)


class BaselineRageClicks:
    """Per-user rage-click detection by a published rule; `learn_one` is True when it fires."""

    def __init__(self, rule: BaselineName) -> None:
        self.rule = rule
        self._users: dict[str, _Clicks] = {}

    def learn_one(self, event: ClickEvent) -> bool:
        state = self._users.setdefault(event.user_id, _Clicks())
        x = event.x if event.x is not None else 0.0
        y = event.y if event.y is not None else 0.0
        click = (event.ts, x, y, event.target)
        recent = state.recent
        if self.rule == "posthog":
            if recent:
                ts, px, py, _ = recent[-1]
                if event.ts - ts > 1000 or abs(x - px) + abs(y - py) > 30:
                    recent.clear()
            recent.append(click)
            if len(recent) >= 3:
                recent.clear()
                return True
            return False
        if recent:
            ts, px, py, target = recent[-1]
            far = ((x - px) ** 2 + (y - py) ** 2) ** 0.5 > 100
            if target != event.target or far:
                recent.clear()
        recent.append(click)
        del recent[:-3]
        return len(recent) == 3 and recent[-1][0] - recent[0][0] <= 1000
