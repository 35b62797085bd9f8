"""The wire format: what is accepted, what is rejected (with which reason), what is never kept."""

from __future__ import annotations

import json

import orjson
import pytest

from signals.events import MAX_TS_MS, MIN_TS_MS, ChatEvent, ClickEvent, LoginEvent
from signals.exceptions import INVALID_REASONS, InvalidEvent
from signals.schema import json_schema
from signals.wire import DEFAULT_MAX_EVENT_BYTES, dead_letter_record, parse_event
from tests.unit.builders import T0, line, wire

FREE_TEXT = "I feel awful"


def reason_of(raw: bytes | str) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    return info.value.reason


def click_line(**fields: object) -> bytes:
    return line(wire("click", **fields))


# -- every reason code, each with a concrete bad line ---------------------------------------------
BAD_LINES: list[tuple[str, bytes]] = [
    ("not_json", b'{"type": "click", "user_id": "u1", "ts": 1795255200000'),
    ("not_json", b"type=click user_id=u1"),
    ("not_object", b'[{"type": "click", "user_id": "u1", "ts": 1795255200000}]'),
    ("not_object", b'"click"'),
    ("not_object", b"null"),
    ("not_object", b"42"),
    (
        "oversized",
        line(wire("click", label="x" * 200, target="y" * 300, session_id="z" * 200)).replace(
            b"}", b', "pad": "' + b"p" * DEFAULT_MAX_EVENT_BYTES + b'"}'
        ),
    ),
    ("missing_field", b'{"user_id": "u1", "ts": 1795255200000}'),
    ("missing_field", b'{"type": "click", "ts": 1795255200000}'),
    ("missing_field", b'{"type": "click", "user_id": "u1"}'),
    ("missing_field", b'{"type": "login", "user_id": "u1", "ts": 1795255200000}'),
    ("missing_field", b'{"type": "chat", "user_id": "u1", "ts": 1795255200000, "action": "end"}'),
    ("missing_field", b'{"type": "chat", "user_id": "u1", "ts": 1795255200000, "chat_id": "c1"}'),
    (
        "missing_field",
        b'{"type": "chat", "user_id": "u1", "ts": 1795255200000, "chat_id": "c1", '
        b'"action": "message"}',
    ),
    ("wrong_type", b'{"type": "click", "user_id": 17, "ts": 1795255200000}'),
    ("wrong_type", b'{"type": "click", "user_id": "u1", "ts": 1795255200000, "x": "left"}'),
    ("wrong_type", b'{"type": "click", "user_id": "u1", "ts": 1795255200000, "target": ["a"]}'),
    ("invalid_value", b'{"type": "click", "user_id": "", "ts": 1795255200000}'),
    ("invalid_value", line(wire("click", user="u" * 257))),
    ("invalid_value", b'{"type": "click", "user_id": "u1", "ts": 1795255200000, "detail": -1}'),
    (
        "invalid_value",
        b'{"type": "login", "user_id": "u1", "ts": 1795255200000, "outcome": "maybe"}',
    ),
    (
        "invalid_value",
        b'{"type": "chat", "user_id": "u1", "ts": 1795255200000, "chat_id": "c1", '
        b'"action": "close"}',
    ),
    (
        "invalid_value",
        b'{"type": "chat", "user_id": "u1", "ts": 1795255200000, "chat_id": "c1", '
        b'"action": "end", "ended_by": "therapist"}',
    ),
    ("unknown_type", b'{"type": "scroll", "user_id": "u1", "ts": 1795255200000}'),
    ("unknown_type", b'{"type": "CLICK", "user_id": "u1", "ts": 1795255200000}'),
    ("bad_ts", b'{"type": "click", "user_id": "u1", "ts": "2026-11-21T10:00:00"}'),
    ("bad_ts", b'{"type": "click", "user_id": "u1", "ts": "1795255200000"}'),
    ("bad_ts", b'{"type": "click", "user_id": "u1", "ts": 1795255200000.0}'),
    ("bad_ts", b'{"type": "click", "user_id": "u1", "ts": true}'),
    ("bad_ts", b'{"type": "click", "user_id": "u1", "ts": "yesterday"}'),
    ("bad_ts", b'{"type": "click", "user_id": "u1", "ts": "2026-11-21"}'),
    ("bad_ts", b'{"type": "click", "user_id": "u1", "ts": null}'),
    ("absurd_ts", b'{"type": "click", "user_id": "u1", "ts": 1795255200}'),  # epoch seconds
    ("absurd_ts", b'{"type": "click", "user_id": "u1", "ts": 1795255200000000}'),  # microseconds
    ("absurd_ts", b'{"type": "click", "user_id": "u1", "ts": "1999-12-31T23:59:59Z"}'),
    ("absurd_ts", b'{"type": "click", "user_id": "u1", "ts": "2100-01-01T00:00:00Z"}'),
]


