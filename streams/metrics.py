"""Prometheus metrics of frustration-signals.

Every metric lives on the :class:`FrustrationMetrics` instance's own registry (a fresh
``CollectorRegistry`` unless one is passed in), so tests can use a private registry and two
instances never clash. Every labelled metric has a child pre-initialised at 0 for each value of
its fixed label set, so series exist before the first event and alerts such as
``rate(...) == 0`` or ``increase(...) > 0`` work from the first scrape.

Privacy: no label ever carries a user id, IP address, session, chat id or free-form page/target.
Label values are closed sets (constants below); the helper methods reject anything else, which
also bounds cardinality.

Catalogue (metric names are a public contract: ``deploy/prometheus/alerts.yml`` and
``deploy/grafana/dashboards/frustration-overview.json`` use them; see ``docs/metrics.md``):

==========================================  =========  ==================  =====================
name                                        type       labels              meaning
==========================================  =========  ==================  =====================
frustration_events_received_total           counter    type                valid events accepted
frustration_events_invalid_total            counter    reason              rejected (dead letter)
frustration_events_late_total               counter    -                   beyond allowed lateness
frustration_events_duplicate_total          counter    -                   event_id already seen
frustration_signals_total                   counter    kind                detector signals
frustration_flags_total                     counter    severity            new flags opened
frustration_flag_escalations_total          counter    severity            open flag raised
frustration_security_alerts_total           counter    kind                credential stuffing
frustration_security_alert_revisions_late_total counter -                 sent, then found early
frustration_incidents_total                 counter    kind                incidents opened
frustration_incidents_open                  gauge      kind                incidents now open
frustration_incident_flags_total            counter    kind                flags grouped
frustration_processing_seconds              histogram  stage               batch wall time
frustration_event_lag_seconds               histogram  -                   now - event ts
frustration_flag_latency_seconds            histogram  -                   receipt -> queue write
frustration_tracked_users                   gauge      -                   users with state
frustration_queue_items                     gauge      status              queue items by status
frustration_queue_oldest_open_age_seconds   gauge      -                   oldest open item age
frustration_queue_store_failures_total      counter    -                   queue write failed
frustration_ingest_requests_total           counter    code                HTTP ingest responses
frustration_consumer_lag_messages           gauge      -                   Kafka consumer lag
frustration_partition_input_lag_messages    gauge      partition           unread, per partition
frustration_partition_stalled               gauge      partition           1: no progress, unread
frustration_source_events_total             counter    source, outcome     Segment/PostHog items
frustration_webhook_attempts_total          counter    outcome             delivery attempts
frustration_webhook_dead_letters_total      counter    -                   given up after retries
frustration_webhook_delivery_latency_seconds histogram -                   outbox write -> 2xx
frustration_webhook_outbox_depth            gauge      -                   messages not delivered
frustration_webhook_oldest_pending_age_seconds gauge   -                   oldest undelivered age
frustration_false_flag_share                gauge      kind, window        agents' "not frustration"
frustration_incident_updates_overdue        gauge      kind                client update overdue
frustration_build_info                      gauge      version, runner     always 1
==========================================  =========  ==================  =====================

Histogram bucket boundaries are exposed by prometheus-client as floats (``le="2.0"``, not
``le="2"``); PromQL that selects one bucket must use that spelling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from signals.events import EVENT_TYPES as _EVENT_TYPES
from signals.exceptions import INVALID_REASONS as _INVALID_REASONS
from signals.flags import SECURITY_ALERT_KINDS as _SECURITY_ALERT_KINDS
from signals.flags import SEVERITIES as _SEVERITIES
from signals.flags import SIGNAL_KINDS as _SIGNAL_KINDS
from streams.queue.store import STATUSES as _QUEUE_STATUSES

__all__ = [
    "EVENT_LAG_BUCKETS",
    "EVENT_TYPES",
    "FLAG_LATENCY_BUCKETS",
    "FLAG_LATENCY_SLO_SECONDS",
    "FORBIDDEN_LABELS",
    "INCIDENT_KINDS",
    "INGEST_CODES",
    "INVALID_REASONS",
    "PROCESSING_BUCKETS",
    "PROCESSING_STAGES",
    "QUEUE_STATUSES",
    "RUNNERS",
    "SECURITY_ALERT_KINDS",
    "SEVERITIES",
    "SHARE_WINDOWS",
    "SIGNAL_KINDS",
    "SOURCES",
    "SOURCE_OUTCOMES",
    "WEBHOOK_LATENCY_BUCKETS",
    "WEBHOOK_OUTCOMES",
    "FrustrationMetrics",
    "label_values",
]

# The closed label sets come from the models they describe, so they cannot drift apart.
EVENT_TYPES: tuple[str, ...] = _EVENT_TYPES
INVALID_REASONS: tuple[str, ...] = _INVALID_REASONS
SIGNAL_KINDS: tuple[str, ...] = _SIGNAL_KINDS
SEVERITIES: tuple[str, ...] = _SEVERITIES
SECURITY_ALERT_KINDS: tuple[str, ...] = _SECURITY_ALERT_KINDS
INCIDENT_KINDS: tuple[str, ...] = SIGNAL_KINDS
# batch: the embedded runner (and queue sink); detect: a Kafka worker's detect stage; route: the
# retired faust path's route stage (never observed now; kept so the label set stays the same).
PROCESSING_STAGES: tuple[str, ...] = ("batch", "route", "detect")
QUEUE_STATUSES: tuple[str, ...] = _QUEUE_STATUSES
INGEST_CODES: tuple[str, ...] = ("200", "202", "400", "401", "413", "415", "500")
RUNNERS: tuple[str, ...] = ("embedded", "kafka")
#: Where source events come from (Segment covers RudderStack and Jitsu) and what became of them:
#: mapped (an event of ours), unmapped (no rule), invalid (dead-lettered), corroborating
#: (PostHog $rageclick: counted, never an event).
SOURCES: tuple[str, ...] = ("segment", "posthog")
SOURCE_OUTCOMES: tuple[str, ...] = ("mapped", "unmapped", "invalid", "corroborating")
#: One webhook delivery attempt: answered 2xx, or anything else (status, timeout, refused).
WEBHOOK_OUTCOMES: tuple[str, ...] = ("success", "failure")
#: 10 ms .. 1 day: a delivery retried for hours still lands in a bucket.
WEBHOOK_LATENCY_BUCKETS: tuple[float, ...] = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    30.0,
    300.0,
    1800.0,
    3600.0,
    4 * 3600.0,
    86400.0,
)
#: Windows of the false-flag share (resolved flags of the last 7 and 30 days).
SHARE_WINDOWS: tuple[str, ...] = ("7d", "30d")

#: Label names that must never appear on any metric (privacy).
FORBIDDEN_LABELS: frozenset[str] = frozenset(
    {"user", "user_id", "ip", "session", "session_id", "chat", "chat_id", "page", "target"}
)

#: 50 µs .. 5 s.
PROCESSING_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: 0.1 s .. 1 h.
EVENT_LAG_BUCKETS: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
#: Includes the SLO threshold (2 s) as an exact boundary.
FLAG_LATENCY_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Flag-latency SLO: 99 % of flags in the support queue within this many seconds of receipt.
FLAG_LATENCY_SLO_SECONDS = 1.0  # issue 12: a complete rule's flag is in the queue within 1 s


def label_values() -> dict[str, tuple[str, ...]]:
    """Fixed label sets, keyed by label name (``runner`` is the only one on build info)."""
    return {
        "type": EVENT_TYPES,
        "reason": INVALID_REASONS,
        "kind": SIGNAL_KINDS,
        "severity": SEVERITIES,
        "stage": PROCESSING_STAGES,
        "status": QUEUE_STATUSES,
        "code": INGEST_CODES,
        "runner": RUNNERS,
        "source": SOURCES,
        "outcome": SOURCE_OUTCOMES + WEBHOOK_OUTCOMES,
        "window": SHARE_WINDOWS,
    }


def _package_version() -> str:
    try:
        return metadata.version("frustration-signals")
    except metadata.PackageNotFoundError:
        return "unknown"


def _check(value: str, allowed: tuple[str, ...], label: str) -> str:
    if value not in allowed:
        raise ValueError(f"{label}={value!r} is not one of {allowed}")
    return value


class FrustrationMetrics:
    """All metrics of one service process, registered on ``self.registry``.

    The metric objects are public attributes (``events_received``, ``flags``, ...); the helper
    methods validate label values against the fixed sets before touching them.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        runner: str = "embedded",
        version: str | None = None,
    ) -> None:
        self.registry: CollectorRegistry = registry if registry is not None else CollectorRegistry()
        reg = self.registry

        self.events_received = Counter(
            "frustration_events_received_total",
            "Valid events accepted for detection, by event type.",
            ["type"],
            registry=reg,
        )
        self.events_invalid = Counter(
            "frustration_events_invalid_total",
            "Events rejected as invalid and dead-lettered, by reason.",
            ["reason"],
            registry=reg,
        )
        self.events_late = Counter(
            "frustration_events_late_total",
            "Events later than the allowed lateness (dead-lettered with reason late).",
            registry=reg,
        )
        self.events_duplicate = Counter(
            "frustration_events_duplicate_total",
            "Events whose event_id was already seen (dropped).",
            registry=reg,
        )
        self.signals = Counter(
            "frustration_signals_total",
            "Frustration signals emitted by the detectors, by kind.",
            ["kind"],
            registry=reg,
        )
        self.flags = Counter(
            "frustration_flags_total",
            "New flags opened in the support queue, by severity.",
            ["severity"],
            registry=reg,
        )
        self.flag_escalations = Counter(
            "frustration_flag_escalations_total",
            "Open flags re-emitted with a raised severity, by the new severity.",
            ["severity"],
            registry=reg,
        )
        self.security_alerts = Counter(
            "frustration_security_alerts_total",
            "Security alerts emitted (separate from support flags), by kind.",
            ["kind"],
            registry=reg,
        )
        self.security_alert_revisions_late = Counter(
            "frustration_security_alert_revisions_late_total",
            "Security alerts already sent when an out-of-order failure showed in-order processing "
            "would have raised them earlier (a failure later than source_alert_hold_ms): the "
            "sent alert stands; its id differs from a replay's.",
            registry=reg,
        )
        self.incidents = Counter(
            "frustration_incidents_total",
            "Mass-frustration incidents opened (one cause, many users), by signal kind.",
            ["kind"],
            registry=reg,
        )
        self.incidents_open = Gauge(
            "frustration_incidents_open",
            "Mass-frustration incidents currently open, by signal kind.",
            ["kind"],
            registry=reg,
        )
        self.incident_flags = Counter(
            "frustration_incident_flags_total",
            "Flags grouped under an incident (out of individual outreach), by the incident's kind.",
            ["kind"],
            registry=reg,
        )
        self.processing_seconds = Histogram(
            "frustration_processing_seconds",
            "Wall time to run one batch of events through the detectors.",
            ["stage"],
            buckets=PROCESSING_BUCKETS,
            registry=reg,
        )
        self.event_lag_seconds = Histogram(
            "frustration_event_lag_seconds",
            "Wall clock at processing time minus the event's own ts.",
            buckets=EVENT_LAG_BUCKETS,
            registry=reg,
        )
        self.flag_latency_seconds = Histogram(
            "frustration_flag_latency_seconds",
            "Wall time from receipt of the triggering event to the flag written to the queue.",
            buckets=FLAG_LATENCY_BUCKETS,
            registry=reg,
        )
        self.tracked_users = Gauge(
            "frustration_tracked_users",
            "Users with detector state held in memory.",
            registry=reg,
        )
        self.queue_items = Gauge(
            "frustration_queue_items",
            "Support-queue items (individual flags and incidents) by status.",
            ["status"],
            registry=reg,
        )
        self.queue_oldest_open_age_seconds = Gauge(
            "frustration_queue_oldest_open_age_seconds",
            "Age of the oldest open (unclaimed) support-queue item; 0 when there is none.",
            registry=reg,
        )
        self.queue_store_failures = Counter(
            "frustration_queue_store_failures_total",
            "Failed attempts to write outputs to the support queue (what was not written is "
            "written at the next attempt).",
            registry=reg,
        )
        self.ingest_requests = Counter(
            "frustration_ingest_requests_total",
            "HTTP ingest requests by response status code.",
            ["code"],
            registry=reg,
        )
        self.consumer_lag_messages = Gauge(
            "frustration_consumer_lag_messages",
            "Kafka runner: messages behind on the events topic (0 in the embedded runner).",
            registry=reg,
        )
        # Kafka runner, one child per by-user partition this worker holds (bounded by the topic's
        # partitions; removed when the partition moves away), so none before the first assignment.
        self.partition_input_lag_messages = Gauge(
            "frustration_partition_input_lag_messages",
            "Kafka runner: records of a by-user partition held by this worker that its detect "
            "stage has not taken in yet (broker end offset minus position).",
            ["partition"],
            registry=reg,
        )
        self.partition_stalled = Gauge(
            "frustration_partition_stalled",
            "Kafka runner: 1 while a by-user partition held by this worker has unread records "
            "and has not moved for streams.kafka.partition_watch.STALL_AFTER_S seconds, else 0.",
            ["partition"],
            registry=reg,
        )
        # -- sources in, webhooks out (streams.sources, streams.queue.webhooks) ------------------
        self.source_events = Counter(
            "frustration_source_events_total",
            "Segment / RudderStack / PostHog items by source and what became of them.",
            ["source", "outcome"],
            registry=reg,
        )
        self.webhook_attempts = Counter(
            "frustration_webhook_attempts_total",
            "Webhook delivery attempts by outcome (success: a 2xx answer).",
            ["outcome"],
            registry=reg,
        )
        self.webhook_dead_letters = Counter(
            "frustration_webhook_dead_letters_total",
            "Webhook messages given up after the last retry (listed on /ops; "
            "`frustration webhooks replay` re-sends).",
            registry=reg,
        )
        self.webhook_delivery_latency_seconds = Histogram(
            "frustration_webhook_delivery_latency_seconds",
            "Seconds from the outbox write (the queue change) to the receiver's 2xx answer.",
            buckets=WEBHOOK_LATENCY_BUCKETS,
            registry=reg,
        )
        self.webhook_outbox_depth = Gauge(
            "frustration_webhook_outbox_depth",
            "Webhook messages waiting for delivery (not delivered, not dead-lettered).",
            registry=reg,
        )
        self.webhook_oldest_pending_age_seconds = Gauge(
            "frustration_webhook_oldest_pending_age_seconds",
            "Age of the oldest webhook message waiting for delivery; 0 when there is none.",
            registry=reg,
        )
        self.false_flag_share = Gauge(
            "frustration_false_flag_share",
            "Share of the flags resolved in the window that agents marked as not frustration "
            "(outcome false_positive), by signal kind: a live precision estimate (1 - share).",
            ["kind", "window"],
            registry=reg,
        )
        self.incident_updates_overdue = Gauge(
            "frustration_incident_updates_overdue",
            "Unresolved incidents whose proactive update to their clients is overdue "
            "(incident_update_interval_s), by signal kind.",
            ["kind"],
            registry=reg,
        )
        self.build_info = Gauge(
            "frustration_build_info",
            "Always 1; labels carry the version and the runner (embedded or kafka).",
            ["version", "runner"],
            registry=reg,
        )

        for event_type in EVENT_TYPES:
            self.events_received.labels(type=event_type)
        for reason in INVALID_REASONS:
            self.events_invalid.labels(reason=reason)
        for kind in SIGNAL_KINDS:
            self.signals.labels(kind=kind)
        for severity in SEVERITIES:
            self.flags.labels(severity=severity)
            self.flag_escalations.labels(severity=severity)
        for kind in SECURITY_ALERT_KINDS:
            self.security_alerts.labels(kind=kind)
        for kind in INCIDENT_KINDS:
            self.incidents.labels(kind=kind)
            self.incidents_open.labels(kind=kind).set(0)
            self.incident_flags.labels(kind=kind)
        for stage in PROCESSING_STAGES:
            self.processing_seconds.labels(stage=stage)
        for status in QUEUE_STATUSES:
            self.queue_items.labels(status=status).set(0)
        for code in INGEST_CODES:
            self.ingest_requests.labels(code=code)
        for source in SOURCES:
            for outcome in SOURCE_OUTCOMES:
                self.source_events.labels(source=source, outcome=outcome)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_attempts.labels(outcome=outcome)
        for kind in SIGNAL_KINDS:
            self.incident_updates_overdue.labels(kind=kind).set(0)
            for window in SHARE_WINDOWS:
                self.false_flag_share.labels(kind=kind, window=window).set(0)

        self._version = version if version is not None else _package_version()
        self.set_build_info(runner)

    # -- helpers (validate label values; the raw metric objects stay available) -------------

    def set_build_info(self, runner: str, version: str | None = None) -> None:
        """Expose exactly one ``frustration_build_info`` series for this process."""
        _check(runner, RUNNERS, "runner")
        if version is not None:
            self._version = version
        self.build_info.clear()
        self.build_info.labels(version=self._version, runner=runner).set(1)

    def event_received(self, event_type: str) -> None:
        self.events_received.labels(type=_check(event_type, EVENT_TYPES, "type")).inc()

    def event_invalid(self, reason: str, n: int = 1) -> None:
        self.events_invalid.labels(reason=_check(reason, INVALID_REASONS, "reason")).inc(n)

    def signal(self, kind: str) -> None:
        self.signals.labels(kind=_check(kind, SIGNAL_KINDS, "kind")).inc()

    def flag_opened(self, severity: str) -> None:
        self.flags.labels(severity=_check(severity, SEVERITIES, "severity")).inc()

    def flag_escalated(self, new_severity: str) -> None:
        self.flag_escalations.labels(severity=_check(new_severity, SEVERITIES, "severity")).inc()

    def security_alert(self, kind: str) -> None:
        self.security_alerts.labels(kind=_check(kind, SECURITY_ALERT_KINDS, "kind")).inc()

    def incident_opened(self, kind: str) -> None:
        self.incidents.labels(kind=_check(kind, INCIDENT_KINDS, "kind")).inc()

    def incident_flag_grouped(self, kind: str) -> None:
        """A flag newly grouped under an incident of `kind` (it leaves individual outreach)."""
        self.incident_flags.labels(kind=_check(kind, INCIDENT_KINDS, "kind")).inc()

    def set_incidents_open(self, counts: Mapping[str, int]) -> None:
        """Set the open-incident gauge for every kind (kinds missing from ``counts`` -> 0)."""
        for kind in counts:
            _check(kind, INCIDENT_KINDS, "kind")
        for kind in INCIDENT_KINDS:
            self.incidents_open.labels(kind=kind).set(counts.get(kind, 0))

    def observe_batch(self, seconds: float, stage: str = "batch") -> None:
        self.processing_seconds.labels(stage=_check(stage, PROCESSING_STAGES, "stage")).observe(
            seconds
        )

    def set_queue(self, counts: Mapping[str, int], oldest_open_age_seconds: float) -> None:
        """Set the support-queue gauges (statuses missing from ``counts`` -> 0)."""
        for status in counts:
            _check(status, QUEUE_STATUSES, "status")
        for status in QUEUE_STATUSES:
            self.queue_items.labels(status=status).set(counts.get(status, 0))
        self.queue_oldest_open_age_seconds.set(max(0.0, oldest_open_age_seconds))

    def set_partition_input(self, partition: int, lag: int, stalled: bool) -> None:
        """Set the per-partition input gauges of one by-user partition (a Kafka partition number,
        never anything about a user)."""
        if not isinstance(partition, int) or partition < 0:
            raise ValueError(f"partition={partition!r} is not a partition number")
        self.partition_input_lag_messages.labels(partition=str(partition)).set(lag)
        self.partition_stalled.labels(partition=str(partition)).set(1 if stalled else 0)

    def forget_partition(self, partition: int) -> None:
        """The partition moved to another worker: drop its series here."""
        for gauge in (self.partition_input_lag_messages, self.partition_stalled):
            with contextlib.suppress(KeyError):
                gauge.remove(str(partition))

    def source_events_seen(self, source: str, outcome: str, n: int = 1) -> None:
        """`n` items of a source body (segment, posthog) that ended as `outcome`."""
        if n:
            self.source_events.labels(
                source=_check(source, SOURCES, "source"),
                outcome=_check(outcome, SOURCE_OUTCOMES, "outcome"),
            ).inc(n)

    def webhook_attempt(self, outcome: str) -> None:
        self.webhook_attempts.labels(outcome=_check(outcome, WEBHOOK_OUTCOMES, "outcome")).inc()

    def set_webhook_outbox(self, depth: int, oldest_pending_age_seconds: float) -> None:
        self.webhook_outbox_depth.set(depth)
        self.webhook_oldest_pending_age_seconds.set(max(0.0, oldest_pending_age_seconds))

    def ingest_request(self, code: int | str) -> None:
        """Count one HTTP ingest response.

        Codes outside the fixed set are folded into their class (other 4xx -> ``400``, other
        5xx -> ``500``) so the label set stays closed; anything else is a programming error.
        """
        label = str(code)
        if label not in INGEST_CODES:
            if label.startswith("4") and len(label) == 3:
                label = "400"
            elif label.startswith("5") and len(label) == 3:
                label = "500"
            else:
                raise ValueError(f"code={label!r} is not an ingest response code")
        self.ingest_requests.labels(code=label).inc()

    def set_false_flag_share(self, kind: str, window: str, share: float) -> None:
        self.false_flag_share.labels(
            kind=_check(kind, SIGNAL_KINDS, "kind"), window=_check(window, SHARE_WINDOWS, "window")
        ).set(share)

    def set_incident_updates_overdue(self, counts: Mapping[str, int]) -> None:
        """Overdue incident updates by kind (kinds missing from ``counts`` -> 0)."""
        for kind in counts:
            _check(kind, INCIDENT_KINDS, "kind")
        for kind in INCIDENT_KINDS:
            self.incident_updates_overdue.labels(kind=kind).set(counts.get(kind, 0))
