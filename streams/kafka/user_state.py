"""Detector state of one partition as per-user changelog records (Kafka runner, batch path).

A partition's engine is written to a compacted changelog topic as:

- one record per tracked user, key ``u:<user_id>``, value the user's state (``engine.users``),
  pickled and deflated against a fixed preset dictionary (about 70 bytes per user on the
  simulator's traffic instead of about 560 pickled); a user the engine forgot gets a tombstone;
- one record per partition, key ``p:<partition>``, value the rest of the engine (per-IP windows,
  the reorder buffer, timers, remembered event ids, event time) as the engine's own
  ``snapshot()`` with no users in it, plus the input offsets the whole state covers.

A write carries only the users whose state changed since the last write (compared by a digest
of their encoding) and the partition record; it goes to Kafka as one record batch, which the
broker appends whole or not at all, so a crash never leaves half a write that compaction could
later make look complete (``streams.kafka.batch``).

Only the engine's public surface is used: ``engine.users`` and ``snapshot``/``restore``. The
engine of issue 12 keeps more per-user state (clocks, dedup ids); its per-user dicts are named in
``PER_USER_ATTRS`` so they move to the user records the same way.

Which users may have changed is known from the outside, without reading the engine's private
parts: users whose events were pushed since the last write, users with events still in the
reorder buffer (pushed at or after the watermark), users with a login deadline pending, users
named by outputs, and users idle long enough for the engine's sweep to forget them.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from detectors.abrupt_chat import AbruptChatState
from detectors.engine import SWEEP_INTERVAL_MS, DetectionEngine, UserState
from detectors.failed_login import FailedLoginState
from detectors.rage_click import RageClickState
from detectors.scoring import ScoreState
from detectors.state import dump_state, load_state

#: Bump when the record layout below changes (the engine's own STATE_VERSION guards the rest).
USER_RECORD_FORMAT = 1
#: The engine's attributes that hold one entry per user, moved out into the user records.
PER_USER_ATTRS = ("users",)
USER_PREFIX = b"u:"
PARTITION_PREFIX = b"p:"


def _preset_dictionary() -> bytes:
    """Bytes that every user record repeats (class paths, field names): a deflate preset
    dictionary, so a small record does not pay for them. Built from the state classes
    themselves, so it is the same in every process of one build."""
    empty = UserState(0, RageClickState(), FailedLoginState(), AbruptChatState(), ScoreState())
    return pickle.dumps(empty, protocol=5)


_ZDICT = _preset_dictionary()


def encode_user(state: Any) -> bytes:
    """One user's state as a compact record value.

    >>> state = UserState(1_795_255_200_000, clicks=RageClickState())
    >>> blob = encode_user(state)
    >>> len(blob) < 120, decode_user(blob) == state
    (True, True)
    """
    return _deflate(pickle.dumps(state, protocol=5))


def _deflate(raw: bytes) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    return bytes([USER_RECORD_FORMAT]) + packer.compress(raw) + packer.flush()


def decode_user(blob: bytes) -> Any:
    if not blob or blob[0] != USER_RECORD_FORMAT:
        raise ValueError(f"user record format {blob[:1]!r}, this build reads {USER_RECORD_FORMAT}")
    unpacker = zlib.decompressobj(-15, _ZDICT)
    return pickle.loads(unpacker.decompress(blob[1:]) + unpacker.flush())


def user_key(user_id: str) -> bytes:
    return USER_PREFIX + user_id.encode()


def partition_key(partition: int) -> bytes:
    return PARTITION_PREFIX + str(partition).encode()


def encode_partition(engine: DetectionEngine, offsets: dict[str, int]) -> bytes:
    """The engine without its per-user dicts (its own snapshot format), and the offsets covered."""
    saved = {name: getattr(engine, name) for name in PER_USER_ATTRS}
    try:
        for name in PER_USER_ATTRS:
            setattr(engine, name, {})
        rest = engine.snapshot()
    finally:
        for name, value in saved.items():
            setattr(engine, name, value)
    return dump_state(USER_RECORD_FORMAT, (offsets, rest))


def restore_engine(
    engine: DetectionEngine, partition_blob: bytes, users: dict[str, Any]
) -> dict[str, int]:
    """Load the partition record and the user records into `engine`; returns the offsets."""
    offsets, rest = load_state(partition_blob, USER_RECORD_FORMAT, "the partition state record")
    engine.restore(rest)
    engine.users = users
    return dict(offsets)


@dataclass(slots=True)
class UserChangelog:
    """What has to go into the next write of one partition's state.

    `touch` each user pushed (or named by an output); `changes` returns the (key, value)
    records of the users whose encoding differs from the last written one, tombstones for users
    the engine forgot, and remembers what it returned as written.
    """

    idle_ttl_ms: int
    #: digest of the last written encoding, per user
    written: dict[str, int] = field(default_factory=dict)
    #: users touched since the last write
    touched: set[str] = field(default_factory=set)
    #: newest event time pushed per user, kept while it may still be in the reorder buffer
    buffered: dict[str, int] = field(default_factory=dict)
    #: users with a login deadline pending at the last write
    timed: set[str] = field(default_factory=set)
    #: last_ts per written user, oldest first (approximately): who the sweep forgets next
    idle_order: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0

    def touch(self, user_id: str, ts: int) -> None:
        self.touched.add(user_id)
        if ts > self.buffered.get(user_id, ts - 1):
            self.buffered[user_id] = ts

    def touch_many(self, user_ids: Iterable[str]) -> None:
        self.touched.update(user_ids)

    def load(self, users: dict[str, Any]) -> None:
        """After a restore: what is in the changelog now."""
        for user_id, state in users.items():
            raw = pickle.dumps(state, protocol=5)
            self.written[user_id] = hash(raw)
            self.idle_order[user_id] = state.last_ts
            logins = getattr(state, "logins", None)
            if logins is not None and logins.deadline is not None:
                self.timed.add(user_id)

    def changes(self, engine: DetectionEngine) -> list[tuple[bytes, bytes | None]]:
        watermark = engine.watermark_ms
        candidates = self.touched | self.timed
        self.touched = set()
        if watermark is not None:
            # Released from the reorder buffer once older than the watermark: written by now.
            still = {u: ts for u, ts in self.buffered.items() if ts >= watermark}
            candidates.update(self.buffered)
            self.buffered = still
            # The engine's sweep forgets users idle past the TTL (or clears their detectors); it
            # runs every SWEEP_INTERVAL_MS of event time, so these have surely been swept.
            cutoff = watermark - self.idle_ttl_ms - SWEEP_INTERVAL_MS
            order = self.idle_order
            while order:
                user_id, last_ts = next(iter(order.items()))
                if last_ts >= cutoff:
                    break
                del order[user_id]
                candidates.add(user_id)
        else:
            candidates.update(self.buffered)
        users = engine.users
        out: list[tuple[bytes, bytes | None]] = []
        for user_id in sorted(candidates):
            state = users.get(user_id)
            if state is None:
                if self.written.pop(user_id, None) is not None:
                    out.append((user_key(user_id), None))
                self.timed.discard(user_id)
                self.idle_order.pop(user_id, None)
                continue
            raw = pickle.dumps(state, protocol=5)
            digest = hash(raw)
            if self.written.get(user_id) != digest:
                self.written[user_id] = digest
                out.append((user_key(user_id), _deflate(raw)))
            logins = getattr(state, "logins", None)
            if logins is not None and logins.deadline is not None:
                self.timed.add(user_id)
            else:
                self.timed.discard(user_id)
            self.idle_order.pop(user_id, None)
            self.idle_order[user_id] = state.last_ts
        return out
