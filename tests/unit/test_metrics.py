"""The metric catalogue of streams.metrics: names, types, labels, pre-initialised children."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from streams.metrics import (
    EVENT_LAG_BUCKETS,
    EVENT_TYPES,
    FLAG_LATENCY_BUCKETS,
    FORBIDDEN_LABELS,
    INGEST_CODES,
    INVALID_REASONS,
    PROCESSING_BUCKETS,
    QUEUE_STATUSES,
    SEVERITIES,
    SIGNAL_KINDS,
    SOURCE_OUTCOMES,
    FrustrationMetrics,
    label_values,
)

# name as exposed -> (type, label names, {label: fixed values} pre-initialised at 0)
# The per-partition gauges get a child per partition a worker holds, none before (PER_PARTITION).
PER_PARTITION = {"frustration_partition_input_lag_messages", "frustration_partition_stalled"}
TWO_LABELS = {"frustration_source_events_total"}
CATALOGUE: dict[str, tuple[str, tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "frustration_events_received_total": ("counter", ("type",), {"type": EVENT_TYPES}),
    "frustration_events_invalid_total": ("counter", ("reason",), {"reason": INVALID_REASONS}),
    "frustration_events_late_total": ("counter", (), {}),
    "frustration_events_duplicate_total": ("counter", (), {}),
    "frustration_signals_total": ("counter", ("kind",), {"kind": SIGNAL_KINDS}),
    "frustration_flags_total": ("counter", ("severity",), {"severity": SEVERITIES}),
    "frustration_flag_escalations_total": ("counter", ("severity",), {"severity": SEVERITIES}),
    "frustration_security_alerts_total": (
        "counter",
        ("kind",),
        {"kind": ("credential_stuffing", "brute_force", "distributed_stuffing")},
    ),
    "frustration_security_alert_revisions_late_total": ("counter", (), {}),
    "frustration_incidents_total": ("counter", ("kind",), {"kind": SIGNAL_KINDS}),
    "frustration_incidents_open": ("gauge", ("kind",), {"kind": SIGNAL_KINDS}),
    "frustration_incident_flags_total": ("counter", ("kind",), {"kind": SIGNAL_KINDS}),
    "frustration_processing_seconds": (
        "histogram",
        ("stage",),
        {"stage": ("batch", "route", "detect")},
    ),
    "frustration_event_lag_seconds": ("histogram", (), {}),
    "frustration_flag_latency_seconds": ("histogram", (), {}),
    "frustration_tracked_users": ("gauge", (), {}),
    "frustration_queue_items": ("gauge", ("status",), {"status": QUEUE_STATUSES}),
    "frustration_queue_oldest_open_age_seconds": ("gauge", (), {}),
    "frustration_queue_store_failures_total": ("counter", (), {}),
    "frustration_ingest_requests_total": ("counter", ("code",), {"code": INGEST_CODES}),
    "frustration_consumer_lag_messages": ("gauge", (), {}),
    "frustration_partition_input_lag_messages": ("gauge", ("partition",), {}),
    "frustration_partition_stalled": ("gauge", ("partition",), {}),
    # Two labels: its children are checked pair by pair (test_source_children_exist_at_zero).
    "frustration_source_events_total": ("counter", ("source", "outcome"), {}),
    "frustration_webhook_attempts_total": (
        "counter",
        ("outcome",),
        {"outcome": ("success", "failure")},
    ),
    "frustration_webhook_dead_letters_total": ("counter", (), {}),
    "frustration_webhook_delivery_latency_seconds": ("histogram", (), {}),
    "frustration_webhook_outbox_depth": ("gauge", (), {}),
    "frustration_webhook_oldest_pending_age_seconds": ("gauge", (), {}),
    "frustration_false_flag_share": (
        "gauge",
        ("kind", "window"),
        {"kind": SIGNAL_KINDS, "window": ("7d", "30d")},
    ),
    "frustration_incident_updates_overdue": ("gauge", ("kind",), {"kind": SIGNAL_KINDS}),
    "frustration_build_info": ("gauge", ("version", "runner"), {}),
}


def _families(registry: CollectorRegistry) -> dict[str, Metric]:
    """Metric families keyed by their exposed name (counters get their ``_total`` back)."""
    out: dict[str, Metric] = {}
    for family in registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        out[name] = family
    return out


@pytest.fixture
def metrics() -> FrustrationMetrics:
    return FrustrationMetrics(CollectorRegistry(), version="1.2.3")


def test_exactly_the_catalogue_is_registered(metrics: FrustrationMetrics) -> None:
    families = _families(metrics.registry)
    assert set(families) == set(CATALOGUE)
    for name, (kind, _labels, _values) in CATALOGUE.items():
        assert families[name].type == kind, name
        assert families[name].documentation, f"{name} has no help text"


def test_label_names_match_the_catalogue(metrics: FrustrationMetrics) -> None:
    families = _families(metrics.registry)
    for name, (kind, labels, _values) in CATALOGUE.items():
        samples = [s for s in families[name].samples if not s.name.endswith("_created")]
        if name in PER_PARTITION:
            assert not samples, f"{name} has a partition before any is held"
            continue
        assert samples, f"{name} exposes no sample before the first event"
        for sample in samples:
            label_names = set(sample.labels) - {"le"}
            assert label_names == set(labels), (name, sample)
        if kind == "histogram":
            assert any("le" in s.labels for s in samples), name


def test_labelled_children_exist_at_zero(metrics: FrustrationMetrics) -> None:
    reg = metrics.registry
    for name, (kind, _labels, fixed) in CATALOGUE.items():
        sample_name = name if kind != "histogram" else f"{name}_count"
        if len(fixed) > 1:  # several fixed labels: every combination exists
            for combination in itertools.product(*fixed.values()):
                labels = dict(zip(fixed, combination, strict=True))
                assert reg.get_sample_value(sample_name, labels) == 0.0, (sample_name, labels)
            continue
        for label, values in fixed.items():
            for value in values:
                got = reg.get_sample_value(sample_name, {label: value})
                assert got == 0.0, (sample_name, label, value, got)
        if not fixed and name not in ("frustration_build_info", *PER_PARTITION, *TWO_LABELS):
            assert reg.get_sample_value(sample_name) == 0.0, sample_name


def test_source_children_exist_at_zero(metrics: FrustrationMetrics) -> None:
    for source in ("segment", "posthog"):
        for outcome in SOURCE_OUTCOMES:
            labels = {"source": source, "outcome": outcome}
            got = metrics.registry.get_sample_value("frustration_source_events_total", labels)
            assert got == 0.0, labels
    with pytest.raises(ValueError):
        metrics.source_events_seen("mixpanel", "mapped")
    with pytest.raises(ValueError):
        metrics.webhook_attempt("maybe")


def test_fixed_label_sets_are_the_contract() -> None:
    values = label_values()
    assert values["type"] == ("click", "login", "chat")
    assert values["reason"] == (
        "not_json",
        "not_object",
        "oversized",
        "missing_field",
        "wrong_type",
        "invalid_value",
        "unknown_type",
        "bad_ts",
        "absurd_ts",
    )
    assert values["kind"] == ("rage_click", "failed_logins", "abrupt_chat_end")
    assert values["severity"] == ("low", "medium", "high", "critical")
    assert values["status"] == ("open", "claimed", "resolved")
    # 200: the Segment and PostHog routes answer as those APIs do (their SDKs retry anything else).
    assert values["code"] == ("200", "202", "400", "401", "413", "415", "500")
    assert values["source"] == ("segment", "posthog")
    assert values["outcome"] == (
        "mapped",
        "unmapped",
        "invalid",
        "corroborating",
        "success",
        "failure",
    )
    assert values["stage"] == ("batch", "route", "detect")
    assert values["runner"] == ("embedded", "kafka")
    assert values["window"] == ("7d", "30d")


def test_no_label_identifies_a_person_or_free_text(metrics: FrustrationMetrics) -> None:
    forbidden = {"user", "user_id", "ip", "session", "chat", "page", "target"} | FORBIDDEN_LABELS
    for family in metrics.registry.collect():
        for sample in family.samples:
            assert not set(sample.labels) & forbidden, (family.name, sample.labels)
    # also after traffic, including the helpers
    metrics.event_received("click")
    metrics.flag_opened("high")
    metrics.flag_latency_seconds.observe(0.3)
    for family in metrics.registry.collect():
        for sample in family.samples:
            assert not set(sample.labels) & forbidden, (family.name, sample.labels)


def test_build_info_is_one_series_set_to_one(metrics: FrustrationMetrics) -> None:
    reg = metrics.registry
    labels = {"version": "1.2.3", "runner": "embedded"}
    assert reg.get_sample_value("frustration_build_info", labels) == 1.0
    metrics.set_build_info("kafka")
    assert reg.get_sample_value("frustration_build_info", labels) is None
    assert reg.get_sample_value("frustration_build_info", {**labels, "runner": "kafka"}) == 1.0
    (family,) = [f for f in reg.collect() if f.name == "frustration_build_info"]
    assert len(family.samples) == 1
    with pytest.raises(ValueError):
        metrics.set_build_info("spark")


def test_default_registry_is_private_and_instances_do_not_clash() -> None:
    first = FrustrationMetrics()
    second = FrustrationMetrics()
    assert isinstance(first.registry, CollectorRegistry)
    assert first.registry is not second.registry
    third = FrustrationMetrics(CollectorRegistry(), runner="kafka")
    first.event_received("login")
    first.flags.labels(severity="critical").inc(2)
    assert first.registry.get_sample_value("frustration_events_received_total", {"type": "login"})
    assert (
        second.registry.get_sample_value("frustration_events_received_total", {"type": "login"})
        == 0.0
    )
    assert (
        third.registry.get_sample_value("frustration_flags_total", {"severity": "critical"}) == 0.0
    )


def test_registering_twice_on_one_registry_is_refused() -> None:
    registry = CollectorRegistry()
    FrustrationMetrics(registry)
    with pytest.raises(ValueError):
        FrustrationMetrics(registry)


def test_histogram_buckets() -> None:
    assert PROCESSING_BUCKETS[0] == pytest.approx(50e-6)
    assert PROCESSING_BUCKETS[-1] == 5.0
    assert EVENT_LAG_BUCKETS[0] == 0.1
    assert EVENT_LAG_BUCKETS[-1] == 3600.0
    for bound in (0.25, 0.5, 1.0, 2.0, 5.0):
        assert bound in FLAG_LATENCY_BUCKETS
    for buckets in (PROCESSING_BUCKETS, EVENT_LAG_BUCKETS, FLAG_LATENCY_BUCKETS):
        assert list(buckets) == sorted(set(buckets))


def test_slo_bucket_is_exposed_as_le_2_0(metrics: FrustrationMetrics) -> None:
    """The recording rules select le="2.0": prometheus-client's spelling of the 2 s bound."""
    metrics.flag_latency_seconds.observe(1.5)
    metrics.flag_latency_seconds.observe(3.0)
    text = generate_latest(metrics.registry).decode()
    assert 'frustration_flag_latency_seconds_bucket{le="2.0"} 1.0' in text
    assert "frustration_flag_latency_seconds_count 2.0" in text


