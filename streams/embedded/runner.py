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
from pathlib import Path

from detectors.engine import DetectionEngine, Output
from detectors.incidents import flag_watermark
from signals.exceptions import ConfigurationError
from signals.wire import AnyEvent
from streams.checkpoint import write_atomically
from streams.event_time import idle_advance_target
from streams.metrics import FrustrationMetrics
from streams.queue.feed import QueueFeed
from streams.queue.store import QueueStore
from streams.settings import Settings

log = logging.getLogger(__name__)

#: The checkpoint file: (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, engine state, tracker state).
#: A file that does not start so is the engine's state alone (version 1, before incidents).
CHECKPOINT_FORMAT = "frustration-embedded"
CHECKPOINT_VERSION = 2


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
        # A (re)start is not idleness: clients get idle_advance_s to resume before event time moves.
        self.last_event_wall = time.time()
        self.last_checkpoint = time.time()
        # Newest event time seen; idle advances aim past it, never past their own earlier target.
        self.newest_event_ts: int | None = None
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
        self.feed.note_batch(newest, len(events), now)
        if self.newest_event_ts is None or newest > self.newest_event_ts:
            self.newest_event_ts = newest
        push = self.engine.push
        for event in events:
            push(event)
        self._route_engine(self.engine.drain())
        self._count_duplicates()
        self.last_event_wall = now
        self.metrics.observe_batch(time.perf_counter() - started)

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
        self.feed.refresh_gauges(now)

    def _route_engine(self, outputs: list[Output]) -> None:
        self.feed.route_engine(outputs, flag_watermark(self.engine))

    def _count_duplicates(self) -> None:
        duplicates = self.engine.stats.duplicates
        if duplicates > self._duplicates_counted:
            self.metrics.events_duplicate.inc(duplicates - self._duplicates_counted)
            self._duplicates_counted = duplicates

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write the detector state atomically (temp file, fsync, rename)."""
        state = (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, self.engine.snapshot())
        blob = pickle.dumps((*state, self.tracker.snapshot()), protocol=pickle.HIGHEST_PROTOCOL)
        write_atomically(Path(self.settings.checkpoint_path), blob)
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
