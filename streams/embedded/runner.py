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
import pickle
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detectors.engine import DetectionEngine, Output
from detectors.incidents import flag_watermark
from signals.exceptions import ConfigurationError
from signals.flags import Flag
from signals.wire import AnyEvent, event_to_json, parse_event
from streams.checkpoint import write_atomically
from streams.embedded.journal import Journal
from streams.metrics import FrustrationMetrics
from streams.queue.feed import QueueFeed
from streams.queue.store import QueueStore
from streams.settings import Settings

log = logging.getLogger(__name__)

#: The checkpoint file: (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, engine state, tracker state,
#: journal position).
#: A file that does not start so is the engine's state alone (version 1, before incidents).
CHECKPOINT_FORMAT = "frustration-embedded"
CHECKPOINT_VERSION = 3  # 3: + the journal position it covers


@dataclass(frozen=True, slots=True)
class IngestCounts:
    """What became of an accepted batch's events besides being processed."""

    late: int = 0  # older than their client's watermark: dead-lettered, not scored
    duplicates: int = 0  # an event_id this client had sent already


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
        self.engine = DetectionEngine(settings.detection)
        self.feed = QueueFeed(settings, store, self.metrics, engine=self.engine)
        self.tracker = self.feed.tracker
        self.last_event_wall = time.time()
        self.last_checkpoint = time.time()
        self.journal = (
            Journal(settings.journal_file, settings.journal_sync) if settings.journal else None
        )
        self.journal_seq = 0  # the last journaled batch the engine has seen
        self.last_advance_ms: int | None = None
        self.events_since_checkpoint = 0
        self._restore()

    # -- input ------------------------------------------------------------------------------------
    def ingest(
        self,
        events: Sequence[AnyEvent],
        received_at: float | None = None,
        raw: Sequence[bytes] | None = None,
    ) -> IngestCounts:
        """Journal a batch (durably, before the caller answers), push it through the engine and
        write what comes out. `raw`: the events' JSON as received (what the journal keeps)."""
        if not events:
            return IngestCounts()
        now = time.time() if received_at is None else received_at
        arrived_ms = int(now * 1000)
        if self.journal is not None:
            lines = raw if raw is not None else [event_to_json(e) for e in events]
            self.journal_seq = self.journal.append(
                arrived_ms, self.last_advance_ms, b"\n".join(lines)
            )
        counts = self._run_batch(events, arrived_ms)
        self.events_since_checkpoint += len(events)
        if self.events_since_checkpoint >= self.settings.checkpoint_every_events:
            self.checkpoint()
        return counts

    def _run_batch(self, events: Sequence[AnyEvent], arrived_ms: int) -> IngestCounts:
        started = time.perf_counter()
        now = arrived_ms / 1000
        by_type = Counter(e.type for e in events)
        for event_type, n in by_type.items():
            self.metrics.events_received.labels(type=event_type).inc(n)
        lag = self.metrics.event_lag_seconds
        for event in events:
            lag.observe(max(0.0, now - event.ts / 1000))
        self.feed.note_batch(events, now)
        stats = self.engine.stats
        late_before, duplicates_before = stats.late, stats.duplicates
        revised_before = stats.alerts_revised_too_late
        push = self.engine.push
        for event in events:
            push(event, arrived_ms=arrived_ms)
        self._route_engine(self.engine.drain())
        self.metrics.events_duplicate.inc(stats.duplicates - duplicates_before)
        self.metrics.security_alert_revisions_late.inc(
            stats.alerts_revised_too_late - revised_before
        )
        self.last_event_wall = now
        self.metrics.observe_batch(time.perf_counter() - started)
        return IngestCounts(stats.late - late_before, stats.duplicates - duplicates_before)

    def advance(self, now: float | None = None) -> None:
        """Move every quiet client's event time on with the wall clock (about every 100 ms:
        `release_interval_s`), so buffered events are released a lateness after they arrived and
        login deadlines fire when due, each in its client's own time."""
        now = time.time() if now is None else now
        self.last_advance_ms = int(now * 1000)
        self._advance_to(self.last_advance_ms)

    def _advance_to(self, now_ms: int) -> None:
        """One housekeeping advance at wall time `now_ms`: a function of the engine's state and
        `now_ms` only, so the journal's replay at start repeats it exactly."""
        engine = self.engine
        idle_ms = int(self.settings.idle_advance_s * 1000)
        engine.advance_wall(now_ms, idle_ms)
        outputs = engine.drain()
        self._route_engine(outputs)
        last = engine.last_arrival_ms
        if last is not None and now_ms - last >= idle_ms:
            # All input idle: what back-fill clients sent is released and their deadlines fired
            # (advance_wall); their flags go on through the tracker too, as at a replay's end.
            # Their time is in the past, behind every live client's, so this never moves the
            # tracker past live time.
            newest = engine.backfill_newest_ms()
            for out in outputs:
                if isinstance(out, Flag) and engine.is_backfill(out.user_id):
                    newest = out.ts if newest is None else max(newest, out.ts)
            if newest is not None:
                self.tracker.advance_watermark(newest + 1)
                if self.tracker.outbox:
                    self.feed.route_outputs(self.tracker.drain())

    def tick(self, now: float | None = None) -> None:
        """Housekeeping, called about once a second: move event time on, checkpoint, refresh the
        gauges."""
        now = time.time() if now is None else now
        self.advance(now)
        if now - self.last_checkpoint >= self.settings.checkpoint_interval_s and (
            self.events_since_checkpoint or self.journal is None
        ):
            self.checkpoint()
        self.feed.refresh_gauges(now)

    def _route_engine(self, outputs: list[Output]) -> None:
        self.feed.route_engine(outputs, flag_watermark(self.engine))

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write the detector state atomically (temp file, fsync, rename) with the journal position
        it covers, then truncate the journal behind it."""
        state = (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, self.engine.snapshot())
        blob = pickle.dumps(
            (*state, self.tracker.snapshot(), self.journal_seq), protocol=pickle.HIGHEST_PROTOCOL
        )
        write_atomically(Path(self.settings.checkpoint_path), blob)
        if self.journal is not None:
            self.journal.truncate(self.journal_seq)
        self.last_checkpoint = time.time()
        self.events_since_checkpoint = 0
        log.info(
            "checkpointed detector state: %d users, %d bytes", len(self.engine.users), len(blob)
        )

    def close(self) -> None:
        """Checkpoint (so the next start replays nothing) and close the journal."""
        self.checkpoint()
        if self.journal is not None:
            self.journal.close()

    def _restore(self) -> None:
        path = Path(self.settings.checkpoint_path)
        if path.exists():
            try:
                self._restore_blob(path.read_bytes())
            except ConfigurationError:
                raise
            except Exception as exc:  # a torn or foreign file: say so, never guess
                raise ConfigurationError(f"cannot read checkpoint {path}: {exc}") from exc
            log.info("resumed detector state of %d users from %s", len(self.engine.users), path)
        if self.journal is None:
            return
        replayed = 0
        for batch in self.journal.after(self.journal_seq):
            # Exactly as the service ran it: the idle advance before the batch, then the batch.
            if batch.advanced_ms is not None:
                self._advance_to(batch.advanced_ms)
            events = [parse_event(line) for line in batch.events.split(b"\n") if line]
            self._run_batch(events, batch.arrived_ms)
            self.journal_seq = batch.seq
            self.last_advance_ms = batch.advanced_ms
            replayed += len(events)
        self.events_since_checkpoint = replayed
        # The time the service was down is not the clients' quiet time: they resume from now.
        self.engine.rebase_arrivals(int(time.time() * 1000))
        if replayed:
            log.info("replayed %d journaled events after the checkpoint", replayed)

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
        self.journal_seq = data[4]
