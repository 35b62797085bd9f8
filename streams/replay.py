"""`frustration replay`: run the detector core over NDJSON events, in event time.

Flags go to one sink, security alerts to another, bad and late lines to the dead-letter sink with
their reason; nothing is dropped without being counted. The same input always gives the same
output, whatever the input's order within the allowed lateness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from detectors.config import DetectionConfig
from detectors.engine import DetectionEngine, LateEvent, Output
from signals.exceptions import InvalidEvent
from signals.flags import Flag, SecurityAlert, Signal
from signals.wire import DEFAULT_MAX_EVENT_BYTES, dead_letter_record, event_to_json, parse_event

Sink = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class ReplaySummary:
    """What a replay saw and produced."""

    lines: int = 0  # non-blank input lines
    blank: int = 0
    valid: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    late: int = 0
    duplicates: int = 0
    signals: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)  # new flags, by severity
    escalations: Counter[str] = field(default_factory=Counter)
    alerts: int = 0
    users: int = 0  # users still tracked at the end (idle ones are forgotten)

    def lines_of_text(self) -> list[str]:
        def fmt(counter: Counter[str]) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "none"

        return [
            f"events: {self.lines} lines, {self.valid} valid, "
            f"{sum(self.invalid.values())} invalid, {self.late} late, "
            f"{self.duplicates} duplicates, {self.users} users tracked at the end",
            f"invalid by reason: {fmt(self.invalid)}",
            f"signals by kind: {fmt(self.signals)}",
            f"flags by severity: {fmt(self.flags)} (escalations: {fmt(self.escalations)})",
            f"security alerts: {self.alerts}",
        ]


def _to_json(model: Flag | SecurityAlert) -> dict[str, Any]:
    return model.model_dump(mode="json")


class Replay:
    """Feeds lines into a `DetectionEngine` and routes what comes out.

    `on_flag`, `on_alert` and `on_dead_letter` receive JSON-ready dicts; `on_signal` (optional)
    receives each `Signal` as it is recognised.
    """

    def __init__(
        self,
        config: DetectionConfig | None = None,
        *,
        on_flag: Sink,
        on_alert: Sink | None = None,
        on_dead_letter: Sink | None = None,
        on_signal: Callable[[Signal], None] | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.engine = DetectionEngine(config)
        self.on_flag = on_flag
        self.on_alert = on_alert
        self.on_dead_letter = on_dead_letter
        self.on_signal = on_signal
        self.max_event_bytes = max_event_bytes
        self.summary = ReplaySummary()

    def feed(self, lines: Iterable[bytes]) -> None:
        summary = self.summary
        engine = self.engine
        push = engine.push
        max_bytes = self.max_event_bytes
        line_no = summary.lines + summary.blank
        for raw in lines:
            line_no += 1
            if not raw.strip():
                summary.blank += 1  # blank lines separate nothing and are not events
                continue
            summary.lines += 1
            try:
                event = parse_event(raw, max_bytes)
            except InvalidEvent as error:
                summary.invalid[error.reason] += 1
                if self.on_dead_letter is not None:
                    self.on_dead_letter(
                        dead_letter_record(raw.rstrip(b"\r\n"), error, f"line {line_no}")
                    )
                continue
            summary.valid += 1
            push(event)
            if engine.outbox:
                self._route(engine.drain())

    def finish(self) -> ReplaySummary:
        """End of input: flush the engine and complete the summary."""
        self.engine.flush()
        self._route(self.engine.drain())
        stats = self.engine.stats
        s = self.summary
        s.duplicates = stats.duplicates
        s.late = stats.late
        s.signals = Counter(stats.signals)
        s.flags = Counter(stats.flags)
        s.escalations = Counter(stats.escalations)
        s.alerts = stats.alerts
        s.users = len(self.engine.users)
        return s

    def _route(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Flag):
                self.on_flag(_to_json(out))
            elif isinstance(out, Signal):
                if self.on_signal is not None:
                    self.on_signal(out)
            elif isinstance(out, SecurityAlert):
                if self.on_alert is not None:
                    self.on_alert(_to_json(out))
            elif isinstance(out, LateEvent) and self.on_dead_letter is not None:
                self.on_dead_letter(late_record(out))


def late_record(late: LateEvent) -> dict[str, Any]:
    """The dead-letter record of an event that came later than the allowed lateness."""
    return {
        "reason": "late",
        "detail": f"ts {late.event.ts} is before the watermark {late.watermark_ms} "
        "(allowed lateness exceeded)",
        "source": "engine",
        "event": orjson.loads(event_to_json(late.event)),
    }


def replay_lines(
    lines: Iterable[bytes], config: DetectionConfig | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], ReplaySummary]:
    """Flags and alerts of a finite input, in memory (for tests, evaluation and comparisons)."""
    flags: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    run = Replay(config, on_flag=flags.append, on_alert=alerts.append)
    run.feed(lines)
    return flags, alerts, run.finish()
