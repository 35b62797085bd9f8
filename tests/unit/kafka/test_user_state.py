"""Per-user changelog records of the batch path (streams.kafka.user_state), against one engine."""

from __future__ import annotations

import dataclasses
import zlib

import orjson
import pytest

from detectors.abrupt_chat import AbruptChatState, ChatState
from detectors.brute_force import BruteForceState
from detectors.config import DetectionConfig
from detectors.credential_stuffing import RecentAccounts, SourceState
from detectors.engine import DetectionEngine, UserClock, UserState
from detectors.failed_login import FailedLoginState
from detectors.rage_click import RageClickState
from detectors.scoring import ScoreState
from detectors.state import dump_state
from signals.exceptions import ConfigurationError
from signals.flags import RageClickEvidence, Signal
from signals.wire import parse_event
from streams.kafka.user_state import (
    USER_RECORD_FORMAT,
    UserChangelog,
    decode_ip,
    decode_user,
    encode_ip,
    encode_partition,
    encode_user,
    ip_key,
    restore_engine,
    user_key,
)
from streams.lab.simulator import Simulator


def _events(users: int = 200, seed: int = 7) -> list[bytes]:
    events = Simulator(users, seed=seed, duration_ms=2_400_000).run().events
    return [orjson.dumps(e) for e in events]


class _Changelog:
    """What a compacted topic would keep: the newest value per key."""

    def __init__(self) -> None:
        self.users: dict[str, bytes] = {}
        self.ips: dict[str, bytes] = {}
        self.partition: bytes = b""
        self.bytes = 0

    def write(self, records: list[tuple[bytes, bytes | None]], partition: bytes) -> None:
        for key, value in records:
            kept = {b"u:": self.users, b"i:": self.ips}[key[:2]]
            if value is None:
                kept.pop(key[2:].decode(), None)
            else:
                kept[key[2:].decode()] = value
                self.bytes += len(value)
        self.partition = partition


def _run(
    lines: list[bytes], engine: DetectionEngine, log: UserChangelog, changelog: _Changelog
) -> list[object]:
    out: list[object] = []
    for i, line in enumerate(lines):
        event = parse_event(line, 65_536)
        engine.push(event)
        out += engine.drain()
        if i % 500 == 499:
            changelog.write(log.changes(engine), encode_partition(engine, {"events": i}))
    return out


def test_a_restored_engine_gives_the_output_of_one_that_never_stopped() -> None:
    lines = _events()
    half = len(lines) // 2
    config = DetectionConfig()
    reference = DetectionEngine(config)
    expected = _run(lines, reference, UserChangelog(), _Changelog())
    reference.flush()
    expected += reference.drain()

    first = DetectionEngine(config)
    changelog = _Changelog()
    log = UserChangelog()
    got = _run(lines[:half], first, log, changelog)
    changelog.write(log.changes(first), encode_partition(first, {"events": half - 1}))
    # A new process: only what the changelog holds.
    second = DetectionEngine(config)
    users = {u: decode_user(v) for u, v in changelog.users.items()}
    ips = {ip: decode_ip(v) for ip, v in changelog.ips.items()}
    offsets = restore_engine(second, changelog.partition, users, ips)
    assert offsets == {"events": half - 1}
    assert set(second.users) == set(first.users)
    assert second.judge.sources == first.judge.sources and second.judge.sources
    assert second.judge.brute_sources == first.judge.brute_sources
    log2 = UserChangelog()
    log2.load(users, ips)
    assert log2.changes(second) == [], "what was loaded is what the changelog holds"
    got += _run(lines[half:], second, log2, _Changelog())
    second.flush()
    got += second.drain()
    assert got == expected