@pytest.mark.parametrize(
    ("reason", "raw"), BAD_LINES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_LINES)]
)
def test_bad_line_is_rejected_with_its_reason(reason: str, raw: bytes) -> None:
    assert reason_of(raw) == reason


def test_every_reason_code_has_a_bad_line() -> None:
    assert {reason for reason, _ in BAD_LINES} == set(INVALID_REASONS)


def test_rejection_detail_does_not_quote_free_text() -> None:
    raw = b'{"type": "click", "user_id": "u1", "ts": "2026-11-21T10:00:00", "text": "I feel awful"}'
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    assert FREE_TEXT not in str(info.value)
    assert info.value.detail.startswith("ts")


# -- timestamps -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (T0, T0),
        ("2026-11-21T10:00:00Z", T0),
        ("2026-11-21T10:00:00.250Z", T0 + 250),
        ("2026-11-21T10:00:00.001Z", T0 + 1),
        ("2026-11-21T11:00:00+01:00", T0),
        ("2026-11-21T11:00:00.250+01:00", T0 + 250),
        ("2026-11-21T05:30:00-04:30", T0),
        ("2026-11-21T10:00:00+00:00", T0),
        ("2026-11-21t10:00:00z", T0),
    ],
)
def test_ts_as_rfc3339_with_offset_or_integer_ms_is_stored_as_utc_epoch_ms(
    ts: object, expected: int
) -> None:
    event = parse_event(line({"type": "click", "user_id": "u1", "ts": ts}))
    assert event.ts == expected


def test_ts_bounds_are_2000_inclusive_to_2100_exclusive() -> None:
    assert parse_event(click_line(dt=MIN_TS_MS - T0)).ts == MIN_TS_MS
    assert parse_event(click_line(dt=MAX_TS_MS - 1 - T0)).ts == MAX_TS_MS - 1
    assert reason_of(click_line(dt=MIN_TS_MS - 1 - T0)) == "absurd_ts"
    assert reason_of(click_line(dt=MAX_TS_MS - T0)) == "absurd_ts"


def test_naive_datetime_is_rejected_as_bad_ts() -> None:
    assert reason_of(line({"type": "click", "user_id": "u1", "ts": "2026-11-21T10:00:00"})) == (
        "bad_ts"
    )


@pytest.mark.parametrize("ts", ["1795255200000", 1795255200000.0, 1795255200000.5, True, False])
def test_numeric_string_float_and_bool_ts_are_rejected_as_bad_ts(ts: object) -> None:
    assert reason_of(line({"type": "click", "user_id": "u1", "ts": ts})) == "bad_ts"


# -- fields ---------------------------------------------------------------------------------------
def test_page_loses_query_string_and_fragment() -> None:
    event = parse_event(click_line(page="/search?q=panic+attack&email=a@b.c#results"))
    assert isinstance(event, ClickEvent)
    assert event.page == "/search"
    assert parse_event(click_line(page="/billing#pay")).page == "/billing"  # type: ignore[union-attr]
    assert parse_event(click_line(page="/billing")).page == "/billing"  # type: ignore[union-attr]


def test_page_given_as_full_url_keeps_only_the_path() -> None:
    event = parse_event(click_line(page="https://app.example/journal/entry?id=42"))
    assert event.page == "/journal/entry"  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["text", "message", "body", "content"])
def test_free_text_fields_are_dropped_at_parse(key: str) -> None:
    raws = [
        line(wire("click", **{key: FREE_TEXT})),
        line(wire("login", outcome="failure", **{key: FREE_TEXT})),
        line(wire("chat", chat_id="c1", action="message", sender="user", **{key: FREE_TEXT})),
    ]
    for raw in raws:
        event = parse_event(raw)
        assert not hasattr(event, key)
        assert key not in type(event).model_fields
        assert FREE_TEXT not in event.model_dump_json()
        assert FREE_TEXT not in repr(event)


