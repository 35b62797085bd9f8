"""Rage clicks: the same control hammered again and again."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from detectors.config import DetectionConfig
from signals.events import ClickEvent
from signals.flags import RageClickEvidence, Signal


@dataclass(slots=True)
class RageClickState:
    """One user's current click burst, and the recent shorter bursts on one control."""

    control: str | None = None  # key of the control of the current burst
    page: str | None = None
    x: float | None = None  # first click of the burst: a control without a target is a fixed place
    y: float | None = None
    first_ts: int = 0
    last_ts: int = 0
    clicks: int = 0
    max_gap_ms: int = 0
    max_detail: int = -1  # highest MouseEvent.detail seen in the burst, -1 when unknown
    text_like: bool = False
    reported_clicks: int = 0  # clicks of this burst already turned into signals
    # Start times of recent shorter bursts (rage_burst_min_clicks+) on `bursts_control`.
    bursts_control: tuple[str | None, str | None] | None = None
    bursts_x: float | None = None
    bursts_y: float | None = None
    burst_starts: list[tuple[int, int]] | None = None  # (start ts, clicks) of each short burst


class RageClickDetector:
    """Finds a user clicking one control fast and again and again.

    Catches: `rage_min_clicks` (6) clicks on one control with every gap at most `rage_max_gap_ms`
    (600 ms), e.g. someone hammering a "Pay now" that does nothing; and `rage_bursts_required` (3)
    shorter bursts of `rage_burst_min_clicks` (4) such clicks on one control within
    `rage_bursts_window_ms` (2 min). One control is the same `page` + `target`; clicks without a
    target are one control while they land within `rage_radius_px` (30 px) of the burst's first
    click (a fixed place, never a chain of clicks walking down a list). A burst that keeps going
    signals again every further `rage_min_clicks` clicks (`rage_untargeted_min_clicks` without a
    target), its evidence the whole burst so far.

    Without a target (x/y only, as many third-party sources send) it takes much stronger
    repetition, `rage_untargeted_min_clicks` (18) clicks on one spot, and the signal has strength
    `rage_untargeted_strength`, by default 0: it is reported (metrics, the engine's outbox) but is
    never part of a flag; set to 0.5 it corroborates a signal of another kind (a failed login, a
    chat left waiting) and still never flags alone. The repeated-bursts rule needs a target.
    People at work click one spot fast all the time (scroll arrows, spin boxes, list rows: in the
    Balabit sessions of real office work 62 of 65 sessions have a run of 6 or more such clicks, a
    third one of 18 or more, two of about 90), and without the target we cannot tell those from a
    dead button: no repetition count separates them, and a burst a third of people make is no
    corroboration either, unless the source sends clicks on interactive elements only.

    Never counts: controls clicked fast on purpose (stepper, carousel and pager labels such as
    `+ - > < Next Previous`; roles spinbutton, slider, tab, switch, checkbox; number, range and text
    inputs; media and canvas), and bursts on text elements whose `detail` never passes 3
    (double- and triple-click selection). Where it fails: a broken control clicked slowly (gaps
    over 600 ms) is not caught; a fast stepper with an unrecognised label is.

    Cost: O(1) time and a few fields of state per user per click.

    Score: a signal on a control with a target has strength 1.0 (flags on its own); without a
    target, `rage_untargeted_strength` (0: no weight).

    Parameters
    ----------
    config
        The thresholds named above (`DetectionConfig`).

    Examples
    --------
    >>> from signals.events import ClickEvent
    >>> detector = RageClickDetector()
    >>> state = RageClickState()
    >>> t0 = 1_795_255_200_000
    >>> signals = [
    ...     detector.learn_one(state, ClickEvent(type="click", user_id="u1", ts=t0 + 300 * i,
    ...                                          target="#pay", label="Pay now", page="/billing"))
    ...     for i in range(6)
    ... ]
    >>> [s is not None for s in signals]
    [False, False, False, False, False, True]
    >>> signals[-1].evidence.clicks, signals[-1].evidence.span_ms
    (6, 1500)
    >>> stepper = RageClickState()
    >>> any(detector.learn_one(stepper, ClickEvent(type="click", user_id="u1", ts=t0 + 100 * i,
    ...                                             target="#qty-plus", label="+"))
    ...     for i in range(20))
    False
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config or DetectionConfig()
        c = self.config
        self._labels = frozenset(label.lower() for label in c.rage_ignored_labels)
        self._label_prefixes = tuple(p.lower() for p in c.rage_ignored_label_prefixes)
        self._roles = frozenset(c.rage_ignored_roles)
        self._input_types = frozenset(c.rage_ignored_input_types)
        self._elements = frozenset(c.rage_ignored_elements)
        self._text_elements = frozenset(c.rage_text_elements)
        # Pages have few distinct controls: remember the verdict per (label, role, type, element).
        self._ignored_cache: dict[tuple[str | None, ...], bool] = {}

    def is_ignored(self, event: ClickEvent) -> bool:
        """True for controls people click fast on purpose (never rage)."""
        key = (event.label, event.role, event.input_type, event.element)
        verdict = self._ignored_cache.get(key)
        if verdict is None:
            if len(self._ignored_cache) > 50_000:
                self._ignored_cache.clear()
            verdict = self._ignored_cache[key] = self._is_ignored(event)
        return verdict

    def _is_ignored(self, event: ClickEvent) -> bool:
        if event.role is not None and event.role.lower() in self._roles:
            return True
        if event.input_type is not None and event.input_type.lower() in self._input_types:
            return True
        if event.element is not None and event.element.lower() in self._elements:
            return True
        if event.label is not None:
            label = event.label.strip().lower()
            if label in self._labels or label.startswith(self._label_prefixes):
                return True
        return False

    def learn_one(self, state: RageClickState, event: ClickEvent) -> Signal | None:
        """Add one click (in event-time order); return the signal it completes, if any."""
        if self.is_ignored(event):
            return None
        c = self.config
        ts = event.ts
        gap = ts - state.last_ts
        if state.clicks and gap <= c.rage_max_gap_ms and self._same_control(state, event):
            state.clicks += 1
            if gap > state.max_gap_ms:
                state.max_gap_ms = gap
        else:
            self._start_burst(state, event)
        state.last_ts = ts
        if event.detail is not None and event.detail > state.max_detail:
            state.max_detail = event.detail
        if state.text_like and state.max_detail <= 3:
            return None  # double/triple-click text selection, or not yet past it
        targeted = state.control is not None
        min_clicks = c.rage_min_clicks if targeted else c.rage_untargeted_min_clicks
        if state.clicks - state.reported_clicks >= min_clicks:
            state.reported_clicks = state.clicks
            state.burst_starts = None
            # The evidence is the whole burst so far (12 clicks, not the last 6).
            return self._signal(state, event, "burst", state.clicks, 1, ts - state.first_ts)
        if targeted and state.clicks == c.rage_burst_min_clicks:
            return self._count_short_burst(state, event)
        return None

    def _same_control(self, state: RageClickState, event: ClickEvent) -> bool:
        if event.target is not None:
            return state.control == event.target and state.page == event.page
        if state.control is not None or event.x is None or event.y is None:
            return False
        if state.x is None or state.y is None or state.page != event.page:
            return False
        # Distance from the burst's first click: a fixed place, not the previous click.
        return abs(event.x - state.x) + abs(event.y - state.y) <= self.config.rage_radius_px

    def _same_burst_control(self, state: RageClickState, event: ClickEvent) -> bool:
        """Whether this burst is on the control of the earlier short bursts."""
        if state.bursts_control != (state.page, state.control):
            return False
        if state.control is not None:
            return True
        x, y, bx, by = event.x, event.y, state.bursts_x, state.bursts_y
        if x is None or y is None or bx is None or by is None:
            return False
        return abs(x - bx) + abs(y - by) <= self.config.rage_radius_px

    def _start_burst(self, state: RageClickState, event: ClickEvent) -> None:
        # Interned: thousands of users' states then share one copy of each selector and path.
        state.control = None if event.target is None else sys.intern(event.target)
        state.page = None if event.page is None else sys.intern(event.page)
        state.x, state.y = event.x, event.y
        state.first_ts = event.ts
        state.clicks = 1
        state.max_gap_ms = 0
        state.max_detail = -1
        state.reported_clicks = 0
        element = event.element.lower() if event.element is not None else None
        state.text_like = element in self._text_elements

    def _count_short_burst(self, state: RageClickState, event: ClickEvent) -> Signal | None:
        c = self.config
        starts = state.burst_starts
        if starts is None or not self._same_burst_control(state, event):
            state.bursts_control = (state.page, state.control)
            state.bursts_x, state.bursts_y = event.x, event.y
            starts = state.burst_starts = []
        horizon = event.ts - c.rage_bursts_window_ms
        if starts and starts[0][0] < horizon:
            starts[:] = [b for b in starts if b[0] >= horizon]
        starts.append((state.first_ts, state.clicks))
        if len(starts) < c.rage_bursts_required:
            return None
        bursts, clicks = len(starts), sum(n for _, n in starts)
        span = event.ts - starts[0][0]
        state.burst_starts = None
        return self._signal(state, event, "repeated_bursts", clicks, bursts, span)

    def _signal(
        self,
        state: RageClickState,
        event: ClickEvent,
        rule: Literal["burst", "repeated_bursts"],
        clicks: int,
        bursts: int,
        span_ms: int,
    ) -> Signal:
        evidence = RageClickEvidence(
            rule=rule,
            clicks=clicks,
            bursts=bursts,
            span_ms=span_ms,
            max_gap_ms=state.max_gap_ms,
            target=event.target,
            label=event.label,
            element=event.element,
            page=event.page,
        )
        strength = 1.0 if event.target is not None else self.config.rage_untargeted_strength
        return Signal(kind="rage_click", ts=event.ts, strength=strength, evidence=evidence)
