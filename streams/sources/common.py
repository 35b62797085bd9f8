"""What both source adapters produce, and its hand-over to the wire-format validation."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from signals.exceptions import InvalidEvent, InvalidReason
from signals.wire import dead_letter_record
from streams.embedded.ingest import DecodedBatch, decode_body


class BadBody(Exception):
    """A request body that cannot be read at all (not gzip, not JSON, wrong shape): a 400, and
    one dead letter with `reason`, as `POST /v1/events` does for a body that is not JSON."""

    def __init__(self, reason: InvalidReason, detail: str) -> None:
        super().__init__(detail)
        self.error = InvalidEvent(reason, detail)


@dataclass(slots=True)
class Converted:
    """A source body turned into our wire-format dicts, with what was left out and why."""

    source: str
    items: list[dict[str, Any]] = field(default_factory=list)
    origin: list[int] = field(default_factory=list)  # index in the source body of each item
    invalid: list[tuple[int, bytes, InvalidEvent]] = field(default_factory=list)
    unmapped: int = 0  # events no rule maps (page views, identify calls, custom events...)
    corroborating: int = 0  # PostHog $rageclick: evidence of the clicks we already have

    def add(self, index: int, item: dict[str, Any]) -> None:
        self.items.append(item)
        self.origin.append(index)

    def reject(self, index: int, raw: Any, error: InvalidEvent) -> None:
        self.invalid.append((index, orjson.dumps(raw, default=str), error))

    def to_batch(self, max_event_bytes: int, not_after_ms: int | None) -> DecodedBatch:
        """Validate the items exactly as `POST /v1/events` validates a JSON array; rejections
        keep the index of the item in the source body and name the source."""
        batch = (
            decode_body(orjson.dumps(self.items), max_event_bytes, not_after_ms)
            if self.items
            else DecodedBatch()
        )
        label = f"{self.source} item"
        for rejected, record in zip(batch.rejected, batch.dead_letters, strict=True):
            index = self.origin[rejected["index"]]
            rejected["index"] = index
            record["source"] = f"{label} {index}"
        for index, raw, error in self.invalid:
            batch.rejected_by_reason[error.reason] += 1
            batch.rejected.append({"index": index, "reason": error.reason, "detail": error.detail})
            batch.dead_letters.append(dead_letter_record(raw, error, f"{label} {index}"))
        return batch


def inflate(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body without its Content-Encoding (gzip, as the SDKs send it), at most `max_bytes`."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        if body[:2] == b"\x1f\x8b":  # posthog-js sends gzip as text/plain, no header
            return inflate(body, "gzip", max_bytes)
        return body
    if encoding.strip().lower() not in ("gzip", "x-gzip"):
        raise BadBody("not_json", f"unsupported Content-Encoding {encoding!r} (gzip or none)")
    if body[:2] != b"\x1f\x8b":
        # aiohttp already inflated a body sent with Content-Encoding: gzip while it was read
        # (bounded by max_body_bytes there).
        return body
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = inflater.decompress(body, max_bytes + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise BadBody("not_json", f"body is not gzip: {exc}") from None
    if len(out) > max_bytes:
        raise BadBody("oversized", f"body larger than {max_bytes} bytes uncompressed")
    return out


def load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadBody("not_json", f"body is not JSON: {exc}") from None