def test_a_write_carries_only_the_users_that_changed() -> None:
    config = DetectionConfig()
    engine = DetectionEngine(config)
    log = UserChangelog()
    lines = _events(300)
    for line in lines:
        engine.push(parse_event(line, 65_536))
    engine.drain()
    first = log.changes(engine)
    ips = engine.judge.sources.keys() | engine.judge.brute_sources
    assert ips, "the simulation has failed logins with an IP"
    assert {k for k, _ in first} == {user_key(u) for u in engine.users.keys() | engine.clocks} | {
        ip_key(ip) for ip in ips
    }
    assert log.changes(engine) == [], "nothing changed since"
    one = parse_event(lines[-1], 65_536)
    later = one.model_copy(update={"ts": one.ts + 1, "event_id": "later"})
    engine.push(later)
    changed = log.changes(engine)
    assert [k for k, _ in changed] == [user_key(later.user_id)]
    engine.push(later)  # a duplicate changes nothing
    assert log.changes(engine) == []


def test_users_are_small_at_rest() -> None:
    """Target of issue 16: at most 300 bytes per tracked user (figure printed)."""
    config = DetectionConfig()
    engine = DetectionEngine(config)
    changelog = _Changelog()
    log = UserChangelog()
    _run(_events(1_000, seed=3), engine, log, changelog)
    changelog.write(log.changes(engine), encode_partition(engine, {}))
    per_user = sum(len(v) for v in changelog.users.values()) / len(changelog.users)
    print(f"{len(changelog.users)} users, {per_user:.0f} bytes per user record at rest")
    assert set(changelog.users) == engine.users.keys() | engine.clocks.keys()
    assert per_user <= 300


def test_a_clients_remembered_event_ids_survive_the_record_and_still_drop_repeats() -> None:
    """The ids are packed (8-byte keys, varint time steps, also for ids out of time order): a
    restored engine drops a repeat as the first one would, and forgets ids at the same time."""
    events = [
        {"type": "click", "user_id": "u1", "ts": 1_795_255_200_000 + dt, "target": "#pay",
         "event_id": f"{uid}"}
        for dt, uid in [(0, "a"), (5_000, "b"), (3_000, "c"), (9_000, "d")]
    ]  # fmt: skip
    lines = [orjson.dumps(e) for e in events]
    engine = DetectionEngine()
    for line in lines:
        engine.push(parse_event(line, 65_536))
    record = decode_user(UserChangelog().changes(engine)[0][1] or b"")
    assert record[1] is not None and record[1].seen == engine.clocks["u1"].seen
    restored = DetectionEngine()
    restore_engine(restored, encode_partition(engine, {}), {"u1": record})
    restored.push(parse_event(lines[2], 65_536))
    assert restored.stats.duplicates == 1


def test_the_partition_record_is_deflated_and_an_older_one_is_refused_clearly() -> None:
    engine = DetectionEngine()
    for line in _events(users=100):
        engine.push(parse_event(line))
    blob = encode_partition(engine, {"events": 7})
    plain = dump_state(USER_RECORD_FORMAT, ({"events": 7}, b""))
    assert len(blob) < len(zlib.decompress(blob))  # (its per-IP windows are IP records now)
    assert restore_engine(DetectionEngine(), blob, {}) == {"events": 7}
    with pytest.raises(ConfigurationError, match="older build"):
        restore_engine(DetectionEngine(), plain, {})


def test_a_write_carries_only_the_ips_that_changed_and_tombstones_forgotten_ones() -> None:
    engine = DetectionEngine()
    log = UserChangelog()
    lines = _events(300)
    for line in lines:
        engine.push(parse_event(line, 65_536))
    log.changes(engine)
    t = parse_event(lines[-1], 65_536).ts
    failure = parse_event(
        orjson.dumps(
            {"type": "login", "user_id": "u-new", "ts": t, "outcome": "failure",
             "reason": "bad_password", "ip": "198.51.100.77"}
        ),
        65_536,
    )  # fmt: skip
    engine.push(failure, source_only=True)  # a copy: only the IP's state changes
    assert [k for k, _ in log.changes(engine) if k.startswith(b"i:")] == [ip_key("198.51.100.77")]
    engine.judge.forget_idle(t + 10 * 3_600_000)  # hours later every IP is idle
    tombstones = [k for k, v in log.changes(engine) if k.startswith(b"i:") and v is None]
    assert ip_key("198.51.100.77") in tombstones
    assert not engine.judge.sources and not engine.judge.brute_sources


