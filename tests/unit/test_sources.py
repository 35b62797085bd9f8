"""The source adapters, one function at a time: the mapping file loader, Segment and PostHog bodies
to our wire format (validated as /v1/events validates), the $elements chain to a target, and the
Kafka queue sink writing the webhook outbox through the same store hook."""

from __future__ import annotations

import base64
import gzip
from collections import namedtuple
from pathlib import Path
from typing import Any

import orjson
import pytest

from signals.exceptions import ConfigurationError
from streams.kafka.sink import store_messages
from streams.metrics import FrustrationMetrics
from streams.queue.feed import QueueFeed
from streams.queue.store import QueueStore
from streams.settings import Settings, WebhookEndpoint
from streams.sources import posthog, segment
from streams.sources.common import BadBody, inflate
from streams.sources.mapping import load_mapping, parse_mapping
from tests.unit.detectors.test_incidents import flag

MAPPING = load_mapping()
NOW = "2026-11-21T10:00:00.000Z"


def test_the_default_mapping_covers_the_common_event_names() -> None:
    for name in ("Signed In", "Login Failed", "Element Clicked", "Chat Started", "Chat Ended"):
        assert MAPPING.rule("segment", name) is not None, name
    assert MAPPING.rule("segment", "Message Sent") is not None
    assert MAPPING.rule("posthog", "login failed") is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[rule]]\nsource="mixpanel"\nevent="x"\ntype="click"', "source must be one of"),
        ('[[rule]]\nsource="segment"\nevent="x"\ntype="purchase"', "type must be one of"),
        (
            '[[rule]]\nsource="segment"\nevent="x"\ntype="chat"\nfields={text="properties.text"}',
            "'text' is not a field of a chat event",
        ),
        ('[[rule]]\nsource="segment"\nevent="x"\ntype="click"\nmore=1', "unknown keys"),
        ("rule = [", "not TOML"),
    ],
)
def test_a_bad_mapping_file_is_refused_with_the_rule_named(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_mapping(text)


def test_a_mapping_file_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        '[[rule]]\nsource = "segment"\nevent = "Checkout Button Tapped"\ntype = "click"\n'
        'set = { element = "button" }\nfields = { target = "properties.id" }\n'
    )
    mapping = load_mapping(path)
    message = {
        "type": "track",
        "event": "Checkout Button Tapped",
        "userId": 42,
        "timestamp": NOW,
        "properties": {"id": "#pay", "comment": "free text"},
    }
    converted = segment.convert({"batch": [message]}, mapping)
    assert converted.items == [
        {"user_id": "42", "ts": NOW, "type": "click", "element": "button", "target": "#pay"}
    ]
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_mapping(tmp_path / "missing.toml")


def test_segment_messages_become_ours_and_the_rest_is_counted() -> None:
    body = {
        "batch": [
            {
                "type": "track",
                "event": "Message Sent",
                "anonymousId": "anon-1",
                "messageId": "m1",
                "timestamp": NOW,
                "properties": {"chat_id": "c1", "text": "I feel awful", "sender": "user"},
            },
            {"type": "identify", "userId": "u1", "traits": {"email": "x@example.org"}},
            {"type": "track", "event": "Product Viewed", "userId": "u1"},
            "not an object",
            {"type": "track", "event": "Login Failed", "timestamp": NOW},
        ]
    }
    converted = segment.convert(body, MAPPING)
    assert converted.items == [
        {
            "user_id": "anon-1",
            "ts": NOW,
            "event_id": "m1",
            "type": "chat",
            "action": "message",
            "sender": "user",
            "chat_id": "c1",
        }
    ]
    assert converted.unmapped == 2
    batch = converted.to_batch(16384, None)
    assert [e.type for e in batch.events] == ["chat"]
    assert sorted((r["index"], r["reason"]) for r in batch.rejected) == [
        (3, "not_object"),
        (4, "missing_field"),
    ]
    assert all("I feel awful" not in orjson.dumps(d).decode() for d in batch.dead_letters)


def test_a_single_track_call_takes_its_type_from_the_path() -> None:
    body = {"event": "Signed In", "userId": "u1", "timestamp": NOW, "context": {"ip": "1.2.3.4"}}
    converted = segment.convert(body, MAPPING, "track")
    assert converted.items[0]["outcome"] == "success" and converted.items[0]["ip"] == "1.2.3.4"
    with pytest.raises(BadBody):
        segment.convert({"nobatch": []}, MAPPING)


def test_the_write_key_is_the_basic_auth_user_name() -> None:
    header = "Basic " + base64.b64encode(b"wk_123:").decode()
    assert segment.write_key(header) == "wk_123"
    assert segment.write_key("Bearer wk_123") is None
    assert segment.write_key("Basic !!!") is None


