"""`frustration replay`: run the detector core over NDJSON events, in event time.

Flags go to one sink, security alerts to another, incidents to a third, bad and late lines to the
dead-letter sink with their reason; nothing is dropped without being counted. The engine's flags
pass through the `IncidentTracker` on their way out: a flag its cause's incident explains comes
out with `incident_id` set, and when an incident opens the earlier flags it explains come out once
more with it (same `flag_id` and `update`). The same input always gives the same output, whatever
the input's order within the allowed lateness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from detectors.config import DetectionConfig
from detectors.engine import DetectionEngine, LateEvent, Output
from detectors.incidents import IncidentTracker, TrackerOutput, flag_watermark
from signals.exceptions import InvalidEvent
from signals.flags import Flag, SecurityAlert, Signal
from signals.incidents import Incident
from signals.wire import DEFAULT_MAX_EVENT_BYTES, dead_letter_record, event_to_json, parse_event

Sink = Callable[[dict[str, Any]], None]

#: Events between two watermark moves of the incident tracker when the engine emits nothing
#: (timeliness of the output only: the tracker's output does not depend on it).
TRACKER_EVERY = 4096


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
    incidents: Counter[str] = field(default_factory=Counter)  # opened, by kind
    incidents_closed: int = 0
    grouped_flags: int = 0  # flags whose last emission is attached to an incident
    individual_flags: int = 0  # flags whose last emission is for individual outreach

    @property
    def queue_items(self) -> int:
        """Support-queue items: individual flags plus one per incident."""
        return self.individual_flags + sum(self.incidents.values())

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
            f"incidents opened by kind: {fmt(self.incidents)} ({self.incidents_closed} closed)",
            f"queue items: {self.queue_items} ({self.individual_flags} individual flags + "
            f"{_count(sum(self.incidents.values()), 'incident')} grouping {self.grouped_flags} "
            f"flags; {self.individual_flags + self.grouped_flags} items without grouping)",
        ]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _to_json(model: Flag | SecurityAlert | Incident) -> dict[str, Any]:
    return model.model_dump(mode="json")


class Replay:
    """Feeds lines into a `DetectionEngine`, its flags through an `IncidentTracker`, and routes
    what comes out.

    `on_flag`, `on_alert`, `on_incident` and `on_dead_letter` receive JSON-ready dicts;
    `on_signal` (optional) receives each `Signal` as it is recognised.
    """

    def __init__(
        self,
        config: DetectionConfig | None = None,
        *,
        on_flag: Sink,
        on_alert: Sink | None = None,
        on_dead_letter: Sink | None = None,
        on_signal: Callable[[Signal], None] | None = None,
        on_incident: Sink | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.engine = DetectionEngine(config)
        self.tracker = IncidentTracker(self.engine.config)
        self.on_flag = on_flag
        self.on_alert = on_alert
        self.on_incident = on_incident
        self._grouped: dict[str, bool] = {}  # flag_id -> its last emission has an incident_id
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
            if engine.outbox or summary.valid % TRACKER_EVERY == 0:
                self._route(engine.drain())
                self._advance_tracker()

    def finish(self) -> ReplaySummary:
        """End of input: flush the engine and the tracker, and complete the summary."""
        engine = self.engine
        engine.flush()
        self._route(engine.drain())
        watermark = engine.watermark_ms
        if watermark is not None:
            # As the service does when input goes quiet: event time just past the newest event.
            self.tracker.advance_watermark(watermark + engine.config.allowed_lateness_ms + 1)
        self.tracker.flush()
        self._route_tracked(self.tracker.drain())
        stats = self.engine.stats
        s = self.summary
        s.duplicates = stats.duplicates
        s.late = stats.late
        s.signals = Counter(stats.signals)
        s.flags = Counter(stats.flags)
        s.escalations = Counter(stats.escalations)
        s.alerts = stats.alerts
        s.users = len(self.engine.users)
        s.incidents = Counter(self.tracker.stats.opened)
        s.incidents_closed = sum(self.tracker.stats.closed.values())
        s.grouped_flags = sum(self._grouped.values())
        s.individual_flags = len(self._grouped) - s.grouped_flags
        return s

    def _advance_tracker(self) -> None:
        watermark = flag_watermark(self.engine)
        if watermark is not None:
            self.tracker.advance_watermark(watermark)
        if self.tracker.outbox:
            self._route_tracked(self.tracker.drain())

    def _route_tracked(self, outputs: list[TrackerOutput]) -> None:
        for out in outputs:
            if isinstance(out, Flag):
                self._grouped[out.flag_id] = out.incident_id is not None
                self.on_flag(_to_json(out))
            elif self.on_incident is not None:
                self.on_incident(_to_json(out))

    def _route(self, outputs: list[Output]) -> None:
        self.tracker.observe_active(len(self.engine.users))
        push_flag = self.tracker.push
        for out in outputs:
            if isinstance(out, Flag):
                push_flag(out)  # out through the tracker, grouped or not
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


@dataclass(slots=True)
class ReplayResult:
    """Everything a finite replay produced, in output order (JSON-ready dicts)."""

    flags: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    summary: ReplaySummary


def replay_all(lines: Iterable[bytes], config: DetectionConfig | None = None) -> ReplayResult:
    """Flags, alerts and incidents of a finite input, in memory."""
    result = ReplayResult([], [], [], ReplaySummary())
    run = Replay(
        config,
        on_flag=result.flags.append,
        on_alert=result.alerts.append,
        on_incident=result.incidents.append,
    )
    run.feed(lines)
    result.summary = run.finish()
    return result


def replay_lines(
    lines: Iterable[bytes], config: DetectionConfig | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], ReplaySummary]:
    """Flags and alerts of a finite input, in memory (for tests, evaluation and comparisons)."""
    result = replay_all(lines, config)
    return result.flags, result.alerts, result.summary
