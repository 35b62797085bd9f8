"""Detector state of one partition as per-user changelog records (Kafka runner, batch path).

A partition's engine is written to a compacted changelog topic as:

- one record per tracked user, key ``u:<user_id>``, value the user's detector state and clock
  (``engine.users[u]``, ``engine.clocks[u]``: its reorder buffer, watermark and remembered event
  ids) as tuples of field values, pickled (on the simulator's traffic about 180 bytes per user
  at rest; about 510 for a client active in the last dedup window, most of it the 8-byte keys
  of its remembered event ids); a user the engine forgot gets a tombstone;
- one record per source IP the engine judges, key ``i:<ip>``, value that IP's failure windows
  (credential stuffing and brute force) as tuples of field values, pickled; an IP the engine
  forgot gets a tombstone. Every partition judges every IP (failed logins are copied to all of
  them), so these were most of the partition record while they were in it: 189 KB deflated per
  partition after 360,000 simulated events, 44 ms to encode, rewritten every second;
- one record per partition, key ``p:<partition>``, value the rest of the engine (the platform's
  surge window, held alerts, the shared clock) as the engine's own ``snapshot()`` with no users,
  clocks or IPs in it, plus the input offsets the whole state covers, deflated.

A write carries only the users and IPs whose state changed since the last write: the engine names
them (``take_changed_users``, the judge's ``take_changed_ips``), and of those only the ones whose
encoding differs from the last one written are sent. It goes to Kafka as one record batch,
which the broker appends whole or not at all, so a crash never leaves half a write that
compaction could later make look complete (``streams.kafka.batch``).
"""

from __future__ import annotations

import dataclasses
import operator
import pickle
import sys
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from detectors.abrupt_chat import AbruptChatState, ChatState
from detectors.brute_force import BruteForceState
from detectors.credential_stuffing import RecentAccounts, SourceState
from detectors.engine import DetectionEngine, UserClock, UserState
from detectors.failed_login import FailedLoginState
from detectors.rage_click import RageClickState
from detectors.scoring import ScoreState
from detectors.state import dump_state, load_state
from signals.exceptions import ConfigurationError

#: Bump when the record layout below changes (the engine's own STATE_VERSION guards the rest).
#: 3: ids packed; 4: clocks keep due and quiet times, partition deflated; 5: IP records; 6: IP
#: records count their accounts as they come; 7: in the window and in all they keep; 8: user
#: and IP records are tuples of field values, not deflated.
USER_RECORD_FORMAT = 8
#: The engine's attributes that hold one entry per user, moved out into the user records.
PER_USER_ATTRS = ("users", "clocks")
#: The source judge's attributes that hold one entry per IP, moved out into the IP records.
PER_IP_ATTRS = ("sources", "brute_sources")
USER_PREFIX = b"u:"
IP_PREFIX = b"i:"
PARTITION_PREFIX = b"p:"


#: One user's record: its detector state and its clock (either may be absent: a user whose
#: events are all still buffered has no state yet; one whose clock was forgotten, no clock).
UserRecord = tuple[UserState | None, UserClock | None]


