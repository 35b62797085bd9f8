"""The Segment HTTP Tracking API (also RudderStack's and Jitsu's): bodies in, our events out.

Shapes: ``/v1/batch`` ``{"batch": [message, ...]}``, and one message on ``/v1/track``,
``/v1/page``, ``/v1/screen``, ``/v1/identify``, ``/v1/group``, ``/v1/alias`` (the call type
comes from the path when the message has none). Authentication is the write key as the Basic-auth
user name (`write_key`); the service compares it with its ingest key.

A ``track`` call becomes our event when the mapping file has a rule for its ``event`` name
(``page`` and ``screen`` calls by their ``name``); the client is ``userId``, else
``anonymousId``; the time is ``timestamp``, else ``originalTimestamp``; ``messageId`` is the
event id (a message the SDK re-sends after a timeout is processed once). Calls without a rule
(``identify`` and ``group`` always) are counted as unmapped and ignored: never an error that drops
the batch.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from signals.exceptions import InvalidEvent
from streams.sources.common import BadBody, Converted
from streams.sources.mapping import SourceMapping, lookup

#: The call types of the Tracking API, and the single-message paths that carry them.
CALL_TYPES: tuple[str, ...] = ("track", "page", "screen", "identify", "group", "alias")
#: Path -> call type (None: a batch), with analytics.js's one-letter paths.
SHORT_PATHS: dict[str, str | None] = {
    **{c: c for c in CALL_TYPES},
    **{c[0]: c for c in CALL_TYPES if c != "screen"},
    "s": "screen",
    "batch": None,
    "b": None,
}


def write_key(authorization: str | None) -> str | None:
    """The write key of a ``Basic base64(write_key:)`` header (Segment's and RudderStack's)."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0]


def body_write_key(body: Any) -> str | None:
    """The ``writeKey`` field analytics.js (and the Python SDK) put in the body."""
    key = body.get("writeKey") if isinstance(body, dict) else None
    return key if isinstance(key, str) else None


def messages_of(body: Any, call: str | None) -> list[Any]:
    """The messages of a decoded body: a batch, or one message of call type `call`."""
    if not isinstance(body, dict):
        raise BadBody("not_object", "body must be a JSON object")
    if call is None:
        batch = body.get("batch")
        if not isinstance(batch, list):
            raise BadBody("missing_field", "batch: a list of messages is required")
        return batch
    return [body if "type" in body else {**body, "type": call}]


def _name(message: dict[str, Any]) -> str | None:
    kind = message.get("type")
    if kind == "track":
        name = message.get("event")
    elif kind in ("page", "screen"):
        name = message.get("name")
    else:
        return None
    return name if isinstance(name, str) else None


def convert(body: Any, mapping: SourceMapping, call: str | None = None) -> Converted:
    """Segment messages -> our wire-format dicts (not validated yet: see `Converted.to_batch`)."""
    out = Converted("segment")
    for index, message in enumerate(messages_of(body, call)):
        if not isinstance(message, dict):
            out.reject(index, message, InvalidEvent("not_object", "message: not a JSON object"))
            continue
        name = _name(message)
        rule = mapping.rule("segment", name) if name is not None else None
        if rule is None:
            out.unmapped += 1
            continue
        user = message.get("userId")
        if user is None or user == "":
            user = message.get("anonymousId")
        if user is None or user == "" or isinstance(user, dict | list | bool):
            out.reject(
                index, message, InvalidEvent("missing_field", "userId: and no anonymousId either")
            )
            continue
        base: dict[str, Any] = {"user_id": str(user)}
        ts = message.get("timestamp") or message.get("originalTimestamp")
        if ts is not None:
            base["ts"] = ts
        if isinstance(message.get("messageId"), str):
            base["event_id"] = message["messageId"]
        session = lookup(message, "context.sessionId") or lookup(message, "properties.session_id")
        if isinstance(session, str | int) and not isinstance(session, bool):
            base["session_id"] = str(session)
        out.add(index, rule.apply(message, base))
    return out
