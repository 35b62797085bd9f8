"""What both runners hand to the support queue: the detector core's outputs into the store and the
metrics.

Flags pass through the incident tracker (one outage is one queue item, not hundreds), then go to
the store with incidents, security alerts and late events (dead letters); signals feed the /ops
page's recent activity. The embedded runner gives it its engine's outputs as they come; the Kafka
queue sink gives it the flags and alerts the workers published (`track_incidents`,
`route_outputs`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from detectors.engine import DetectionEngine, LateEvent, Output
from detectors.incidents import IncidentTracker, cause_signal
from signals.flags import Flag, RageClickEvidence, SecurityAlert, Signal
from signals.incidents import Incident
from signals.wire import AnyEvent
from streams.event_time import idle_advance_target
from streams.metrics import FrustrationMetrics
from streams.queue.store import QueueStore
from streams.queue.webhooks import Outbox, WebhookDelivery
from streams.replay import late_record
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Clients whose newest event's arrival is remembered (to time their flags).
RECEIPTS_KEPT = 100_000
RECEIPTS_PER_CLIENT = 8


#: Most entries each /ops buffer holds: memory stays bounded whatever the traffic (at the cap the
#: oldest entries go first, so /ops shows the most recent part of the hour).
ACTIVITY_CAP = 50_000
#: Rage-click signals counted for "where people rage-click" (the last hour, at most this many).
RAGE_CONTROLS_CAP = 10_000
ACTIVITY_HORIZON_S = 3600.0
#: The control of an untargeted burst (clicks on one spot of no control, a signal of strength 0
#: by default): counted apart on /ops, not ranked with real controls.
UNTARGETED = ""


@dataclass(slots=True)
class RecentActivity:
    """What the /ops page shows: recent rates and where rage clicks happen (wall-clock based).

    Every buffer is bounded twice: by time (the last hour, pruned as new entries arrive) and by
    count (`ACTIVITY_CAP`, `RAGE_CONTROLS_CAP`), so a long run or a burst cannot grow it."""

    events: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=ACTIVITY_CAP)
    )  # (wall time, events in batch)
    signals: deque[tuple[float, str]] = field(
        default_factory=lambda: deque(maxlen=ACTIVITY_CAP)
    )  # (wall time, kind)
    rage: deque[tuple[float, str, str]] = field(
        default_factory=lambda: deque(maxlen=RAGE_CONTROLS_CAP)
    )  # (wall time, page, control) of rage-click signals

    def add_rage(self, at: float, page: str, control: str) -> None:
        self.rage.append((at, page, control))
        self.prune(at)

    def prune(self, now: float) -> None:
        horizon = now - ACTIVITY_HORIZON_S
        for buffer in (self.events, self.signals, self.rage):
            while buffer and buffer[0][0] < horizon:
                buffer.popleft()

    def top_controls(self, now: float, n: int) -> list[tuple[tuple[str, str], int]]:
        """The `n` (page, control) pairs with most rage-click signals in the last hour
        (untargeted bursts left out: `untargeted`)."""
        horizon = now - ACTIVITY_HORIZON_S
        counts = Counter(
            (page, control)
            for t, page, control in self.rage
            if t >= horizon and control != UNTARGETED
        )
        return counts.most_common(n)

    def untargeted(self, now: float) -> int:
        """Untargeted bursts in the last hour."""
        horizon = now - ACTIVITY_HORIZON_S
        return sum(1 for t, _, control in self.rage if t >= horizon and control == UNTARGETED)


class QueueFeed:
    """The support queue's intake, shared by the embedded runner and the Kafka queue sink."""

    def __init__(
        self,
        settings: Settings,
        store: QueueStore,
        metrics: FrustrationMetrics,
        *,
        engine: DetectionEngine | None = None,
        counts_flags: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        # The engine whose figures /ops and /readyz show; None in the Kafka queue sink, where
        # the engines run in the workers.
        self.engine = engine
        # False in the Kafka queue sink: the workers count flags and alerts (and time them) where
        # they are made; counted again here, every rate in the alert rules would double.
        self.counts_flags = counts_flags
        self.tracker = IncidentTracker(settings.detection)
        # Webhooks out: the outbox is written with every queue change (both runners write here).
        self.outbox = Outbox(store, settings)
        self.webhooks = (
            WebhookDelivery(settings, self.outbox, metrics) if settings.webhooks else None
        )
        self.activity = RecentActivity()
        # Per client, its last batches: (newest event ts, wall time it arrived), to time flags.
        self._receipts: OrderedDict[str, deque[tuple[int, float]]] = OrderedDict()
        # The queue sink's incident stage (track_incidents): newest flag time, when it came.
        self.newest_flag_ts: int | None = None
        self.last_flag_wall = time.time()
        # Outputs the store failed to take (its database locked past the busy timeout, a full
        # disk), first in line at the next `route_outputs`: the engine and the tracker made
        # them once and will not again.
        self.unstored: list[Output | Incident] = []

    # -- input ------------------------------------------------------------------------------------
    def note_batch(self, events: Sequence[AnyEvent], at: float) -> None:
        """A batch of `events` reached the engine at wall time `at` (for flag latency and /ops)."""
        receipts = self._receipts
        for event in events:
            mine = receipts.get(event.user_id)
            if mine is None:
                mine = receipts[event.user_id] = deque(maxlen=RECEIPTS_PER_CLIENT)
            else:
                receipts.move_to_end(event.user_id)
            if not mine or mine[-1][0] < event.ts:
                if mine and mine[-1][1] == at:
                    mine[-1] = (event.ts, at)  # same batch: its newest event
                else:
                    mine.append((event.ts, at))
        while len(receipts) > RECEIPTS_KEPT:
            receipts.popitem(last=False)
        self.activity.events.append((at, len(events)))

    def record_invalid(
        self, records: list[dict[str, Any]], counts: Counter[str] | None = None
    ) -> None:
        """Dead-letter `records`; count `counts` by reason (default: one per record). The
        embedded ingest passes the first few records of a body and the counts of all of it."""
        if counts is None:
            counts = Counter(record["reason"] for record in records)
        for reason, n in counts.items():
            self.metrics.event_invalid(reason, n)
        if records:
            self.store.add_dead_letters(records)

    def route_engine(self, outputs: Sequence[Output], flag_watermark_ms: int | None) -> None:
        """An engine's outputs: flags through the incident tracker, the rest straight on; the
        tracker's event time follows the engine's (`flag_watermark_ms`)."""
        tracker = self.tracker
        if self.engine is not None:
            tracker.observe_active(len(self.engine.users))
        others: list[Output] = []
        for out in outputs:
            if isinstance(out, Flag):
                tracker.push(out)
            else:
                others.append(out)
        self.route_outputs(others)
        if flag_watermark_ms is not None:
            tracker.advance_watermark(flag_watermark_ms)
        if tracker.outbox:
            self.route_outputs(tracker.drain())

    def track_incidents(self, flags: Sequence[Flag], now: float | None = None) -> list[Incident]:
        """The Kafka queue sink's incident stage: flags from the workers through the incident
        tracker into the queue. Returns the incident records it produced (to publish).

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
        stored = self.route_outputs(tracker.drain())
        return [o for o in stored if isinstance(o, Incident)]

    # -- output -----------------------------------------------------------------------------------
    def route_outputs(self, outputs: Sequence[Output | Incident]) -> list[Output | Incident]:
        """Flags, alerts, incidents, signals and late events into the queue and the metrics,
        after any the store failed to take before; returns what was routed. When the store
        fails, what it has not taken waits in `unstored` and the error is raised."""
        pending = [*self.unstored, *outputs]
        self.unstored = []
        done = 0
        late: list[LateEvent] = []
        try:
            for out in pending:
                if isinstance(out, LateEvent):
                    late.append(out)  # their dead letters go in together, below
                else:
                    self._route_one(out)
                done += 1
            if late:
                self.store.add_dead_letters([late_record(e) for e in late])
                self.metrics.events_late.inc(len(late))
        except Exception:
            self.unstored = [*late, *pending[done:]]
            self.metrics.queue_store_failures.inc()
            raise
        return pending

    def _route_one(self, out: Output | Incident) -> None:
        now = time.time()
        if isinstance(out, Flag):
            change = self.store.write_flag(out)
            if change is None:
                return
            if (change.new or change.escalated) and self.counts_flags:
                if out.update == 0:
                    self.metrics.flag_opened(out.severity)
                else:
                    self.metrics.flag_escalated(out.severity)
                self.metrics.flag_latency_seconds.observe(max(0.0, now - self._receipt(out)))
            if change.grouped_into is not None:
                self.metrics.incident_flag_grouped(cause_signal(out).kind)
        elif isinstance(out, Incident):
            self._incident(out)
        elif isinstance(out, Signal):
            self.metrics.signal(out.kind)
            self.activity.signals.append((now, out.kind))
            e = out.evidence
            if isinstance(e, RageClickEvidence):
                control = UNTARGETED if e.target is None else e.label or e.target
                self.activity.add_rage(now, e.page or "(page not sent)", control)
        elif isinstance(out, SecurityAlert) and self.store.add_alert(out) and self.counts_flags:
            self.metrics.security_alert(out.kind)
            log.warning("credential stuffing alert %s", out.alert_id)

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

    def _receipt(self, flag: Flag) -> float:
        """Wall time the event that completed the flag arrived: the client's newest event when it
        is the flag's own time. A flag whose rule waits by definition (a login confirmation, a
        chat's wait: its time is the end of the wait, after the client's last event) is timed
        from the end of its wait, in the client's clock mapped to the wall clock."""
        mine = self._receipts.get(flag.user_id)
        if not mine:
            return time.time()
        for newest, at in mine:
            if newest >= flag.ts:
                return at  # the first batch of this client to reach the flag's time
        newest, at = mine[-1]
        return at + (flag.ts - newest) / 1000

    # -- gauges -----------------------------------------------------------------------------------
    def refresh_gauges(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.engine is not None:
            self.metrics.tracked_users.set(len(self.engine.users))
        counts = self.store.counts(now)
        self.metrics.set_queue(counts.by_status, counts.oldest_open_age_s)
        self.metrics.set_incidents_open(counts.open_incidents)
        self.metrics.set_webhook_outbox(*self.outbox.depth(now))
        self.activity.prune(now)
        shares = self.store.false_flag_shares(now)
        for kind, windows in shares.items():
            for days, (n_false, n) in windows.items():
                self.metrics.set_false_flag_share(kind, f"{days}d", n_false / n if n else 0.0)
        interval = self.settings.incident_update_interval_s
        self.metrics.set_incident_updates_overdue(
            self.store.overdue_incident_updates(now, interval)
        )