def test_the_partition_record_holds_no_per_ip_windows() -> None:
    engine = DetectionEngine()
    for line in _events(300):
        engine.push(parse_event(line, 65_536))
    assert engine.judge.sources
    restored = DetectionEngine()
    restore_engine(restored, encode_partition(engine, {}), {})
    assert restored.judge.sources == {} and restored.judge.brute_sources == {}
    assert engine.judge.sources, "encoding leaves the engine as it was"


def test_every_field_of_a_users_state_and_clock_survives_its_record() -> None:
    """A record is the state classes' field values by position: a field added, removed or moved
    in any of them must still come back as it was (every field here differs from its default)."""
    t0 = 1_795_255_200_000
    click = parse_event(
        orjson.dumps({"type": "click", "user_id": "u1", "ts": t0, "target": "#pay", "x": 3})
    )
    signal = Signal(
        kind="rage_click",
        ts=t0,
        strength=1.0,
        evidence=RageClickEvidence(rule="burst", clicks=6, bursts=1, span_ms=500, max_gap_ms=90),
    )
    state = UserState(
        t0,
        RageClickState(
            "#pay",
            "/billing",
            1.5,
            2.5,
            t0 - 9,
            t0 - 1,
            4,
            120,
            2,
            True,
            3,
            ("/billing", "#pay"),
            4.5,
            5.5,
            [(t0 - 90_000, 3)],
        ),
        FailedLoginState([(t0 - 5, "bad_password", "10.0.0.1")], t0 - 5, "locked", t0 + 9, t0 + 1),
        AbruptChatState({"c1": ChatState(t0 - 60_000, t0 - 30_000, 2, 1, "web")}, (t0, "c0")),
        ScoreState(
            [signal], "flag-1", t0 - 7, t0 - 6, t0 - 5, "medium", frozenset({"x"}), 2, [signal]
        ),
    )
    clock = UserClock(
        t0,
        t0 - 250,
        t0 + 3,
        t0 - 100,
        [(t0, "e1", 7, click)],
        {11: t0, 2**64 - 1: t0 - 4},
        5,
        t0 + 250,
        t0 - 1,
    )
    parts = [state, state.clicks, state.logins, state.chats, state.chats.chats["c1"], state.score]
    for part in [*parts, clock]:  # so that a field read into its neighbour's place shows
        for field in dataclasses.fields(part):
            default = field.default_factory() if callable(field.default_factory) else field.default
            assert getattr(part, field.name) != default, f"{type(part).__name__}.{field.name}"
    for record in [(state, clock), (state, None), (None, clock)]:
        assert decode_user(encode_user(record)) == record
    assert decode_user(encode_user((None, UserClock(t0, t0)))) == (None, UserClock(t0, t0))


def test_a_user_record_of_an_older_format_is_refused_clearly() -> None:
    blob = encode_user((UserState(1_795_255_200_000), None))
    with pytest.raises(ConfigurationError, match=f"this build reads {USER_RECORD_FORMAT}"):
        decode_user(bytes([USER_RECORD_FORMAT - 1]) + blob[1:])


def test_every_field_of_an_ips_state_survives_its_record() -> None:
    t0 = 1_795_255_200_000

    def accounts(name: str) -> RecentAccounts:
        recent = RecentAccounts()
        recent.add(t0, name)
        return recent

    source = SourceState(
        [(t0, "a")], t0 + 1, t0 + 2, t0 + 3, t0 + 4, t0 + 5, [(t0, "x")], t0 + 6, t0 + 7,
        t0 + 8, t0 + 9, accounts("a"), accounts("x"), accounts("b"), accounts("y"),
    )  # fmt: skip
    brute = BruteForceState([(t0, "a"), (t0 + 1, "a")], t0 + 2, t0 + 3, t0 + 4)
    for part in (source, brute):
        for field in dataclasses.fields(part):
            default = field.default_factory() if callable(field.default_factory) else field.default
            assert getattr(part, field.name) != default, f"{type(part).__name__}.{field.name}"
    for record in [(source, brute), (source, None), (None, brute)]:
        assert decode_ip(encode_ip(record)) == record
