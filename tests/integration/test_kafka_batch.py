"""The batch path of the Kafka runner (streams.kafka.batch) with real workers on a real broker:
rebalances while the stream runs, the per-user state changelog, mis-keyed records.

Flags are compared with `frustration replay` over the same lines, as in test_kafka_worker.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from streams.kafka.io import partition_for
from streams.kafka.user_state import USER_RECORD_FORMAT, decode_user
from streams.lab.simulator import Simulator
from streams.replay import replay_lines
from tests.integration.test_kafka_worker import (
    expected_flags,
    flags_on_topic,
    http_metrics,
    killed_mid_stream,
    stream_lines,
    wait_for_flags,
)
from tests.integration.worker_fixture import PARTITIONS, KafkaRunnerEnv, read_topic, wait_for

pytestmark = pytest.mark.kafka


def dead_letters(env: KafkaRunnerEnv) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _, v in read_topic(env.bootstrap, env.topics["dead_letter"])]


def state_records(env: KafkaRunnerEnv) -> list[tuple[int, int, bytes, bytes | None]]:
    """(partition, offset, key, value) of every record on the user-state changelog, in order."""
    from kafka import KafkaConsumer, TopicPartition

    topic = f"app-{env.suffix}-user-state"
    consumer = KafkaConsumer(bootstrap_servers=env.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[tuple[int, int, bytes, bytes | None]] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                out += [(tp.partition, r.offset, r.key, r.value) for r in records]
        out.sort()
        return out
    finally:
        consumer.close()


def test_workers_joining_and_leaving_mid_stream_lose_double_and_drop_nothing(
    kafka_runner: KafkaRunnerEnv,
) -> None:
    """A second worker joins while the stream is produced, then the first stops (SIGTERM):
    every partition moves at least once, through the rebalance listener (state written by the
    old owner, loaded by the new one). Flags equal replay's, none is sent twice, and no event is
    dead-lettered as late."""
    lines = stream_lines(300, seed=35)
    expected, expected_alerts = expected_flags(lines)
    first = kafka_runner.start_worker("worker-a")
    # Slow enough (about 25 s) for a worker to start and join while it runs.
    producer = threading.Thread(target=kafka_runner.produce, args=(lines, 500.0))
    producer.start()

    def received(worker: Any) -> float:
        return http_metrics(worker.web_port).get("frustration_events_received_total", 0)

    wait_for(lambda: received(first) > 1_000, 60, "1000 events processed", every_s=0.2)
    second = kafka_runner.start_worker("worker-b")
    wait_for(lambda: received(second) > 500, 60, "the second worker to take part", every_s=0.2)
    first.stop()
    assert first.process.returncode is not None
    producer.join(120)
    wait_for_flags(kafka_runner, expected, timeout_s=180)
    time.sleep(3)
    got = flags_on_topic(kafka_runner)
    assert set(got) == expected, "flags differ from replay's"
    doubled = sum(Counter(got).values()) - len(set(got))
    late = [r for r in dead_letters(kafka_runner) if r["reason"] == "late"]
    print(f"rebalances: {doubled} flag messages doubled, {len(late)} events late")
    assert doubled == 0
    assert late == []
    alerts = {
        orjson.loads(v)["alert_id"]
        for _, v in read_topic(kafka_runner.bootstrap, kafka_runner.topics["alerts"])
    }
    assert alerts == expected_alerts
    assert "resumed" in second.log(), "the second worker loaded moved partitions' state"


def test_state_is_per_user_small_and_written_only_for_users_that_changed(
    kafka_runner: KafkaRunnerEnv,
) -> None:
    """The changelog holds one record per tracked user (≤ 300 bytes) and one per partition; a
    later write carries only the users with new events. The later events are sent with wrong
    keys (on other users' partitions): they take the extra hop and still flag as in replay."""
    from kafka import KafkaProducer

    lines = stream_lines(200, seed=36)
    worker = kafka_runner.start_worker("worker-a")
    kafka_runner.produce(lines)
    wait_for_flags(kafka_runner, expected_flags(lines)[0])
    # A checkpoint after the last events: they wait in the reorder buffer until the idle advance,
    # which depends on the machine's load, so wait for their users' records with those events
    # processed (detector state, nothing buffered), not a fixed time: the clock clients of every
    # partition, because the partitions' writes come in turn, up to a second apart.
    last = {u for line in lines if (u := orjson.loads(line)["user_id"]).startswith("clock-")}
    wait_for(
        lambda: last <= _users_processed(state_records(kafka_runner)),
        60,
        "the last events' users processed in the state",
        every_s=0.5,
    )
    before = state_records(kafka_runner)
    latest: dict[bytes, bytes | None] = {}
    for _, _, key, value in before:
        latest[key] = value
    users = {  # the clock clients' one-click records are left out: they would flatter the mean
        k: v
        for k, v in latest.items()
        if k.startswith(b"u:") and not k.startswith(b"u:clock-") and v is not None
    }
    per_user = sum(len(v) for v in users.values()) / len(users)
    partition_bytes = sum(len(v or b"") for k, v in latest.items() if k.startswith(b"p:"))
    print(
        f"{len(users)} users: {per_user:.0f} bytes per user record, {partition_bytes} bytes of "
        "partition records"
    )
    assert len(users) >= 150
    assert per_user <= 300

    # Later: a rage burst of one user and a click of four others, each keyed as another user.
    ts = max(orjson.loads(line)["ts"] for line in lines) + 1_000
    burst = [
        {"type": "click", "user_id": "late-rager", "ts": ts + 200 * i, "target": "#pay",
         "label": "Pay now", "page": "/billing", "event_id": f"late-rager-{i}"}
        for i in range(8)
    ]  # fmt: skip
    others = [
        {"type": "click", "user_id": f"late-{n}", "ts": ts + 50 * n, "target": "#home",
         "event_id": f"late-{n}"}
        for n in range(4)
    ]  # fmt: skip
    later = [orjson.dumps(e) for e in sorted(burst + others, key=lambda e: e["ts"])]
    later.append(later[3])  # a client's retry of one event: dropped as a duplicate, and counted
    producer = KafkaProducer(bootstrap_servers=kafka_runner.bootstrap)
    try:
        misrouted = 0
        for line in later:
            user = orjson.loads(line)["user_id"]
            wrong = next(
                f"x{i}"
                for i in range(100)
                if partition_for(f"x{i}".encode(), PARTITIONS)
                != partition_for(user.encode(), PARTITIONS)
            )
            producer.send(kafka_runner.topics["events"], value=line, key=wrong.encode())
            misrouted += 1
        producer.flush()
    finally:
        producer.close()
    expected, _ = expected_flags([*lines, *later])
    wait_for_flags(kafka_runner, expected)
    assert set(flags_on_topic(kafka_runner)) == expected
    duplicates = replay_lines([*lines, *later])[2].duplicates  # the simulator retries some too
    assert duplicates == replay_lines(lines)[2].duplicates + 1
    wait_for(
        lambda: (
            http_metrics(worker.web_port).get("frustration_events_duplicate_total") == duplicates
        ),
        30,
        f"the {duplicates} repeated events (the retry with them) counted as duplicates",
        every_s=0.5,
    )
    seen = {p: o for p, o, _, _ in before}
    changed = {"late-rager", *(f"late-{n}" for n in range(4))}

    def written_since() -> set[str]:
        return _users_written([r for r in state_records(kafka_runner) if r[1] > seen.get(r[0], -1)])

    wait_for(lambda: changed <= written_since(), 60, "the later users' records", every_s=0.5)
    time.sleep(2)  # a write of anyone else would come with or right after them
    written = written_since()
    print(f"after {misrouted} mis-keyed events of 5 users: user records written for {written}")
    assert written == changed


def test_a_live_clients_flag_needs_no_other_traffic(kafka_runner: KafkaRunnerEnv) -> None:
    """Per-user time: a live client (events dated now) rage-clicks, then goes quiet, alone on
    the topic. Its own time moves on with the clock from its last event, so the flag comes a
    lateness later, as replay gives it. Neither other clients' traffic nor the idle advance of a
    quiet partition releases it: there is no other traffic, and the idle advance is set to a
    minute, past the wait here. The flag's latency is observed from its client's last event."""
    kafka_runner.extra_env["FRUSTRATION_IDLE_ADVANCE_S"] = "60"
    worker = kafka_runner.start_worker("worker-a")
    t0 = int(time.time() * 1000) - 2_000
    lines = [
        orjson.dumps(
            {
                "type": "click",
                "user_id": "alone",
                "ts": t0 + 100 * i,
                "target": "#pay",
                "label": "Pay now",
                "page": "/billing",
                "event_id": f"alone-{i}",
            }
        )
        for i in range(6)
    ]  # fmt: skip  (six clicks: the rule is complete at the last one, as the benchmark's probes)
    expected, _ = expected_flags(lines)
    assert expected, "replay flags the burst"
    kafka_runner.produce(lines)
    wait_for_flags(kafka_runner, expected, timeout_s=30)
    assert set(flags_on_topic(kafka_runner)) == expected
    metrics = http_metrics(worker.web_port)
    assert metrics.get("frustration_flag_latency_seconds_count") == len(expected)
    assert dead_letters(kafka_runner) == []
    # Then nothing changes: the clock moving the client's time on is not written again.
    wait_for(
        lambda: "alone" in _users_processed(state_records(kafka_runner)),
        30,
        "the client's record with its clicks processed",
        every_s=0.5,
    )
    time.sleep(1.5)  # a partition's write comes within a second of the change
    written = len(state_records(kafka_runner))
    time.sleep(3)
    assert len(state_records(kafka_runner)) == written, "an idle worker rewrites no state"


def test_a_worker_killed_in_live_traffic_gives_replays_flags(kafka_runner: KafkaRunnerEnv) -> None:
    """Live traffic (each event dated at the moment it is sent, 1,000 a second) moves clients on
    with the clock (per-user time). A SIGKILL mid-stream: the restarted worker re-reads what its
    state does not cover, with each client's time moved by the records' own timestamps, as the
    first reading moved it; once caught up, by the wall clock again. Flags equal replay's of the
    same lines (the credential stuffer's victims included), and no event is late. (Security
    alerts are held one to five minutes of their IP's time before they are final, longer than
    this test waits: the back-fill tests compare them.)"""
    events = Simulator(300, seed=37, duration_ms=2_400_000).run().events
    rate = 1_000.0
    t0 = int(time.time() * 1000)
    lines = [orjson.dumps(dict(e, ts=t0 + int(i * 1000 / rate))) for i, e in enumerate(events)]
    expected, _ = expected_flags(lines)
    assert len(expected) >= 10, "the compressed stream still flags clients"
    restarted = killed_mid_stream(kafka_runner, lines, rate, expected)
    got = flags_on_topic(kafka_runner)
    assert set(got) == expected, "flags differ from replay's"
    late = [r for r in dead_letters(kafka_runner) if r["reason"] == "late"]
    assert late == []
    print(f"{len(lines)} live events, {len(expected)} flags; killed mid-stream")
    assert "resumed" in restarted.log(), "the restarted worker took its state from the changelog"


def _users_processed(records: list[tuple[int, int, bytes, bytes | None]]) -> set[str]:
    """The users whose newest record among `records` has detector state and no held event."""
    latest = {key: value for _, _, key, value in records if key.startswith(b"u:")}
    done = set()
    for key, value in latest.items():
        if value is not None:
            state, clock = decode_user(value)
            if state is not None and (clock is None or not clock.buffer):
                done.add(key[2:].decode())
    return done


def _users_written(records: list[tuple[int, int, bytes, bytes | None]]) -> set[str]:
    """The users with a record among changelog `records` (partition, offset, key, value)."""
    return {key[2:].decode() for _, _, key, _ in records if key.startswith(b"u:")}


def test_a_worker_that_cannot_load_its_state_stops_with_the_reason_instead_of_going_silent(
    kafka_runner: KafkaRunnerEnv,
) -> None:
    """A partition whose changelog holds a record of an older build cannot be loaded. aiokafka
    logs a failed partition assignment and goes on, so the worker used to stay up with that
    partition's events fetched and skipped: no flag, no error. It must exit with the reason."""
    from kafka import KafkaProducer

    lines = stream_lines(60, seed=41)
    worker = kafka_runner.start_worker("worker-a")
    kafka_runner.produce(lines)
    wait_for_flags(kafka_runner, expected_flags(lines)[0])
    worker.stop()  # a clean stop writes every partition's state
    partition, _, key, value = next(r for r in state_records(kafka_runner) if r[2][:2] == b"u:")
    assert value is not None and value[0] == USER_RECORD_FORMAT
    producer = KafkaProducer(bootstrap_servers=kafka_runner.bootstrap)
    try:  # the same user's record as an older build wrote it (its first byte is the format)
        old = bytes([USER_RECORD_FORMAT - 1]) + value[1:]
        producer.send(f"app-{kafka_runner.suffix}-user-state", key=key, value=old,
                      partition=partition)  # fmt: skip
        producer.flush()
    finally:
        producer.close()
    restarted = kafka_runner.start_worker("worker-a", wait=False)
    wait_for(lambda: restarted.process.poll() is not None, 90, "the worker to exit")
    assert restarted.process.returncode != 0
    log = restarted.log()
    assert f"user record format {USER_RECORD_FORMAT - 1}, this build reads" in log, log[-3000:]
