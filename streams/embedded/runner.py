"""The embedded runner: one process, no broker. Events go through the detector core in-process,
exactly as `replay` runs them (engine, then the incident tracker); flags, incidents and alerts go
to the support queue (SQLite).

Detector state (the engine's and the incident tracker's) is checkpointed to a file (periodically
and on shutdown) and restored at start, so a restart resumes open bursts, counters, buffered
events and open incidents; the queue is idempotent by flag_id and incident_id, so nothing is
flagged twice. A checkpoint written before incidents existed (the engine's state alone) is still
read; the tracker then starts empty.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.engine import DetectionEngine, LateEvent, Output
from detectors.incidents import IncidentTracker, flag_watermark
from signals.exceptions import ConfigurationError
from signals.flags import Flag, RageClickEvidence, SecurityAlert, Signal
from signals.incidents import Incident
from signals.wire import AnyEvent
from streams.event_time import idle_advance_target
from streams.metrics import FrustrationMetrics
from streams.queue.store import QueueStore
from streams.replay import late_record
from streams.settings import Settings

log = logging.getLogger(__name__)

#: The checkpoint file: (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, engine state, tracker state).
#: A file that does not start so is the engine's state alone (version 1, before incidents).
CHECKPOINT_FORMAT = "frustration-embedded"
CHECKPOINT_VERSION = 2


@dataclass(slots=True)
class RecentActivity:
    """What the /ops page shows: recent rates and where rage clicks happen (wall-clock based)."""

    events: deque[tuple[float, int]]  # (wall time, events in batch)
    signals: deque[tuple[float, str]]  # (wall time, kind)
    rage_controls: Counter[tuple[str, str]]  # (page, control) of rage-click signals


class EmbeddedRunner:
    """Runs the detector core for the service; call `ingest` with parsed events."""

    def __init__(
        self,
        settings: Settings,
        store: QueueStore,
        metrics: FrustrationMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or FrustrationMetrics(runner="embedded")
        # False in the Kafka queue sink: the workers count flags and alerts (and time them) where
        # they are made; counted again here, every rate in the alert rules would double.
        self.counts_flags = True
        self.engine = DetectionEngine(settings.detection)
        self.tracker = IncidentTracker(settings.detection)
        self.activity = RecentActivity(deque(), deque(), Counter())
        # A (re)start is not idleness: clients get idle_advance_s to resume before event time moves.
        self.last_event_wall = time.time()
        self.last_checkpoint = time.time()
        # Newest event time seen; idle advances aim past it, never past their own earlier target.
        self.newest_event_ts: int | None = None
        # The queue sink's incident stage (track_incidents): newest flag time, when it came.
        self.newest_flag_ts: int | None = None
        self.last_flag_wall = time.time()
        # (newest event ts of a batch, wall time it arrived): to time flags from their trigger.
        self._receipts: deque[tuple[int, float]] = deque()
        self._duplicates_counted = 0
        self._restore()

    # -- input ------------------------------------------------------------------------------------
    def ingest(self, events: Sequence[AnyEvent], received_at: float | None = None) -> None:
        """Push a batch through the engine and write what comes out."""
        if not events:
            return
        started = time.perf_counter()
        now = time.time() if received_at is None else received_at
        by_type = Counter(e.type for e in events)
        for event_type, n in by_type.items():
            self.metrics.events_received.labels(type=event_type).inc(n)
        lag = self.metrics.event_lag_seconds
        newest = 0
        for event in events:
            lag.observe(max(0.0, now - event.ts / 1000))
            newest = max(newest, event.ts)
        self._receipts.append((newest, now))
        if self.newest_event_ts is None or newest > self.newest_event_ts:
            self.newest_event_ts = newest
        push = self.engine.push
        for event in events:
            push(event)
        self._route_engine(self.engine.drain())
        self._count_duplicates()
        self.last_event_wall = now
        self.activity.events.append((now, len(events)))
        self.metrics.observe_batch(time.perf_counter() - started)

    def record_invalid(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.metrics.event_invalid(record["reason"])
        self.store.add_dead_letters(records)

    def tick(self, now: float | None = None) -> None:
        """Housekeeping, called about once a second: let event time move on when input went quiet,
        checkpoint, refresh the gauges."""
        now = time.time() if now is None else now
        engine = self.engine
        newest = self.newest_event_ts
        idle = now - self.last_event_wall >= self.settings.idle_advance_s
        if idle and newest is not None:
            lateness = self.settings.detection.allowed_lateness_ms
            engine.advance_watermark(idle_advance_target(newest, now, lateness))
            self._route_engine(engine.drain())
        if now - self.last_checkpoint >= self.settings.checkpoint_interval_s:
            self.checkpoint()
        self.refresh_gauges(now)

    def refresh_gauges(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.metrics.tracked_users.set(len(self.engine.users))
        counts = self.store.counts(now)
        self.metrics.set_queue(counts.by_status, counts.oldest_open_age_s)
        self.metrics.set_incidents_open(counts.open_incidents)
        horizon = now - 3600
        for buffer in (self.activity.events, self.activity.signals):
            while buffer and buffer[0][0] < horizon:
                buffer.popleft()
        while self._receipts and len(self._receipts) > 10_000:
            self._receipts.popleft()

    # -- output -----------------------------------------------------------------------------------
    def _route_engine(self, outputs: list[Output]) -> None:
        """The engine's outputs: flags through the incident tracker, the rest straight on."""
        tracker = self.tracker
        others: list[Output] = []
        for out in outputs:
            if isinstance(out, Flag):
                tracker.push(out)
            else:
                others.append(out)
        self._route(others)
        watermark = flag_watermark(self.engine)
        if watermark is not None:
            tracker.advance_watermark(watermark)
        if tracker.outbox:
            self._route(tracker.drain())

    def _route(self, outputs: Sequence[Output | Incident]) -> None:
        if not outputs:
            return
        now = time.time()
        late = []
        for out in outputs:
            if isinstance(out, Flag):
                change = self.store.write_flag(out)
                if change is None:
                    continue
                if (change.new or change.escalated) and self.counts_flags:
                    if out.update == 0:
                        self.metrics.flag_opened(out.severity)
                    else:
                        self.metrics.flag_escalated(out.severity)
                    self.metrics.flag_latency_seconds.observe(max(0.0, now - self._receipt(out)))
                if change.grouped_into is not None:
                    self.metrics.incident_flag_grouped(out.signals[-1].kind)
            elif isinstance(out, Incident):
                self._incident(out)
            elif isinstance(out, Signal):
                self.metrics.signal(out.kind)
                self.activity.signals.append((now, out.kind))
                e = out.evidence
                if isinstance(e, RageClickEvidence):
                    control = e.label or e.target or "?"
                    self.activity.rage_controls[(e.page or "?", control)] += 1
            elif isinstance(out, SecurityAlert):
                if self.store.add_alert(out) and self.counts_flags:
                    self.metrics.security_alert(out.kind)
                    log.warning("credential stuffing alert %s", out.alert_id)
            elif isinstance(out, LateEvent):
                self.metrics.events_late.inc()
                late.append(late_record(out))
        if late:
            self.store.add_dead_letters(late)

    def _incident(self, incident: Incident) -> None:
        change = self.store.write_incident(incident)
        if change is None:
            return
        if change.new:
            self.metrics.incident_opened(incident.kind)
            log.info(
                "incident %s opened: %s, %d clients within %d s",
                incident.incident_id,
                incident.kind,
                incident.affected_users + incident.individual_users,
                incident.window_ms // 1000,
            )
        if change.closed:
            log.info(
                "incident %s closed: %d clients grouped, %d kept for individual outreach",
                incident.incident_id,
                incident.affected_users,
                incident.individual_users,
            )

    def route_outputs(self, outputs: Sequence[Output | Incident]) -> None:
        """Flags, alerts and incidents produced elsewhere (the Kafka queue sink): into the queue
        and the metrics, exactly as this runner's own."""
        self._route(outputs)

    def track_incidents(self, flags: Sequence[Flag], now: float | None = None) -> list[Incident]:
        """The Kafka queue sink's incident stage: flags from the workers through this runner's
        incident tracker into the queue. Returns the incident records it produced (to publish).

        The workers' engines run on several partitions, so flags come in only roughly in
        event-time order: the tracker's own reorder buffer (`incident_lateness_ms`) sorts them.
        When no flag has come for `idle_advance_s`, its event time moves on as the engine's does
        (`idle_advance_target`), so incidents still update and close in a quiet period."""
        now = time.time() if now is None else now
        tracker = self.tracker
        for flag in flags:
            tracker.push(flag)
            if self.newest_flag_ts is None or flag.ts > self.newest_flag_ts:
                self.newest_flag_ts = flag.ts
        if flags:
            self.last_flag_wall = now
        elif self.newest_flag_ts is not None and (
            now - self.last_flag_wall >= self.settings.idle_advance_s
        ):
            lateness = self.settings.detection.incident_lateness_ms
            tracker.advance_watermark(idle_advance_target(self.newest_flag_ts, now, lateness))
        outputs = tracker.drain()
        self._route(outputs)
        return [o for o in outputs if isinstance(o, Incident)]

    def _count_duplicates(self) -> None:
        duplicates = self.engine.stats.duplicates
        if duplicates > self._duplicates_counted:
            self.metrics.events_duplicate.inc(duplicates - self._duplicates_counted)
            self._duplicates_counted = duplicates

    def _receipt(self, flag: Flag) -> float:
        """Wall time the flag's triggering event arrived (the first batch reaching its time)."""
        for newest, at in self._receipts:
            if newest >= flag.ts:
                return at
        return time.time()

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write the detector state atomically (temp file, fsync, rename)."""
        path = Path(self.settings.checkpoint_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        state = (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, self.engine.snapshot())
        blob = pickle.dumps((*state, self.tracker.snapshot()), protocol=pickle.HIGHEST_PROTOCOL)
        with open(tmp, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        self.last_checkpoint = time.time()
        log.info(
            "checkpointed detector state: %d users, %d bytes", len(self.engine.users), len(blob)
        )

    def _restore(self) -> None:
        path = Path(self.settings.checkpoint_path)
        if not path.exists():
            return
        try:
            self._restore_blob(path.read_bytes())
        except ConfigurationError:
            raise
        except Exception as exc:  # a torn or foreign file: say so, never guess
            raise ConfigurationError(f"cannot read checkpoint {path}: {exc}") from exc
        watermark = self.engine.watermark_ms
        if watermark is not None:
            self.newest_event_ts = watermark + self.settings.detection.allowed_lateness_ms
        log.info("resumed detector state of %d users from %s", len(self.engine.users), path)

    def _restore_blob(self, blob: bytes) -> None:
        data = pickle.loads(blob)
        if not (isinstance(data, tuple) and data and data[0] == CHECKPOINT_FORMAT):
            self.engine.restore(blob)  # written before incidents: the engine's state alone
            return
        if data[1] != CHECKPOINT_VERSION:
            raise ConfigurationError(
                f"checkpoint has version {data[1]}, this build reads {CHECKPOINT_VERSION}"
            )
        self.engine.restore(data[2])
        self.tracker.restore(data[3])
