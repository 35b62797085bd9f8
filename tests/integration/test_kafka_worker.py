"""The Kafka runner end to end: `frustration produce` into a real broker, `frustration worker`
processes (faust) in between, flags read back from the flags topic and compared with
`frustration replay` (streams.replay.replay_lines) over the same events.

Comparisons are of distinct (flag_id, update, severity, reason): the guarantee is at least once
with idempotent flags, so a message may repeat after a crash but never differ or go missing.

Each partition's event time moves with its own events, so the stream ends with one *clock* event
per partition (a user of that partition clicking once, 30 minutes after the last event): replay
flushes every timer at the end of its input, the workers only fire what event time has passed.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from streams.kafka_io import partition_for
from streams.replay import replay_lines
from streams.simulator import Simulator
from tests.integration.worker_fixture import (
    PARTITIONS,
    KafkaRunnerEnv,
    flag_messages,
    read_topic,
    wait_for,
)

pytestmark = pytest.mark.kafka

FlagKey = tuple[str, int, str, str]


def clock_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One click per partition, 30 min after the newest event."""
    ts = max(e["ts"] for e in events) + 1_800_000
    clocks: dict[int, dict[str, Any]] = {}
    i = 0
    while len(clocks) < PARTITIONS:
        user = f"clock-{i}"
        clocks.setdefault(
            partition_for(user.encode(), PARTITIONS),
            {"type": "click", "user_id": user, "ts": ts, "target": "#tick", "event_id": user},
        )
        i += 1
    return list(clocks.values())


def stream_lines(users: int, seed: int) -> list[bytes]:
    events = Simulator(users, seed=seed, duration_ms=2_400_000).run().events
    return [orjson.dumps(e) for e in [*events, *clock_events(events)]]


def expected_flags(lines: list[bytes]) -> tuple[set[FlagKey], set[str]]:
    flags, alerts, summary = replay_lines(lines)
    assert summary.late == 0
    keys = {(f["flag_id"], f["update"], f["severity"], f["reason"]) for f in flags}
    return keys, {a["alert_id"] for a in alerts}


def flags_on_topic(env: KafkaRunnerEnv) -> list[FlagKey]:
    return [
        (f["flag_id"], f["update"], f["severity"], f["reason"])
        for f in flag_messages(env.bootstrap, env.topics["flags"])
    ]


def wait_for_flags(env: KafkaRunnerEnv, expected: set[FlagKey], timeout_s: float = 120) -> float:
    return wait_for(
        lambda: set(flags_on_topic(env)) >= expected, timeout_s, f"{len(expected)} flags"
    )


def test_one_worker_gives_the_flags_replay_gives(kafka_runner: KafkaRunnerEnv) -> None:
    lines = stream_lines(300, seed=31)
    expected, expected_alerts = expected_flags(lines)
    assert len(expected) >= 10 and expected_alerts

    kafka_runner.start_worker("worker-a")
    started = time.monotonic()
    kafka_runner.produce(lines)
    waited = wait_for_flags(kafka_runner, expected)
    time.sleep(3)  # anything extra would have arrived by now
    got = flags_on_topic(kafka_runner)
    print(f"{len(lines)} events -> {len(expected)} flags in {time.monotonic() - started:.1f} s")
    assert set(got) == expected, "the worker's flags differ from replay's"
    assert len(got) == len(set(got)), "no crash, so no message repeats"
    alerts = {
        orjson.loads(v)["alert_id"]
        for _, v in read_topic(kafka_runner.bootstrap, kafka_runner.topics["alerts"])
    }
    assert alerts == expected_alerts
    assert waited < 120
