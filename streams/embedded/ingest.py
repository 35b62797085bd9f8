"""Decoding an HTTP ingest body: one event, a JSON array, or NDJSON, into events and rejections.

The cost of a body is linear and small, whatever it holds: invalid items are counted by reason,
only the first `max_listed` are listed (in the response, and as dead-letter records), an item
that is not a JSON object is rejected without going through the validator, and the async
decoder yields to the event loop every `YIELD_EVERY` items, so a 1 MiB body of `[1,1,...]`
(524k invalid items) neither blocks the service nor answers more than it was sent.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from signals.exceptions import InvalidEvent
from signals.wire import AnyEvent, dead_letter_record, parse_event, parse_event_object

#: Items decoded between two yields to the event loop (about a millisecond of work at most).
YIELD_EVERY = 500

#: Items listed by default (the service's setting is `max_items_listed`).
DEFAULT_MAX_LISTED = 20


@dataclass(slots=True)
class DecodedBatch:
    events: list[AnyEvent] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # each event's JSON, for the journal
    rejected: list[dict[str, Any]] = field(default_factory=list)  # the first few: index, reason
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # the same few
    rejected_by_reason: Counter[str] = field(default_factory=Counter)  # all of them
    max_listed: int = DEFAULT_MAX_LISTED

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected_by_reason.values())

    def reject(self, index: int, raw: bytes, error: InvalidEvent) -> None:
        self.rejected_by_reason[error.reason] += 1
        if len(self.rejected) < self.max_listed:
            self.rejected.append({"index": index, "reason": error.reason, "detail": error.detail})
            self.dead_letters.append(dead_letter_record(raw, error, f"http item {index}"))


def _steps(
    batch: DecodedBatch, body: bytes, max_event_bytes: int, not_after_ms: int | None
) -> Iterator[None]:
    """Decode `body` into `batch`, pausing every YIELD_EVERY items."""
    max_listed = batch.max_listed

    def checked(event: AnyEvent) -> AnyEvent:
        # One client whose clock runs a day ahead must not be accepted at all.
        if not_after_ms is not None and event.ts > not_after_ms:
            raise InvalidEvent("absurd_ts", "ts: further ahead than the allowed clock skew")
        return event

    if body.lstrip().startswith(b"["):
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            batch.reject(0, body, InvalidEvent("not_json", f"body: {exc}"))
            yield None
            return
        for index, item in enumerate(items):
            if index and index % YIELD_EVERY == 0:
                yield None
            if not isinstance(item, dict):  # no validator for a number, a string, a list
                raw = orjson.dumps(item) if len(batch.rejected) < max_listed else b""
                batch.reject(index, raw, InvalidEvent("not_object", "item: not a JSON object"))
                continue
            raw = orjson.dumps(item)
            try:
                if len(raw) > max_event_bytes:
                    raise InvalidEvent("oversized", f"{len(raw)} bytes, limit {max_event_bytes}")
                batch.events.append(checked(parse_event_object(item)))
                batch.raw.append(raw)
            except InvalidEvent as error:
                batch.reject(index, raw, error)
        del items
        yield None
        return
    for index, line in enumerate(ln for ln in body.splitlines() if ln.strip()):
        if index and index % YIELD_EVERY == 0:
            yield None
        try:
            batch.events.append(checked(parse_event(line, max_event_bytes)))
            batch.raw.append(line.strip())
        except InvalidEvent as error:
            batch.reject(index, line, error)
    yield None


def decode_body(
    body: bytes,
    max_event_bytes: int,
    not_after_ms: int | None = None,
    max_listed: int = DEFAULT_MAX_LISTED,
) -> DecodedBatch:
    """Split a POST body into valid events and rejections (by reason; the first few listed
    with index and reason). `not_after_ms` rejects events dated after it (`absurd_ts`)."""
    batch = DecodedBatch(max_listed=max_listed)
    for _ in _steps(batch, body, max_event_bytes, not_after_ms):
        pass
    return batch


async def decode_body_async(
    body: bytes,
    max_event_bytes: int,
    not_after_ms: int | None = None,
    max_listed: int = DEFAULT_MAX_LISTED,
) -> DecodedBatch:
    """`decode_body`, giving the event loop a turn every YIELD_EVERY items."""
    batch = DecodedBatch(max_listed=max_listed)
    for _ in _steps(batch, body, max_event_bytes, not_after_ms):
        await asyncio.sleep(0)
    return batch