def test_unknown_fields_are_ignored() -> None:
    event = parse_event(line(wire("click", colour="red", nested={"a": 1}, target="#pay")))
    assert isinstance(event, ClickEvent)
    assert event.target == "#pay"
    assert not hasattr(event, "colour")


def test_all_optional_fields_of_each_type_are_read() -> None:
    c = parse_event(
        line(
            wire(
                "click",
                session_id="s1",
                event_id="e1",
                target="#pay",
                x=10.5,
                y=20,
                page="/billing",
                element="button",
                label="Pay now",
                role="button",
                detail=2,
                input_type="submit",
            )
        )
    )
    assert isinstance(c, ClickEvent)
    assert (c.session_id, c.event_id, c.target, c.x, c.y, c.detail) == (
        "s1",
        "e1",
        "#pay",
        10.5,
        20.0,
        2,
    )
    lg = parse_event(
        line(wire("login", outcome="failure", reason="bad_otp", ip="10.0.0.1", device_id="d1"))
    )
    assert isinstance(lg, LoginEvent)
    assert (lg.outcome, lg.reason, lg.ip, lg.device_id) == ("failure", "bad_otp", "10.0.0.1", "d1")
    ch = parse_event(
        line(wire("chat", chat_id="c1", action="end", ended_by="timeout", channel="billing"))
    )
    assert isinstance(ch, ChatEvent)
    assert (ch.chat_id, ch.action, ch.ended_by, ch.channel) == ("c1", "end", "timeout", "billing")


def test_chat_message_needs_a_sender_but_start_and_end_do_not() -> None:
    assert reason_of(line(wire("chat", chat_id="c1", action="message"))) == "missing_field"
    assert parse_event(line(wire("chat", chat_id="c1", action="start"))).type == "chat"
    assert parse_event(line(wire("chat", chat_id="c1", action="end"))).type == "chat"


def test_user_id_length_limits() -> None:
    assert parse_event(line(wire("click", user="u"))).user_id == "u"
    assert parse_event(line(wire("click", user="u" * 256))).user_id == "u" * 256
    assert reason_of(line(wire("click", user="u" * 257))) == "invalid_value"
    assert reason_of(line(wire("click", user=""))) == "invalid_value"


def test_str_input_is_accepted_like_bytes() -> None:
    raw = line(wire("click"))
    assert parse_event(raw.decode()) == parse_event(raw)


# -- oversized ------------------------------------------------------------------------------------
def test_event_over_the_size_limit_is_oversized_and_at_the_limit_is_accepted() -> None:
    base = line(wire("click", label=""))
    pad = DEFAULT_MAX_EVENT_BYTES - len(base)
    at_limit = line(wire("click", label="", pad="p" * (pad - len(b',"pad":""'))))
    assert len(at_limit) == DEFAULT_MAX_EVENT_BYTES
    assert parse_event(at_limit).user_id == "u1"
    over = at_limit[:-2] + b'p"}'
    assert len(over) == DEFAULT_MAX_EVENT_BYTES + 1
    assert reason_of(over) == "oversized"


def test_str_input_is_measured_in_utf8_bytes() -> None:
    # 6,000 three-byte characters: 6 K characters, but 18 KB of JSON (the limit is in bytes)
    text = line(wire("click", pad="€" * 6_000)).decode()
    assert len(text) < DEFAULT_MAX_EVENT_BYTES < len(text.encode())
    assert reason_of(text) == "oversized"
    assert reason_of(text.encode()) == "oversized"


def test_max_bytes_argument_sets_the_limit() -> None:
    raw = line(wire("click"))
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, max_bytes=len(raw) - 1)
    assert info.value.reason == "oversized"
    assert parse_event(raw, max_bytes=len(raw)).user_id == "u1"