def test_slo_bucket_is_exposed_as_le_1_0(metrics: FrustrationMetrics) -> None:
    """The recording rules select le="1.0" (the 1 s SLO of issue 12): its exposed spelling."""
    metrics.flag_latency_seconds.observe(0.5)
    metrics.flag_latency_seconds.observe(1.5)
    text = generate_latest(metrics.registry).decode()
    assert 'frustration_flag_latency_seconds_bucket{le="1.0"} 1.0' in text


def test_helpers_validate_label_values(metrics: FrustrationMetrics) -> None:
    reg = metrics.registry
    metrics.event_invalid("bad_ts")
    metrics.signal("rage_click")
    metrics.flag_escalated("critical")
    metrics.security_alert("credential_stuffing")
    metrics.incident_opened("failed_logins")
    metrics.incident_flag_grouped("failed_logins")
    metrics.observe_batch(0.002)
    assert reg.get_sample_value("frustration_incidents_total", {"kind": "failed_logins"}) == 1.0
    assert (
        reg.get_sample_value("frustration_incident_flags_total", {"kind": "failed_logins"}) == 1.0
    )
    assert reg.get_sample_value("frustration_events_invalid_total", {"reason": "bad_ts"}) == 1.0
    assert reg.get_sample_value("frustration_signals_total", {"kind": "rage_click"}) == 1.0
    assert (
        reg.get_sample_value("frustration_flag_escalations_total", {"severity": "critical"}) == 1.0
    )
    assert reg.get_sample_value("frustration_processing_seconds_count", {"stage": "batch"}) == 1.0
    calls: list[Callable[[], None]] = [
        lambda: metrics.event_received("scroll"),
        lambda: metrics.event_invalid("late"),
        lambda: metrics.signal("user-42"),
        lambda: metrics.flag_opened("urgent"),
        lambda: metrics.flag_escalated("urgent"),
        lambda: metrics.security_alert("ddos"),
        lambda: metrics.incident_opened("rage"),
        lambda: metrics.incident_flag_grouped("failed_logins:service_unavailable"),
        lambda: metrics.observe_batch(0.1, stage="window"),
        lambda: metrics.set_queue({"pending": 1}, 0.0),
        lambda: metrics.set_incidents_open({"outage": 1}),
        lambda: metrics.ingest_request(302),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_gauge_snapshots_reset_missing_values(metrics: FrustrationMetrics) -> None:
    reg = metrics.registry
    metrics.set_queue({"open": 3, "claimed": 1}, 125.0)
    assert reg.get_sample_value("frustration_queue_items", {"status": "open"}) == 3.0
    assert reg.get_sample_value("frustration_queue_oldest_open_age_seconds") == 125.0
    metrics.set_queue({"resolved": 4}, -1.0)
    assert reg.get_sample_value("frustration_queue_items", {"status": "open"}) == 0.0
    assert reg.get_sample_value("frustration_queue_items", {"status": "resolved"}) == 4.0
    assert reg.get_sample_value("frustration_queue_oldest_open_age_seconds") == 0.0
    metrics.set_incidents_open({"rage_click": 2})
    metrics.set_incidents_open({})
    assert reg.get_sample_value("frustration_incidents_open", {"kind": "rage_click"}) == 0.0


def test_ingest_codes_stay_in_the_fixed_set(metrics: FrustrationMetrics) -> None:
    reg = metrics.registry
    metrics.ingest_request(202)
    metrics.ingest_request("413")
    metrics.ingest_request(404)
    metrics.ingest_request(503)
    assert reg.get_sample_value("frustration_ingest_requests_total", {"code": "202"}) == 1.0
    assert reg.get_sample_value("frustration_ingest_requests_total", {"code": "413"}) == 1.0
    assert reg.get_sample_value("frustration_ingest_requests_total", {"code": "400"}) == 1.0
    assert reg.get_sample_value("frustration_ingest_requests_total", {"code": "500"}) == 1.0
    (family,) = [f for f in reg.collect() if f.name == "frustration_ingest_requests"]
    codes = {s.labels["code"] for s in family.samples}
    assert codes == set(INGEST_CODES)


def test_partition_gauges_follow_the_partitions_held(metrics: FrustrationMetrics) -> None:
    reg = metrics.registry
    metrics.set_partition_input(3, lag=120, stalled=True)
    metrics.set_partition_input(1, lag=0, stalled=False)
    lag = "frustration_partition_input_lag_messages"
    assert reg.get_sample_value(lag, {"partition": "3"}) == 120
    assert reg.get_sample_value("frustration_partition_stalled", {"partition": "3"}) == 1
    assert reg.get_sample_value("frustration_partition_stalled", {"partition": "1"}) == 0
    metrics.forget_partition(3)
    metrics.forget_partition(7)  # never held: nothing to drop
    assert reg.get_sample_value(lag, {"partition": "3"}) is None
    with pytest.raises(ValueError):
        metrics.set_partition_input(-1, lag=0, stalled=False)
