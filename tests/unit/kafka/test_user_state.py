"""Per-user changelog records of the batch path (streams.kafka.user_state), against one engine."""

from __future__ import annotations

import orjson

from detectors.config import DetectionConfig
from detectors.engine import DetectionEngine, Flag
from signals.wire import parse_event
from streams.kafka.user_state import (
    UserChangelog,
    decode_user,
    encode_partition,
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
        self.partition: bytes = b""
        self.bytes = 0

    def write(self, records: list[tuple[bytes, bytes | None]], partition: bytes) -> None:
        for key, value in records:
            user_id = key[2:].decode()
            if value is None:
                self.users.pop(user_id, None)
            else:
                self.users[user_id] = value
                self.bytes += len(value)
        self.partition = partition


def _run(
    lines: list[bytes], engine: DetectionEngine, log: UserChangelog, changelog: _Changelog
) -> list[object]:
    out: list[object] = []
    for i, line in enumerate(lines):
        event = parse_event(line, 65_536)
        log.touch(event.user_id, event.ts)
        engine.push(event)
        outputs = engine.drain()
        log.touch_many(o.user_id for o in outputs if isinstance(o, Flag))
        out += outputs
        if i % 500 == 499:
            changelog.write(log.changes(engine), encode_partition(engine, {"events": i}))
    return out


def test_a_restored_engine_gives_the_output_of_one_that_never_stopped() -> None:
    lines = _events()
    half = len(lines) // 2
    config = DetectionConfig()
    reference = DetectionEngine(config)
    expected = _run(lines, reference, UserChangelog(config.user_idle_ttl_ms), _Changelog())
    reference.flush()
    expected += reference.drain()

    first = DetectionEngine(config)
    changelog = _Changelog()
    log = UserChangelog(config.user_idle_ttl_ms)
    got = _run(lines[:half], first, log, changelog)
    changelog.write(log.changes(first), encode_partition(first, {"events": half - 1}))
    # A new process: only what the changelog holds.
    second = DetectionEngine(config)
    users = {u: decode_user(v) for u, v in changelog.users.items()}
    offsets = restore_engine(second, changelog.partition, users)
    assert offsets == {"events": half - 1}
    assert set(second.users) == set(first.users)
    log2 = UserChangelog(config.user_idle_ttl_ms)
    log2.load(users)
    got += _run(lines[half:], second, log2, _Changelog())
    second.flush()
    got += second.drain()
    assert got == expected


def test_a_write_carries_only_the_users_that_changed() -> None:
    config = DetectionConfig()
    engine = DetectionEngine(config)
    log = UserChangelog(config.user_idle_ttl_ms)
    lines = _events(300)
    for line in lines:
        event = parse_event(line, 65_536)
        log.touch(event.user_id, event.ts)
        engine.push(event)
    engine.drain()
    first = log.changes(engine)
    assert {k for k, _ in first} == {user_key(u) for u in engine.users}
    assert log.changes(engine) == [], "nothing changed since"
    one = parse_event(lines[-1], 65_536)
    later = one.model_copy(update={"ts": one.ts + 1, "event_id": "later"})
    log.touch(later.user_id, later.ts)
    engine.push(later)
    engine.advance_watermark(later.ts + config.allowed_lateness_ms + 1)
    changed = log.changes(engine)
    assert [k for k, _ in changed] == [user_key(later.user_id)]


def test_users_are_small_at_rest() -> None:
    """Target of issue 16: at most 300 bytes per tracked user (figure printed)."""
    config = DetectionConfig()
    engine = DetectionEngine(config)
    changelog = _Changelog()
    log = UserChangelog(config.user_idle_ttl_ms)
    _run(_events(1_000, seed=3), engine, log, changelog)
    changelog.write(log.changes(engine), encode_partition(engine, {}))
    per_user = sum(len(v) for v in changelog.users.values()) / len(changelog.users)
    print(f"{len(changelog.users)} users, {per_user:.0f} bytes per user record at rest")
    assert set(changelog.users) == set(engine.users)
    assert per_user <= 300
