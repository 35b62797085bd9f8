"""Decoding an HTTP ingest body: one event, a JSON array, or NDJSON, into events and rejections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from signals.exceptions import InvalidEvent
from signals.wire import AnyEvent, dead_letter_record, parse_event, parse_event_object


@dataclass(slots=True)
class DecodedBatch:
    events: list[AnyEvent] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # index, reason, detail
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, index: int, raw: bytes, error: InvalidEvent) -> None:
        self.rejected.append({"index": index, "reason": error.reason, "detail": error.detail})
        self.dead_letters.append(dead_letter_record(raw, error, f"http item {index}"))


def decode_body(body: bytes, max_event_bytes: int, not_after_ms: int | None = None) -> DecodedBatch:
    """Split a POST body into valid events and per-item rejections (with index and reason).

    `not_after_ms` rejects events dated after it (`absurd_ts`): one client whose clock runs a day
    ahead would otherwise move event time for everyone and make every other event late."""
    batch = DecodedBatch()

    def not_too_far_ahead(event: AnyEvent) -> AnyEvent:
        if not_after_ms is not None and event.ts > not_after_ms:
            raise InvalidEvent("absurd_ts", "ts: further ahead than the allowed clock skew")
        return event

    if body.lstrip().startswith(b"["):
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            batch.reject(0, body, InvalidEvent("not_json", f"body: {exc}"))
            return batch
        for index, item in enumerate(items):
            raw = orjson.dumps(item)
            try:
                if len(raw) > max_event_bytes:
                    raise InvalidEvent("oversized", f"{len(raw)} bytes, limit {max_event_bytes}")
                batch.events.append(not_too_far_ahead(parse_event_object(item)))
            except InvalidEvent as error:
                batch.reject(index, raw, error)
        return batch
    for index, line in enumerate(ln for ln in body.splitlines() if ln.strip()):
        try:
            batch.events.append(not_too_far_ahead(parse_event(line, max_event_bytes)))
        except InvalidEvent as error:
            batch.reject(index, line, error)
    return batch
