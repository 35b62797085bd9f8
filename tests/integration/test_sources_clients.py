"""The platforms' own clients against a real ``frustration serve``: events in their formats arrive
as ours (Segment's segment-analytics-python, RudderStack's rudder-sdk-python, PostHog's posthog
SDK for Python, at the versions pinned in the dev extras), pointed at the service with their
``host`` setting and authenticated with the service's ingest key as write key / project token.

Each client sends eight quick "Pay now" clicks of one client (a rage-click burst: a flag in the
queue under the SDK's user id), a failed login, a chat, and events no rule maps (counted and
ignored); a bad item (no user id) is dead-lettered with its reason, the rest of its batch stays.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import posthog
import pytest
import rudderstack.analytics as rudder_pkg
from prometheus_client.parser import text_string_to_metric_families
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from tests.integration.service_fixture import Service, http, run_service

pytestmark = [pytest.mark.service]

KEY = "source-ingest-key"
CLICKS = 8


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = run_service(
        tmp_path_factory.mktemp("sources"),
        env={"FRUSTRATION_API_KEY": KEY, "FRUSTRATION_QUEUE_TOKEN": "tok"},
    )
    try:
        yield svc
    finally:
        assert svc.stop() == 0, svc.log()


def sample(service: Service, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(service.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def burst_times(n: int = CLICKS) -> list[datetime]:
    start = datetime.now(UTC) - timedelta(seconds=1)
    return [start + timedelta(milliseconds=90 * i) for i in range(n)]


def wait_flag(service: Service, user: str, timeout: float = 10.0) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def has_flag() -> bool:
        found[:] = [f for f in service.flags() if f["user_id"] == user]
        return bool(found)

    service.wait_for(has_flag, timeout=timeout, what=f"a flag for {user}")
    return found[0]


class Errors:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, error: Any, items: Any = None) -> None:
        self.seen.append(repr(error))


def _segment_like(client: Any, user: str, errors: Errors) -> None:
    for at in burst_times():
        client.track(
            user_id=user,
            event="Element Clicked",
            properties={"target": "#pay", "label": "Pay now", "element": "button"},
            context={"page": {"path": "/billing", "url": "https://clinic.example/billing?x=1"}},
            timestamp=at,
        )
    client.track(
        user_id=user,
        event="Login Failed",
        properties={"reason": "bad_password"},
        context={"ip": "203.0.113.9"},
    )
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    client.track(user_id=user, event="Chat Started", properties={"chat_id": chat})
    client.track(
        user_id=user,
        event="Message Sent",
        properties={"chat_id": chat, "sender": "user", "text": "SECRET-CHAT-CANARY"},
    )
    client.track(user_id=user, event="Product Viewed", properties={"sku": "x"})  # unmapped
    client.identify(user_id=user, traits={"email": "someone@example.org"})  # unmapped
    client.page(user_id=user, name="Billing")  # unmapped
    client.flush()
    assert errors.seen == []


def _check_arrived(service: Service, source: str, user: str, before: dict[str, float]) -> None:
    flag = wait_flag(service, user)
    assert flag["kinds"] == ["rage_click"], flag
    evidence = flag["signals"][0]["evidence"]
    assert evidence["target"] == "#pay" and evidence["page"] == "/billing", evidence
    assert sample(service, "frustration_source_events_total", source=source, outcome="mapped") == (
        before["mapped"] + CLICKS + 3
    )
    assert sample(
        service, "frustration_source_events_total", source=source, outcome="unmapped"
    ) == (before["unmapped"] + 3)
    assert "SECRET-CHAT-CANARY" not in Path(service.db).read_bytes().decode("latin-1")


def _before(service: Service, source: str) -> dict[str, float]:
    return {
        o: sample(service, "frustration_source_events_total", source=source, outcome=o)
        for o in ("mapped", "unmapped", "invalid")
    }


def test_segment_python_client_events_arrive_as_ours(service: Service) -> None:
    before = _before(service, "segment")
    logins = sample(service, "frustration_events_received_total", type="login")
    errors = Errors()
    client = SegmentClient(
        write_key=KEY, host=service.base + "/segment", on_error=errors, max_retries=0
    )
    try:
        _segment_like(client, "seg-user-1", errors)
    finally:
        client.shutdown()
    _check_arrived(service, "segment", "seg-user-1", before)
    assert sample(service, "frustration_events_received_total", type="login") == logins + 1


def test_rudderstack_python_client_events_arrive_as_ours(service: Service) -> None:
    before = _before(service, "segment")  # RudderStack speaks Segment's API
    errors = Errors()
    client = RudderClient(
        write_key=KEY, host=service.base + "/segment", on_error=errors, max_retries=0, gzip=True
    )
    assert rudder_pkg.__name__ == "rudderstack.analytics"
    try:
        _segment_like(client, "rudder-user-1", errors)
    finally:
        client.shutdown()
    _check_arrived(service, "segment", "rudder-user-1", before)


def test_a_wrong_write_key_is_refused_and_nothing_counted(service: Service) -> None:
    before = _before(service, "segment")
    errors = Errors()
    client = SegmentClient(
        write_key="wrong", host=service.base + "/segment", on_error=errors, max_retries=0
    )
    client.track(user_id="seg-intruder", event="Element Clicked", properties={"target": "#x"})
    client.flush()
    client.shutdown()
    assert errors.seen and "401" in errors.seen[0]
    assert _before(service, "segment") == before


def test_posthog_python_sdk_events_arrive_as_ours(service: Service) -> None:
    before = _before(service, "posthog")
    errors = Errors()
    client = posthog.Posthog(
        KEY, host=service.base + "/posthog", on_error=errors, max_retries=0, gzip=True
    )
    user = "ph-user-1"
    pay = [
        {
            "tag_name": "button",
            "$el_text": "  Pay\n now ",
            "attr__id": "pay",
            "nth_child": 2,
            "nth_of_type": 1,
        },
        {"tag_name": "body", "nth_child": 2, "nth_of_type": 1},
    ]
    props = {"$current_url": "https://clinic.example/billing?card=4242", "$elements": pay}
    try:
        for at in burst_times():
            client.capture(
                "$autocapture",
                distinct_id=user,
                properties={**props, "$event_type": "click"},
                timestamp=at,
            )
        client.capture("$rageclick", distinct_id=user, properties=props)  # corroborating only
        client.capture("login failed", distinct_id=user, properties={"reason": "bad_password"})
        client.capture("$pageview", distinct_id=user, properties=props)  # unmapped
        client.flush()
    finally:
        client.shutdown()
    assert errors.seen == []
    flag = wait_flag(service, user)
    evidence = flag["signals"][0]["evidence"]
    assert (evidence["target"], evidence["label"], evidence["page"]) == (
        "#pay",
        "Pay now",
        "/billing",
    )
    mapped = sample(service, "frustration_source_events_total", source="posthog", outcome="mapped")
    assert mapped == before["mapped"] + CLICKS + 1
    assert (
        sample(
            service, "frustration_source_events_total", source="posthog", outcome="corroborating"
        )
        >= 1
    )


def test_bad_items_are_dead_lettered_and_the_rest_of_the_batch_kept(service: Service) -> None:
    """A Segment batch with a message without any user id, one with an absurd time and a good
    one: 200, one accepted, two rejected with reasons, both in the dead letters."""
    logging.getLogger("segment").setLevel(logging.CRITICAL)
    invalid_before = sample(
        service, "frustration_source_events_total", source="segment", outcome="invalid"
    )
    now = datetime.now(UTC).isoformat()
    batch = {
        "batch": [
            {"type": "track", "event": "Login Failed", "timestamp": now},
            {
                "type": "track",
                "event": "Login Failed",
                "userId": "u-bad-ts",
                "timestamp": "1970-01-02T00:00:00Z",
            },
            {"type": "track", "event": "Signed In", "userId": "u-ok", "timestamp": now},
        ]
    }
    import base64
    import json

    auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    answer = http(
        "POST",
        service.url("/segment/v1/batch"),
        json.dumps(batch).encode(),
        {"Authorization": auth, "Content-Type": "application/json"},
    )
    assert answer.status == 200, answer.text
    body = answer.json()
    assert body["accepted"] == 1
    assert sorted((r["index"], r["reason"]) for r in body["rejected"]) == [
        (0, "missing_field"),
        (1, "absurd_ts"),
    ]
    dead = service.get("/v1/dead-letters").json()["dead_letters"]
    sources = {d["source"] for d in dead}
    assert {"segment item 0", "segment item 1"} <= sources
    assert (
        sample(service, "frustration_source_events_total", source="segment", outcome="invalid")
        == invalid_before + 2
    )
    # A body that is not JSON at all: 400, one dead letter, counted.
    answer = http("POST", service.url("/segment/v1/batch"), b"{not json", {"Authorization": auth})
    assert answer.status == 400
    time.sleep(0.1)
    dead = service.get("/v1/dead-letters").json()["dead_letters"]
    assert any(d["source"] == "segment body" and d["reason"] == "not_json" for d in dead)


def test_posthog_rageclicks_alone_never_flag(service: Service) -> None:
    """PostHog's own $rageclick verdicts (its rule measured at precision 0.03), however many, are
    counted as corroborating evidence and never become events: no flag, no tracked user."""
    before = sample(
        service, "frustration_source_events_total", source="posthog", outcome="corroborating"
    )
    clicks = sample(service, "frustration_events_received_total", type="click")
    client = posthog.Posthog(KEY, host=service.base + "/posthog", max_retries=0)
    props = {
        "$current_url": "https://clinic.example/billing",
        "$elements": [{"tag_name": "button", "$el_text": "Pay now", "attr__id": "pay"}],
    }
    try:
        for at in burst_times(20):
            client.capture("$rageclick", distinct_id="ph-rage-only", properties=props, timestamp=at)
        client.flush()
    finally:
        client.shutdown()
    service.wait_for(
        lambda: (
            sample(
                service,
                "frustration_source_events_total",
                source="posthog",
                outcome="corroborating",
            )
            == before + 20
        ),
        what="the $rageclick events to be counted",
    )
    time.sleep(3.0)  # past the idle advance
    assert [f for f in service.flags() if f["user_id"] == "ph-rage-only"] == []
    assert sample(service, "frustration_events_received_total", type="click") == clicks


def test_analytics_js_style_write_key_in_the_body_and_short_paths(service: Service) -> None:
    """analytics.js posts text/plain to /v1/t (track) with the write key in the body."""
    import json

    message = {
        "type": "track",
        "event": "Signed In",
        "userId": "ajs-user",
        "timestamp": datetime.now(UTC).isoformat(),
        "writeKey": KEY,
    }
    headers = {"Content-Type": "text/plain"}
    answer = http("POST", service.url("/segment/v1/t"), json.dumps(message).encode(), headers)
    assert answer.status == 200, answer.text
    assert answer.json()["accepted"] == 1
    wrong = {**message, "writeKey": "nope"}
    answer = http("POST", service.url("/segment/v1/t"), json.dumps(wrong).encode(), headers)
    assert answer.status == 401