# -- dead-letter records --------------------------------------------------------------------------
def dead_letter_json(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    record = dead_letter_record(raw, info.value, "line 7")
    return orjson.dumps(record).decode()


def test_dead_letter_record_carries_the_reason_and_never_the_free_text() -> None:
    raw = line({"type": "click", "user_id": "u1", "ts": "2026-11-21T10:00:00", "text": FREE_TEXT})
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    record = dead_letter_record(raw, info.value, "line 7")
    assert record["reason"] == "bad_ts"
    assert record["source"] == "line 7"
    assert record["size"] == len(raw)
    assert len(record["sha256"]) == 64
    assert record["fields"] == {"type": "click", "user_id": "u1", "ts": "2026-11-21T10:00:00"}
    assert FREE_TEXT not in orjson.dumps(record).decode()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "chat", "text": "I feel awful", "user_id": "u1"',  # not JSON
        b'["I feel awful"]',  # not an object
        line(wire("chat", chat_id="c1", action="message", message=FREE_TEXT)),  # no sender
        line(wire("chat", chat_id="c1", action="message", sender="me", body=FREE_TEXT)),
        line(wire("login", outcome="failure", content=FREE_TEXT, ts="soon")),
        line(wire("click", text=FREE_TEXT, note=FREE_TEXT, x="far")),
        line(wire("click", text=FREE_TEXT, pad="p" * DEFAULT_MAX_EVENT_BYTES)),  # oversized
    ],
)
def test_dead_letter_record_of_any_bad_line_never_holds_free_text(raw: bytes) -> None:
    assert FREE_TEXT not in dead_letter_json(raw)


def test_dead_letter_record_never_holds_free_text_nested_in_a_wire_field() -> None:
    # A client bug sends the message object where a label string belongs: rejected (wrong_type),
    # but the record must not keep the text inside it.
    raw = line(wire("click", label={"text": FREE_TEXT, "kind": "note"}))
    assert FREE_TEXT not in dead_letter_json(raw)


def test_dead_letter_record_keeps_no_query_string_of_the_page() -> None:
    raw = line(
        {"type": "click", "user_id": "u1", "ts": "yesterday", "page": "/search?q=I+feel+awful"}
    )
    text = dead_letter_json(raw)
    assert "feel" not in text
    assert "?q=" not in text


def test_oversized_dead_letter_record_keeps_only_size_and_hash() -> None:
    raw = line(wire("click", pad="p" * DEFAULT_MAX_EVENT_BYTES))
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    record = dead_letter_record(raw, info.value, "line 1")
    assert record["reason"] == "oversized"
    assert "fields" not in record
    assert record["size"] == len(raw)


# -- JSON schema ----------------------------------------------------------------------------------
def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/$defs/")
    return schema["$defs"][ref.removeprefix("#/$defs/")]


def test_event_schema_has_one_alternative_per_type_with_required_fields() -> None:
    schema = json_schema("event")
    json.loads(json.dumps(schema))  # plain JSON
    assert schema["$schema"].startswith("https://json-schema.org/")
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    assert alternatives is not None and len(alternatives) == 3
    by_type = {}
    for alt in alternatives:
        sub = _resolve(schema, alt)
        assert sub["type"] == "object"
        by_type[sub["properties"]["type"]["const"]] = sub
    assert set(by_type) == {"click", "login", "chat"}
    required = {t: set(s["required"]) for t, s in by_type.items()}
    assert required["click"] == {"type", "user_id", "ts"}
    assert required["login"] == {"type", "user_id", "ts", "outcome"}
    assert required["chat"] == {"type", "user_id", "ts", "chat_id", "action"}
    for sub in by_type.values():
        for free in ("text", "message", "body", "content"):
            assert free not in sub["properties"]
        ts = sub["properties"]["ts"]
        kinds = {alt["type"] for alt in ts["anyOf"]}
        assert kinds == {"integer", "string"}
    assert set(by_type["login"]["properties"]["outcome"]["enum"]) == {"success", "failure"}
    assert set(by_type["chat"]["properties"]["action"]["enum"]) == {"start", "message", "end"}


@pytest.mark.parametrize(
    ("which", "required"),
    [
        (
            "flag",
            {
                "flag_id",
                "user_id",
                "ts",
                "severity",
                "score",
                "signals",
                "reason",
                "opened_ts",
                "update",
            },
        ),
        (
            "alert",
            {"alert_id", "ts", "ip", "distinct_accounts", "failures", "window_ms", "first_ts"},
        ),
    ],
)
def test_flag_and_alert_schemas_are_objects_with_required_fields(
    which: str, required: set[str]
) -> None:
    schema = json_schema(which)  # type: ignore[arg-type]
    json.loads(json.dumps(schema))
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert required <= set(schema["required"])
    assert schema["properties"]["ts"]["type"] == "string"
    assert schema["properties"]["ts"]["format"] == "date-time"


def test_schema_command_prints_valid_json(capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli import main

    for which in ("event", "flag", "alert"):
        assert main(["schema", which]) == 0
        assert json.loads(capsys.readouterr().out) == json_schema(which)  # type: ignore[arg-type]