def test_gzip_bodies_are_inflated_within_the_limit() -> None:
    raw = b'{"batch": []}'
    assert inflate(gzip.compress(raw), "gzip", 100) == raw
    assert inflate(gzip.compress(raw), None, 100) == raw  # posthog-js: no header
    assert inflate(raw, "gzip", 100) == raw  # aiohttp inflated it already
    with pytest.raises(BadBody, match="larger"):
        inflate(gzip.compress(b" " * 1000), "gzip", 100)
    with pytest.raises(BadBody, match="Content-Encoding"):
        inflate(raw, "br", 100)


def autocapture(elements: list[dict[str, Any]], **props: Any) -> dict[str, Any]:
    return {
        "event": "$autocapture",
        "timestamp": NOW,
        "uuid": "0190-1",
        "properties": {
            "distinct_id": "ph-1",
            "$event_type": "click",
            "$current_url": "https://clinic.example/billing/pay?card=4242#x",
            "$session_id": "s1",
            "$elements": elements,
            **props,
        },
    }


def test_an_autocapture_click_becomes_our_click() -> None:
    pay = {"tag_name": "button", "$el_text": "  Pay \n now ", "attr__id": "pay", "nth_of_type": 1}
    body = [autocapture([pay, {"tag_name": "body"}])]
    events, token = posthog.events_of(body)
    assert token is None
    converted = posthog.convert(events, MAPPING)
    assert converted.items == [
        {
            "user_id": "ph-1",
            "ts": NOW,
            "event_id": "0190-1",
            "session_id": "s1",
            "type": "click",
            "target": "#pay",
            "element": "button",
            "label": "Pay now",
            "role": "button",
            "page": "/billing/pay",
        }
    ]


def test_a_stepper_keeps_its_aria_label_and_a_path_target() -> None:
    plus = {
        "tag_name": "button",
        "$el_text": "+",
        "attr__aria-label": "Increase",
        "attr_class": ["step", "big"],
        "nth_of_type": 2,
    }
    click = posthog.click_of({"$elements": [plus, {"tag_name": "p"}, {"tag_name": "body"}]})
    assert click is not None
    assert click["label"] == "Increase"
    assert click["target"] == "body > p > button.step:nth-of-type(2)"


def test_the_elements_chain_string_is_read_too() -> None:
    chain = 'button.primary:attr__id="pay"nth-child="2"nth-of-type="1"text="Pay now";body'
    click = posthog.click_of({"$elements_chain": chain})
    assert click == {"target": "#pay", "element": "button", "label": "Pay now", "role": "button"}


def test_rageclick_is_corroborating_and_other_events_by_the_mapping() -> None:
    events = [
        {"event": "$rageclick", "distinct_id": "ph-1", "properties": {}},
        {"event": "$pageview", "distinct_id": "ph-1", "properties": {}},
        {"event": "login failed", "distinct_id": "ph-1", "timestamp": NOW, "properties": {}},
        {"event": "$autocapture", "properties": {"$event_type": "click"}},
    ]
    converted = posthog.convert(events, MAPPING)
    assert converted.corroborating == 1 and converted.unmapped == 1
    assert [i["type"] for i in converted.items] == ["login"]
    assert [(i, e.reason) for i, _, e in converted.invalid] == [(3, "missing_field")]


def test_posthog_tokens_in_the_body_or_in_every_event() -> None:
    def ok(t: str | None) -> bool:
        return t == "phc_1"

    assert posthog.tokens_ok([], "phc_1", ok)
    events = [{"properties": {"token": "phc_1"}}, {"properties": {"token": "phc_1"}}]
    assert posthog.tokens_ok(events, None, ok)
    assert not posthog.tokens_ok([*events, {"properties": {}}], None, ok)
    form = b"data=" + base64.b64encode(orjson.dumps({"event": "x"}))
    assert posthog.decode(form, "application/x-www-form-urlencoded") == {"event": "x"}


Record = namedtuple("Record", "topic value")


def test_the_kafka_queue_sink_writes_the_webhook_outbox_too(tmp_path: Path) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    settings = Settings(
        webhooks=(WebhookEndpoint(name="h", url="http://127.0.0.1:9/", secret=secret),)
    )
    store = QueueStore(tmp_path / "q.db")
    feed = QueueFeed(settings, store, FrustrationMetrics(), counts_flags=False)
    assert feed.webhooks is not None  # the shared queue app runs its delivery loop
    value = flag("k1", 1_795_255_200_000).model_dump_json().encode()
    store_messages(feed, {"flags": "flag"}, [Record("flags", value)])
    feed.tracker.advance_watermark(1_795_255_200_000 + 3_600_000)
    feed.route_outputs(feed.tracker.drain())
    types = [r["event_type"] for r in store.db.execute("SELECT event_type FROM webhook_outbox")]
    assert types == ["flag.opened"]
