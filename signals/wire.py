"""The wire format: bytes in, typed events out; flags and alerts out as JSON.

`parse_event` is the only way input enters the detectors. It either returns an event or raises
`InvalidEvent` with a reason code; `dead_letter_record` turns a rejected item into the record that
is written to the dead-letter output, keeping only the fields of the wire format (anything else
might be free text a person wrote, which we never store).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from signals.events import ChatEvent, ClickEvent, Event, LoginEvent, _path_only
from signals.exceptions import InvalidEvent, InvalidReason

AnyEvent = ClickEvent | LoginEvent | ChatEvent

#: Largest accepted event, in bytes of JSON. Real events are a few hundred bytes.
DEFAULT_MAX_EVENT_BYTES = 16 * 1024

_EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(Event)

#: Every field name of the wire format, over all event types (what a dead-letter record may keep).
WIRE_FIELDS: frozenset[str] = frozenset(
    name for model in (ClickEvent, LoginEvent, ChatEvent) for name in model.model_fields
)


def parse_event(raw: bytes | str, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> AnyEvent:
    """Parse one JSON event. Raises `InvalidEvent` (with a reason code) for anything unusable."""
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > max_bytes:
        raise InvalidEvent("oversized", f"{len(raw)} bytes, limit {max_bytes}")
    try:
        return _EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


def parse_event_object(obj: Any) -> AnyEvent:
    """Validate an already-decoded JSON value (an element of an HTTP batch)."""
    try:
        return _EVENT_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidEvent:
    err = exc.errors(include_url=False, include_input=False)[0]
    kind = err["type"]
    loc = tuple(str(part) for part in err["loc"])
    # The discriminated union puts the model name first in loc: ('click', 'ts').
    field = loc[-1] if loc else ""
    where = ".".join(loc[1:]) if len(loc) > 1 else field
    reason: InvalidReason
    if kind == "json_invalid":
        reason = "not_json"
    elif kind in {"model_attributes_type", "model_type", "dict_type"} and len(loc) <= 1:
        reason = "not_object"
    elif kind == "union_tag_not_found":
        reason, where = "missing_field", "type"
    elif kind == "union_tag_invalid":
        reason, where = "unknown_type", "type"
    elif kind == "absurd_ts":
        reason = "absurd_ts"
    elif "ts" in loc[1:2] and kind != "missing":
        reason = "bad_ts"
        return InvalidEvent(reason, "ts: must be RFC 3339 with an offset or integer epoch ms")
    elif kind == "missing":
        reason = "missing_field"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        reason = "wrong_type"
    else:
        reason = "invalid_value"
    return InvalidEvent(reason, f"{where or 'event'}: {err['msg']}")


def dead_letter_record(raw: bytes | str, error: InvalidEvent, source: str) -> dict[str, Any]:
    """The record written for a rejected item: reason, where it came from, and what is safe to keep.

    A JSON object keeps only wire-format fields; anything else (not JSON, oversized) keeps its size
    and SHA-256 so it can be matched against the sender's logs without storing its content.
    """
    data = raw.encode() if isinstance(raw, str) else raw
    record: dict[str, Any] = {
        "reason": error.reason,
        "detail": error.detail,
        "source": source,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if error.reason != "oversized":
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            record["fields"] = {
                k: _path_only(v) if k == "page" and isinstance(v, str) else v
                for k, v in obj.items()
                # Only scalars: a nested object in a wire field could carry anything.
                if k in WIRE_FIELDS and (v is None or isinstance(v, bool | int | float | str))
            }
    return record


def event_to_json(event: AnyEvent) -> bytes:
    """One event as compact wire JSON (ts as epoch ms)."""
    return event.model_dump_json(exclude_none=True).encode()
