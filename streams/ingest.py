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

    @property
    def items(self) -> int:
        return len(self.events) + len(self.rejected)


def decode_body(body: bytes, max_event_bytes: int) -> DecodedBatch:
    """Split a POST body into valid events and per-item rejections (with index and reason)."""
    batch = DecodedBatch()
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            _reject(batch, 0, body, InvalidEvent("not_json", f"body: {exc}"))
            return batch
        for index, item in enumerate(items):
            try:
                raw = orjson.dumps(item)
                if len(raw) > max_event_bytes:
                    raise InvalidEvent("oversized", f"{len(raw)} bytes, limit {max_event_bytes}")
                batch.events.append(parse_event_object(item))
            except InvalidEvent as error:
                _reject(batch, index, raw, error)
        return batch
    for index, line in enumerate(ln for ln in body.splitlines() if ln.strip()):
        try:
            batch.events.append(parse_event(line, max_event_bytes))
        except InvalidEvent as error:
            _reject(batch, index, line, error)
    return batch


def _reject(batch: DecodedBatch, index: int, raw: bytes, error: InvalidEvent) -> None:
    batch.rejected.append({"index": index, "reason": error.reason, "detail": error.detail})
    batch.dead_letters.append(dead_letter_record(raw, error, f"http item {index}"))