def _values_of(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving an instance's field values in the order the class takes them."""
    return operator.attrgetter(*(f.name for f in dataclasses.fields(cls)))


_CLICKS = _values_of(RageClickState)
_LOGINS = _values_of(FailedLoginState)
_CHAT = _values_of(ChatState)
_SCORE = _values_of(ScoreState)
_CLOCK = _values_of(UserClock)
_SEEN_AT = [f.name for f in dataclasses.fields(UserClock)].index("seen")


def _flat(record: UserRecord) -> tuple[object, ...]:
    """The record as tuples of field values, not pickled objects: pickle writes and looks up
    each class it meets (about 2 µs each), and a worker writes every changed user every
    second. The clock's remembered event ids become two byte strings: the 8-byte keys, and each
    one's time as a varint step from the one before (a few bytes, not a dict of full
    timestamps: 520 instead of 622 bytes per active client on the simulator's traffic)."""
    state, clock = record
    flat_state = None
    if state is not None:
        chats = state.chats
        flat_state = (
            state.last_ts,
            None if state.clicks is None else _CLICKS(state.clicks),
            None if state.logins is None else _LOGINS(state.logins),
            None
            if chats is None
            else ({k: _CHAT(c) for k, c in chats.chats.items()}, chats.last_signal_end),
            None if state.score is None else _SCORE(state.score),
        )
    if clock is None:
        return (flat_state, None)
    flat_clock = _CLOCK(clock)
    if not clock.seen:
        return (flat_state, flat_clock)
    flat_clock = (*flat_clock[:_SEEN_AT], {}, *flat_clock[_SEEN_AT + 1 :])
    keys = array("Q", clock.seen)
    if sys.byteorder == "big":
        keys.byteswap()  # the record is little-endian on every machine
    steps, before = bytearray(), clock.newest
    for ts in clock.seen.values():
        _put_varint(steps, _zigzag(ts - before))
        before = ts
    return (flat_state, flat_clock, keys.tobytes(), bytes(steps))


def _unflat(flat: tuple[Any, ...]) -> UserRecord:
    flat_state, flat_clock = flat[0], flat[1]
    state = None
    if flat_state is not None:
        last_ts, clicks, logins, chats, score = flat_state
        state = UserState(
            last_ts,
            None if clicks is None else RageClickState(*clicks),
            None if logins is None else FailedLoginState(*logins),
            None
            if chats is None
            else AbruptChatState({k: ChatState(*c) for k, c in chats[0].items()}, chats[1]),
            None if score is None else ScoreState(*score),
        )
    if flat_clock is None:
        return state, None
    clock = UserClock(*flat_clock)
    if len(flat) == 4:
        keys = array("Q", flat[2])
        if sys.byteorder == "big":
            keys.byteswap()
        steps = flat[3]
        seen, ts, at = {}, clock.newest, 0
        for key in keys:
            step, at = _get_varint(steps, at)
            ts += _unzigzag(step)
            seen[key] = ts
        clock.seen = seen
    return state, clock


def _pickled(record: UserRecord) -> bytes:
    return pickle.dumps(_flat(record), protocol=5)


def encode_user(record: UserRecord) -> bytes:
    """One user's state and clock as a compact record value.

    >>> record = (UserState(1_795_255_200_000, clicks=RageClickState()), None)
    >>> blob = encode_user(record)
    >>> len(blob), decode_user(blob) == record
    (57, True)
    """
    return _framed(_pickled(record))


def _framed(raw: bytes) -> bytes:
    """A user or IP record's value: the format byte, then the pickled tuples as they are. Not
    deflated: setting up a deflate stream costs 16 µs, more than all the rest of a record's
    encoding, and gains little once the class and field names are gone (110 of 181 bytes for a
    user at rest on the simulator's traffic, 447 of 507 for an active one, most of it the
    ids' keys)."""
    return bytes([USER_RECORD_FORMAT]) + raw


def _zigzag(n: int) -> int:
    return n * 2 if n >= 0 else -n * 2 - 1


def _unzigzag(n: int) -> int:
    return n // 2 if n % 2 == 0 else -(n + 1) // 2


def _put_varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _get_varint(data: bytes, at: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = data[at]
        at += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, at
        shift += 7


def decode_user(blob: bytes) -> UserRecord:
    _check_format(blob, "user record")
    return _unflat(pickle.loads(blob[1:]))


def _check_format(blob: bytes, what: str) -> None:
    if not blob or blob[0] != USER_RECORD_FORMAT:
        found = blob[0] if blob else "(empty)"
        raise ConfigurationError(
            f"{what} format {found}, this build reads {USER_RECORD_FORMAT}: the state "
            "changelog was written by another build (to start from fresh state, delete the "
            "<app id>-user-state topic)"
        )


#: One IP's record: its credential-stuffing and its brute-force state (either may be absent).
IpRecord = tuple[SourceState | None, BruteForceState | None]


_SOURCE = _values_of(SourceState)
_BRUTE = _values_of(BruteForceState)
#: Which of SourceState's fields are `RecentAccounts` (flattened to their two fields).
_SOURCE_ACCOUNTS = [f.default_factory is RecentAccounts for f in dataclasses.fields(SourceState)]


def _ip_pickled(record: IpRecord) -> bytes:
    """The record as tuples of field values (each `RecentAccounts` as its two fields), pickled:
    as for users, 13 µs instead of 31 µs for the pickled objects."""
    source, brute = record
    flat_source = None
    if source is not None:
        flat_source = tuple(
            (v.newest, v.heap) if isinstance(v, RecentAccounts) else v for v in _SOURCE(source)
        )
    return pickle.dumps((flat_source, None if brute is None else _BRUTE(brute)), protocol=5)


def encode_ip(record: IpRecord) -> bytes:
    """One IP's failure windows as a compact record value (not deflated, as users' records).

    >>> record = (SourceState(failures=[(1_795_255_200_000, "u1")]), None)
    >>> blob = encode_ip(record)
    >>> len(blob), decode_ip(blob) == record
    (105, True)
    """
    return _framed(_ip_pickled(record))


def decode_ip(blob: bytes) -> IpRecord:
    _check_format(blob, "IP record")
    flat_source, flat_brute = pickle.loads(blob[1:])
    source = None
    if flat_source is not None:
        values: list[Any] = [
            RecentAccounts(*value) if accounts else value
            for value, accounts in zip(flat_source, _SOURCE_ACCOUNTS, strict=True)
        ]
        source = SourceState(*values)
    return source, None if flat_brute is None else BruteForceState(*flat_brute)


def user_key(user_id: str) -> bytes:
    return USER_PREFIX + user_id.encode()


def ip_key(ip: str) -> bytes:
    return IP_PREFIX + ip.encode()


def partition_key(partition: int) -> bytes:
    return PARTITION_PREFIX + str(partition).encode()


def encode_partition(engine: DetectionEngine, offsets: dict[str, int]) -> bytes:
    """The engine without its per-user and per-IP dicts (its own snapshot format), and the
    offsets covered.

    The sets of changed users and IPs are left as they were: their records are taken after."""
    judge = engine.judge
    saved: list[tuple[object, str, object]] = [
        (engine, name, getattr(engine, name)) for name in PER_USER_ATTRS
    ]
    saved += [(judge, name, getattr(judge, name)) for name in PER_IP_ATTRS]
    try:
        for owner, name, _ in saved:
            setattr(owner, name, {})
        rest = engine.snapshot()
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
    return zlib.compress(dump_state(USER_RECORD_FORMAT, (offsets, rest)), 1)


def restore_engine(
    engine: DetectionEngine,
    partition_blob: bytes,
    users: dict[str, UserRecord],
    ips: dict[str, IpRecord] | None = None,
) -> dict[str, int]:
    """Load the partition record, the user records and the IP records into `engine`; returns
    the offsets."""
    what = "the partition state record"
    try:
        blob = zlib.decompress(partition_blob)
    except zlib.error:
        raise ConfigurationError(f"{what} is not deflated: written by an older build") from None
    offsets, rest = load_state(blob, USER_RECORD_FORMAT, what)
    engine.restore(rest)
    engine.users = {u: state for u, (state, _) in users.items() if state is not None}
    engine.clocks = {u: clock for u, (_, clock) in users.items() if clock is not None}
    ips = ips or {}
    engine.judge.sources = {ip: src for ip, (src, _) in ips.items() if src is not None}
    engine.judge.brute_sources = {ip: b for ip, (_, b) in ips.items() if b is not None}
    engine.reindex()
    return dict(offsets)


def _record(engine: DetectionEngine, user_id: str) -> UserRecord | None:
    state = engine.users.get(user_id)
    clock = engine.clocks.get(user_id)
    return None if state is None and clock is None else (state, clock)


def _ip_record(engine: DetectionEngine, ip: str) -> IpRecord | None:
    source = engine.judge.sources.get(ip)
    brute = engine.judge.brute_sources.get(ip)
    return None if source is None and brute is None else (source, brute)


@dataclass(slots=True)
class UserChangelog:
    """What has to go into the next write of one partition's state.

    `changes` returns the (key, value) records of the users and IPs the engine changed whose
    encoding differs from the last written one, tombstones for those the engine forgot, and
    remembers what it returned as written.
    """

    #: digest of the last written encoding, per user
    written: dict[str, int] = field(default_factory=dict)
    #: digest of the last written encoding, per IP
    written_ips: dict[str, int] = field(default_factory=dict)

    def load(self, users: dict[str, UserRecord], ips: dict[str, IpRecord] | None = None) -> None:
        """After a restore: what is in the changelog now."""
        for user_id, record in users.items():
            self.written[user_id] = hash(_pickled(record))
        for ip, ip_record in (ips or {}).items():
            self.written_ips[ip] = hash(_ip_pickled(ip_record))

    def changes(self, engine: DetectionEngine) -> list[tuple[bytes, bytes | None]]:
        out: list[tuple[bytes, bytes | None]] = []
        for user_id in sorted(engine.take_changed_users()):
            record = _record(engine, user_id)
            if record is None:
                if self.written.pop(user_id, None) is not None:
                    out.append((user_key(user_id), None))
                continue
            raw = _pickled(record)
            digest = hash(raw)
            if self.written.get(user_id) != digest:
                self.written[user_id] = digest
                out.append((user_key(user_id), _framed(raw)))
        for ip in sorted(engine.judge.take_changed_ips()):
            ip_record = _ip_record(engine, ip)
            if ip_record is None:
                if self.written_ips.pop(ip, None) is not None:
                    out.append((ip_key(ip), None))
                continue
            raw = _ip_pickled(ip_record)
            digest = hash(raw)
            if self.written_ips.get(ip) != digest:
                self.written_ips[ip] = digest
                out.append((ip_key(ip), _framed(raw)))
        return out
