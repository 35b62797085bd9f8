"""The webhook outbox on a real SQLite store: written in the queue change's transaction, one row per
subscribed endpoint, the oldest per client first, dead-lettered and replayed; Standard Webhooks
signatures checked with the reference verifier; the retry schedule; the helpdesk shapes."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from signals.flags import SecurityAlert
from streams.queue import helpdesk, wording
from streams.queue.store import QueueStore
from streams.queue.webhooks import Outbox, request_of, retry_delay_s, retry_schedule_s, sign
from streams.settings import Settings, WebhookEndpoint
from tests.unit.builders import MINUTE, T0
from tests.unit.detectors.test_incidents import chat_signal, flag
from tests.unit.queue.test_store_incidents import incident

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123").decode()


def endpoint(name: str = "hooks", **more: Any) -> dict[str, Any]:
    return {"name": name, "url": f"http://127.0.0.1:9/{name}", "secret": SECRET, **more}


def settings(*endpoints: dict[str, Any], **more: Any) -> Settings:
    return Settings(webhooks=tuple(WebhookEndpoint(**e) for e in endpoints), **more)


@pytest.fixture
def store(tmp_path: Path) -> QueueStore:
    return QueueStore(tmp_path / "q.db")


def rows(store: QueueStore) -> list[dict[str, Any]]:
    return [dict(r) for r in store.db.execute("SELECT * FROM webhook_outbox ORDER BY seq")]


def test_every_queue_change_is_one_message_per_subscribed_endpoint(store: QueueStore) -> None:
    Outbox(store, settings(endpoint("all"), endpoint("opened", events=["flag.opened"])))
    f = flag("a", T0)
    store.write_flag(f)
    store.write_flag(f)  # the same emission again: no change, no message
    store.write_flag(flag("a", T0 + MINUTE, chat_signal(T0 + MINUTE), update=1))
    store.resolve(f.flag_id, "contacted")
    store.write_incident(incident())
    store.write_incident(incident(update=1))
    store.write_incident(incident(update=2, status="closed"))
    alert = SecurityAlert(
        alert_id="alr_1",
        ip="198.51.100.7",
        ts=T0,
        first_ts=T0,
        window_ms=60_000,
        distinct_accounts=20,
        failures=40,
        kind="credential_stuffing",
    )
    assert store.add_alert(alert) and not store.add_alert(alert)
    got = [(r["endpoint"], r["event_type"], r["order_key"]) for r in rows(store)]
    assert got == [
        ("all", "flag.opened", "a"),
        ("opened", "flag.opened", "a"),
        ("all", "flag.escalated", "a"),
        ("all", "flag.resolved", "a"),
        ("all", "incident.opened", "incident:inc_test"),
        ("all", "incident.updated", "incident:inc_test"),
        ("all", "incident.closed", "incident:inc_test"),
        ("all", "security_alert.raised", "alert:alr_1"),
    ]
    first = orjson.loads(rows(store)[0]["body"])
    assert first["type"] == "flag.opened" and first["data"]["flag_id"] == f.flag_id
    assert first["data"]["status"] == "open"  # the public flag JSON, as GET /v1/flags/{id}
    resolved = orjson.loads(rows(store)[3]["body"])["data"]
    assert resolved["status"] == "resolved" and resolved["outcome"] == "contacted"
    # One event, one webhook-id, on every endpoint.
    assert rows(store)[0]["msg_id"] == rows(store)[1]["msg_id"]


def test_the_message_commits_or_rolls_back_with_the_queue_change(store: QueueStore) -> None:
    outbox = Outbox(store, settings(endpoint()))

    def broken(event_type: str, key: str, data: dict[str, Any]) -> None:
        outbox.enqueue(event_type, key, data)
        raise sqlite3.OperationalError("disk full")

    store.on_change = broken
    with pytest.raises(sqlite3.OperationalError):
        store.write_flag(flag("a", T0))
    assert store.list_flags() == [] and rows(store) == []


def test_only_the_oldest_pending_message_of_a_client_is_due(store: QueueStore) -> None:
    s = settings(endpoint(), webhook_max_attempts=2)
    outbox = Outbox(store, s)
    store.write_flag(flag("a", T0))
    store.resolve("flg_a", "contacted")
    store.write_flag(flag("b", T0))
    due = outbox.due(1e12, 10, set())
    heads = [(m.order_key, m.event_type) for m in due]
    assert heads == [("a", "flag.opened"), ("b", "flag.opened")]
    assert outbox.due(1e12, 10, {("hooks", "a")})[0].order_key == "b"  # a is in flight
    outbox.failed(due[0], 0.0, "HTTP 500", next_at=1e13)
    assert [m.order_key for m in outbox.due(1e12, 10, set())] == ["b"]  # a waits: no overtaking
    outbox.failed(due[0], 0.0, "HTTP 500", next_at=None)  # the last attempt: dead
    assert [(m.order_key, m.event_type) for m in outbox.due(1e12, 10, set())] == [
        ("a", "flag.resolved"),
        ("b", "flag.opened"),
    ]
    assert [d["event_type"] for d in outbox.dead()] == ["flag.opened"]
    assert outbox.replay(0.0, dead_only=True) == 1
    # Replayed, the older message is the client's head again: order is kept.
    assert outbox.due(1e13, 10, set())[0].event_type == "flag.opened"


def test_signatures_verify_with_the_reference_verifier(store: QueueStore) -> None:
    s = settings(endpoint(), endpoint("zd", events=["flag.opened"], shape="zendesk"))
    outbox = Outbox(store, s)
    store.write_flag(flag("a", T0))
    verifier = Webhook(SECRET)
    import time

    for message in outbox.due(1e12, 10, set()):
        body, headers = request_of(outbox.endpoints[message.endpoint], message, time.time())
        data = verifier.verify(body, headers)
        assert headers["webhook-id"] == message.msg_id and message.msg_id.startswith("msg_")
        if message.endpoint == "zd":
            assert data["ticket"]["external_id"] == "flg_a"
            assert headers["Idempotency-Key"] == "flg_a"
        else:
            assert data["data"]["user_id"] == "a"
    assert sign(SECRET, "msg_1", 1, b"{}") != sign(SECRET, "msg_1", 2, b"{}")


def test_retry_schedule_doubles_to_the_cap_and_spans_hours() -> None:
    s = Settings()
    schedule = retry_schedule_s(s)
    assert schedule[:4] == [5.0, 10.0, 20.0, 40.0] and max(schedule) == 3600.0
    assert len(schedule) == s.webhook_max_attempts - 1
    hours = sum(schedule) / 3600
    print(f"default retry schedule: {len(schedule)} retries over {hours:.1f} h")
    assert hours > 1.0  # a receiver down for an hour loses nothing
    assert retry_delay_s(1, s, lambda: 0.0) == pytest.approx(4.0)  # 5 s, jitter -20 %
    assert retry_delay_s(1, s, lambda: 1.0) == pytest.approx(6.0)
    assert retry_delay_s(30, s, lambda: 0.5) == 3600.0


def test_endpoint_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        WebhookEndpoint(name="x", url="http://h/", secret="plain")
    with pytest.raises(ValueError, match="unknown event types"):
        WebhookEndpoint(name="x", url="http://h/", secret=SECRET, events=["flag.deleted"])
    with pytest.raises(ValueError, match="carries only"):
        WebhookEndpoint(name="x", url="http://h/", secret=SECRET, shape="slack")


def test_zendesk_skips_clients_grouped_under_an_incident(store: QueueStore) -> None:
    Outbox(store, settings(endpoint("zd", events=["flag.opened"], shape="zendesk")))
    store.write_flag(flag("a", T0).model_copy(update={"incident_id": "inc_test"}))
    assert rows(store) == []


def test_helpdesk_shapes_carry_the_summary_and_message() -> None:
    f = orjson.loads(flag("a", T0, chat_signal(T0), severity="high").model_dump_json())
    ticket, key = helpdesk.zendesk_ticket("flag.opened", f)
    assert key == "flg_a" and ticket["ticket"]["priority"] == "high"
    assert ticket["ticket"]["requester"]["external_id"] == "a"
    assert "abrupt_chat_end" in ticket["ticket"]["tags"]
    assert helpdesk.suggested_message(f) in ticket["ticket"]["comment"]["body"]
    summary = helpdesk.case_summary(f)
    assert summary.splitlines()[0] == wording.flag_summary(f)  # as the case page says it
    assert "Severity: High" in summary and "abrupt_chat_end" not in summary
    inc = orjson.loads(incident().model_dump_json())
    slack = helpdesk.slack_message("incident.opened", inc)
    assert slack["text"].startswith(":rotating_light: Incident opened")
    assert "We are sorry." in slack["blocks"][0]["text"]["text"]


def test_replay_since_reads_times_epochs_and_durations() -> None:
    from signals.exceptions import ConfigurationError
    from streams.cli import parse_since

    assert parse_since("2026-12-01T08:00:00Z") == 1_796_112_000.0
    assert parse_since("2026-12-01T08:00:00") == 1_796_112_000.0  # no offset: UTC
    assert parse_since("1796112000") == 1_796_112_000.0
    assert parse_since("3h", now=10_800.0) == 0.0
    assert parse_since("90m", now=5_400.0) == 0.0
    with pytest.raises(ConfigurationError, match="--since"):
        parse_since("yesterday")


def test_no_endpoints_no_hook_no_rows(store: QueueStore) -> None:
    outbox = Outbox(store, Settings())
    assert store.on_change is None
    store.write_flag(flag("a", T0))
    assert rows(store) == [] and outbox.counts() == {"pending": 0, "delivered": 0, "dead": 0}
