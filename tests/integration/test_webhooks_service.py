"""Signed webhooks from a real ``frustration serve`` to a real receiver that verifies every delivery
with the reference verifier (`standardwebhooks`), fails the first deliveries, goes down and comes
back: every message arrives once per webhook-id, in order per client, with a valid signature;
the Zendesk and Slack shapes ride on the same delivery. A receiver that stays down past the last
retry gets its messages dead-lettered (shown on /ops), and ``frustration webhooks replay`` sends
them again once it is back.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.service_fixture import FRUSTRATION, Service, run_service
from tests.integration.webhook_receiver import Receiver

pytestmark = [pytest.mark.service, pytest.mark.slow]

KEY = "hooks-key"
TOKEN = "hooks-token"
FAIL_FIRST = 12
SECRET = "whsec_" + base64.b64encode(b"a test key of 24 bytes!!").decode()
FAST_RETRIES = {
    "FRUSTRATION_WEBHOOK_RETRY_BASE_S": "0.2",
    "FRUSTRATION_WEBHOOK_RETRY_MAX_DELAY_S": "1.0",
    "FRUSTRATION_WEBHOOK_POLL_INTERVAL_S": "0.1",
    "FRUSTRATION_WEBHOOK_TIMEOUT_S": "2",
}


def endpoints(base: str) -> str:
    return json.dumps(
        [
            {"name": "standard", "url": f"{base}/hooks", "secret": SECRET},
            {
                "name": "zendesk",
                "url": f"{base}/zendesk",
                "secret": SECRET,
                "events": ["flag.opened"],
                "shape": "zendesk",
                "authorization": "Basic em9uZTp0b2tlbg==",
            },
        ]
    )


def sample(service: Service, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(service.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def rage_burst(user: str, n: int = 8) -> list[dict[str, Any]]:
    """Eight quick clicks on a dead "Pay now" button, each client on a page of its own (so the
    flags stay individual, not one incident)."""
    start = int(time.time() * 1000) - 1500
    return [
        {
            "type": "click",
            "user_id": user,
            "ts": start + 90 * i,
            "target": f"#pay-{user}",
            "page": f"/billing/{user}",
            "element": "button",
            "label": "Pay now",
            "event_id": f"{user}-{start}-{i}",
        }
        for i in range(n)
    ]


def outbox_rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM webhook_outbox ORDER BY seq")]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(SECRET, fail_first=FAIL_FIRST)
    rec.start()
    try:
        yield rec
    finally:
        rec.close()


def test_every_event_arrives_once_in_order_signed_through_failures_and_an_outage(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = {
        "FRUSTRATION_API_KEY": KEY,
        "FRUSTRATION_QUEUE_TOKEN": TOKEN,
        "FRUSTRATION_WEBHOOKS": endpoints(receiver.base),
        "FRUSTRATION_WEBHOOK_MAX_ATTEMPTS": "200",
        **FAST_RETRIES,
    }
    service = run_service(tmp_path, env=env)
    users = [f"hook-user-{i}" for i in range(4)]
    try:
        service.post_events([e for u in users for e in rage_burst(u)])
        service.wait_for(
            lambda: {f["user_id"] for f in service.flags()} >= set(users),
            timeout=15,
            what="four flags",
        )
        # The receiver answers 500 to the first FAIL_FIRST deliveries, then goes down while the
        # opened messages may still wait: the resolutions must queue behind them.
        service.wait_for(
            lambda: len(receiver.all()) >= 4, timeout=15, what="first delivery attempts"
        )
        receiver.stop()  # the receiver goes down ...
        flags = {f["user_id"]: f for f in service.flags()}
        for user in users[:2]:
            answer = service.post_json(
                f"/v1/flags/{flags[user]['flag_id']}/resolve", {"outcome": "contacted"}
            )
            assert answer.status == 200, answer.text
        service.wait_for(
            lambda: sample(service, "frustration_webhook_outbox_depth") >= 2,
            timeout=10,
            what="the outbox to hold the resolutions",
        )
        failures_down = sample(service, "frustration_webhook_attempts_total", outcome="failure")
        time.sleep(3.0)  # ... retried while down (connection refused) ...
        assert (
            sample(service, "frustration_webhook_attempts_total", outcome="failure") > failures_down
        )
        receiver.start()  # ... and comes back on the same port.
        service.wait_for(
            lambda: sample(service, "frustration_webhook_outbox_depth") == 0,
            timeout=20,
            what="the outbox to drain",
        )
        rows = outbox_rows(service.db)
    finally:
        assert service.stop() == 0, service.log()

    deliveries = receiver.all()
    assert deliveries and all(d.verified for d in deliveries), "a signature did not verify"
    assert sum(d.status == 500 for d in deliveries) == FAIL_FIRST
    assert {r["state"] for r in rows} == {"delivered"}
    # Once per webhook-id and endpoint: exactly the outbox's messages, each accepted once.
    accepted = defaultdict(list)
    for d in receiver.accepted():
        accepted[(d.path, d.msg_id)].append(d)
    path_of = {"standard": "/hooks", "zendesk": "/zendesk"}
    expected = {(path_of[r["endpoint"]], r["msg_id"]) for r in rows}
    assert set(accepted) == expected
    assert all(len(v) == 1 for v in accepted.values()), "a message was accepted twice"
    # What the standard endpoint got: every flag opened, two resolved, in order per client.
    by_user: dict[str, list[str]] = defaultdict(list)
    seq_of = {(path_of[r["endpoint"]], r["msg_id"]): r["seq"] for r in rows}
    for d in sorted(receiver.accepted("/hooks"), key=lambda d: seq_of[("/hooks", d.msg_id)]):
        body = d.json
        by_user[body["data"]["user_id"]].append(body["type"])
    for user in users:  # in arrival order, each client's messages in the order written
        order = [
            seq_of[("/hooks", d.msg_id)]
            for d in receiver.accepted("/hooks")
            if d.json["data"]["user_id"] == user
        ]
        assert order == sorted(order), f"{user}'s messages arrived out of order"
    for user in users:
        assert by_user[user][0] == "flag.opened", by_user[user]
    for user in users[:2]:
        assert by_user[user][-1] == "flag.resolved", by_user[user]
        resolved = [
            d.json["data"]
            for d in receiver.accepted("/hooks")
            if d.json["type"] == "flag.resolved" and d.json["data"]["user_id"] == user
        ]
        assert resolved[0]["status"] == "resolved" and resolved[0]["outcome"] == "contacted"
    for user in users[2:]:
        assert "flag.resolved" not in by_user[user]
    # The Zendesk shape: one ticket per opened flag, keyed by flag_id, requester by external id.
    tickets = receiver.accepted("/zendesk")
    assert len(tickets) == 4
    for d in tickets:
        ticket = d.json["ticket"]
        assert d.headers["idempotency-key"] == ticket["external_id"]
        assert d.headers["authorization"] == "Basic em9uZTp0b2tlbg=="
        assert ticket["requester"]["external_id"] in users
        assert ticket["priority"] in ("low", "normal", "high", "urgent")
        assert "rage_click" in ticket["tags"]
        assert "Suggested message" in ticket["comment"]["body"]


def test_dead_lettered_after_the_last_retry_shown_on_ops_and_replayed(tmp_path: Path) -> None:
    receiver = Receiver(SECRET)  # not started: nothing listens on its port yet
    env = {
        "FRUSTRATION_API_KEY": KEY,
        "FRUSTRATION_QUEUE_TOKEN": TOKEN,
        "FRUSTRATION_WEBHOOKS": json.dumps(
            [
                {"name": "standard", "url": f"{receiver.base}/hooks", "secret": SECRET},
                {
                    "name": "slack",
                    "url": f"{receiver.base}/slack",
                    "secret": SECRET,
                    "events": ["security_alert.raised", "incident.opened"],
                    "shape": "slack",
                },
            ]
        ),
        "FRUSTRATION_WEBHOOK_MAX_ATTEMPTS": "3",
        **FAST_RETRIES,
    }
    service = run_service(tmp_path, env=env)
    try:
        service.post_events(rage_burst("dead-user"))
        service.wait_for(
            lambda: sample(service, "frustration_webhook_dead_letters_total") >= 1,
            timeout=20,
            what="the message to be dead-lettered",
        )
        assert sample(service, "frustration_webhook_attempts_total", outcome="failure") == 3
        ops = service.get("/ops").text
        assert "dead-lettered" in ops and "flag.opened" in ops and "ClientConnectorError" in ops
        receiver.start()
        replay = subprocess.run(
            [str(FRUSTRATION), "webhooks", "replay", "--since", "1h", "--db", str(service.db)],
            env=service.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert replay.returncode == 0, replay.stderr
        assert replay.stdout.startswith("1 webhook messages")
        service.wait_for(lambda: len(receiver.accepted("/hooks")) == 1, what="the replay")
        delivery = receiver.accepted("/hooks")[0]
        assert delivery.verified and delivery.json["type"] == "flag.opened"
        assert delivery.json["data"]["user_id"] == "dead-user"
        # A security alert goes to Slack as an incoming-webhook message.
        start = int(time.time() * 1000) - 3000
        service.post_events(
            [
                {
                    "type": "login",
                    "user_id": f"victim-{i}",
                    "ts": start + 50 * i,
                    "outcome": "failure",
                    "reason": "bad_password",
                    "ip": "198.51.100.7",
                }
                for i in range(40)
            ]
        )
        service.wait_for(
            lambda: bool(receiver.accepted("/slack")), timeout=15, what="a Slack message"
        )
        slack = receiver.accepted("/slack")[0].json
        assert slack["text"].startswith(":lock: Security alert")
        assert slack["blocks"][0]["type"] == "section"
    finally:
        assert service.stop() == 0, service.log()
        receiver.close()
