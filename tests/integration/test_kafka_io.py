"""`frustration produce`, `frustration flags` and topic creation against a real broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from streams.kafka.io import (
    SIDE_TOPIC_PARTITIONS,
    consume_topic,
    ensure_topics,
    partition_for,
    produce_events,
)
from streams.settings import Settings
from tests.integration.kafka_fixture import create_topic, unique_topic

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
SUMMARY_RE = re.compile(
    r"sent (?P<sent>\d+) events to (?P<topic>\S+) in (?P<seconds>[\d.]+) s \(\d+/s\), "
    r"(?P<unkeyed>\d+) without a user_id key$"
)


@pytest.fixture
def settings(kafka_broker: str) -> Settings:
    """Settings with topics of their own on the shared broker."""
    return Settings().model_copy(
        update={
            "broker": f"kafka://{kafka_broker}",
            "events_topic": unique_topic("events"),
            "flags_topic": unique_topic("flags"),
            "alerts_topic": unique_topic("alerts"),
            "dead_letter_topic": unique_topic("dead"),
            "incidents_topic": unique_topic("incidents"),
            "topic_partitions": PARTITIONS,
            # The workers' by-user topic is named after the app id: one of their own too.
            "worker_app_id": unique_topic("app"),
        }
    )


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for field in (
        "broker",
        "events_topic",
        "flags_topic",
        "alerts_topic",
        "dead_letter_topic",
        "incidents_topic",
        "topic_partitions",
        "worker_app_id",
    ):
        env[f"FRUSTRATION_{field.upper()}"] = str(getattr(settings, field))
    return env


def _frustration(settings: Settings, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=ROOT,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


def _bootstrap(settings: Settings) -> str:
    return settings.broker.removeprefix("kafka://")


def _read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record on the topic, read up to the end offsets it had when called."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        records: list[Any] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in parts):
            assert time.monotonic() < deadline, "topic not read to its end within 60 s"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def _partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(topics)}
    finally:
        admin.close()


def _events(users: int, per_user: int) -> list[bytes]:
    lines = []
    for i in range(per_user):
        for u in range(users):
            event = {"type": "click", "user_id": f"u-{u}", "ts": 1_790_000_000_000 + i * 1000 + u}
            lines.append(orjson.dumps(event))
    return lines


# ----------------------------------------------------------------------------- produce


def test_produce_sends_every_line_unchanged_keyed_on_the_predicted_partition(
    settings: Settings, tmp_path: Path
) -> None:
    good = _events(users=12, per_user=5)
    # Bad lines go too (the worker dead-letters them), just without a key.
    bad = [b"not json", b"[1, 2]", b'{"type": "click", "user_id": 7, "ts": 0}', b'{"type": "x"}']
    # A user_id that is not ASCII is keyed by its UTF-8 bytes.
    accented = '{"type": "click", "user_id": "zoë", "ts": 1790000000000}'.encode()
    path = tmp_path / "events.ndjson"
    body = b"\n".join([*good[:30], *bad, b"", b"   ", accented, *good[30:]]) + b"\n"
    path.write_bytes(body.replace(good[0] + b"\n", good[0] + b"\r\n"))  # CRLF is framing too

    result = _frustration(settings, "produce", str(path))

    assert result.returncode == 0, result.stderr
    summary = SUMMARY_RE.search(result.stderr.strip())
    assert summary, result.stderr
    assert int(summary["sent"]) == len(good) + len(bad) + 1
    assert int(summary["unkeyed"]) == len(bad)
    assert summary["topic"] == settings.events_topic

    records = _read_all(_bootstrap(settings), settings.events_topic)
    assert sorted(r.value for r in records) == sorted([*good, *bad, accented])
    for record in records:
        user_id = orjson.loads(record.value).get("user_id") if record.value[:1] == b"{" else None
        if isinstance(user_id, str):
            assert record.key == user_id.encode()
            assert record.partition == partition_for(record.key, PARTITIONS)
        else:
            assert record.key is None
    # Each user's events stay in file order (one partition per key).
    in_topic = [r.value for r in sorted(records, key=lambda r: (r.partition, r.offset))]
    for u in range(12):
        mine = [line for line in good if orjson.loads(line)["user_id"] == f"u-{u}"]
        assert [v for v in in_topic if v in mine] == mine
    # The keys spread over more than one partition, as partition_for predicts.
    assert len({r.partition for r in records if r.key is not None}) > 1


def test_produce_creates_the_topics_with_the_documented_partitions(settings: Settings) -> None:
    summary = produce_events(settings, iter(_events(users=2, per_user=1)))
    assert summary.sent == 2 and summary.unkeyed == 0 and summary.failed == 0
    counts = _partition_counts(
        _bootstrap(settings),
        [settings.events_topic, settings.flags_topic, settings.alerts_topic],
    )
    assert counts == {
        settings.events_topic: PARTITIONS,
        settings.flags_topic: PARTITIONS,
        settings.alerts_topic: SIDE_TOPIC_PARTITIONS,
    }


def test_produce_rate_paces_the_run(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(_events(users=20, per_user=10)) + b"\n")  # 200 events

    paced = _frustration(settings, "produce", str(path), "--rate", "400")
    unpaced = _frustration(settings, "produce", str(path))

    assert paced.returncode == 0 and unpaced.returncode == 0, paced.stderr + unpaced.stderr
    paced_match = SUMMARY_RE.search(paced.stderr.strip())
    unpaced_match = SUMMARY_RE.search(unpaced.stderr.strip())
    assert paced_match and unpaced_match
    paced_s, unpaced_s = float(paced_match["seconds"]), float(unpaced_match["seconds"])
    # 200 events at 400/s: the last is due 199/400 = 0.4975 s after the first, whatever the load.
    assert paced_s >= 0.45
    assert paced_s > unpaced_s
    assert len(_read_all(_bootstrap(settings), settings.events_topic)) == 400


def test_produce_reports_a_line_too_large_for_kafka_and_sends_the_rest(settings: Settings) -> None:
    huge = b'{"type": "click", "user_id": "u-1", "pad": "' + b"x" * 2_000_000 + b'"}'
    lines = [*_events(users=1, per_user=1), huge, *_events(users=2, per_user=1)]
    summary = produce_events(settings, iter(lines))
    assert (summary.sent, summary.failed) == (3, 1)
    assert "1 NOT delivered" in summary.text()
    assert len(_read_all(_bootstrap(settings), settings.events_topic)) == 3


def test_produce_exits_1_when_a_line_was_not_delivered(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    huge = b'{"type": "click", "user_id": "u-1", "pad": "' + b"x" * 2_000_000 + b'"}'
    path.write_bytes(b"\n".join([huge, *_events(users=1, per_user=1)]) + b"\n")
    result = _frustration(settings, "produce", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().endswith("0 without a user_id key, 1 NOT delivered")


def test_produce_refuses_a_broker_url_it_cannot_use(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(_events(users=1, per_user=1)[0] + b"\n")
    result = _frustration(settings, "produce", str(path), "--broker", "http://kafka:9092")
    assert result.returncode == 1
    assert result.stderr.startswith("ConfigurationError: broker 'http://kafka:9092'")


# ----------------------------------------------------------------------------- topics


def test_ensure_topics_creates_the_documented_partition_counts_and_is_idempotent(
    settings: Settings,
) -> None:
    bootstrap = _bootstrap(settings)
    # One topic already exists with another partition count: it is left alone.
    create_topic(bootstrap, settings.dead_letter_topic, 3)

    ensure_topics(settings)
    ensure_topics(settings)  # a second run (a second worker starting) changes nothing

    topics = [
        settings.events_topic,
        settings.flags_topic,
        settings.alerts_topic,
        settings.dead_letter_topic,
        settings.incidents_topic,
        settings.by_user_topic,
    ]
    assert _partition_counts(bootstrap, topics) == {
        settings.events_topic: PARTITIONS,
        settings.flags_topic: PARTITIONS,
        settings.alerts_topic: SIDE_TOPIC_PARTITIONS,
        settings.dead_letter_topic: 3,
        settings.incidents_topic: SIDE_TOPIC_PARTITIONS,
        settings.by_user_topic: PARTITIONS,
    }


def test_ensure_topics_from_several_processes_at_once(settings: Settings) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ensure_topics(settings)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    counts = _partition_counts(_bootstrap(settings), [settings.events_topic])
    assert counts == {settings.events_topic: PARTITIONS}


# ----------------------------------------------------------------------------- flags


def _put_flags(settings: Settings, flags: list[dict[str, Any]]) -> list[bytes]:
    producer = KafkaProducer(bootstrap_servers=_bootstrap(settings), acks="all")
    try:
        values = [orjson.dumps(flag) for flag in flags]
        for flag, value in zip(flags, values, strict=True):
            producer.send(settings.flags_topic, key=flag["user_id"].encode(), value=value)
        producer.flush(timeout=30)
        return values
    finally:
        producer.close()


def _flags(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {"flag_id": f"flg_{i:04d}", "user_id": f"u-{i % 5}", "severity": "low", "update": 0}
        for i in range(start, start + count)
    ]


def test_flags_prints_exactly_the_messages_on_the_flags_topic(settings: Settings) -> None:
    ensure_topics(settings)
    values = _put_flags(settings, _flags(0, 20))

    result = _frustration(settings, "flags", "--idle-exit", "1")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.encode().splitlines()
    assert sorted(lines) == sorted(values)
    # Within one user (one partition) the order on the topic is kept.
    for u in range(5):
        key = f'"user_id":"u-{u}"'.encode()
        assert [v for v in lines if key in v] == [v for v in values if key in v]


def test_flags_new_only_skips_what_is_already_on_the_topic(settings: Settings) -> None:
    ensure_topics(settings)
    _put_flags(settings, _flags(0, 5))
    result = _frustration(settings, "flags", "--new-only", "--idle-exit", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def _read_lines(stream: Any, into: list[bytes]) -> None:
    for line in iter(stream.readline, b""):
        into.append(line.rstrip(b"\n"))


def test_flags_follow_prints_new_flags_until_interrupted(settings: Settings) -> None:
    ensure_topics(settings)
    before = _put_flags(settings, _flags(0, 3))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "flags", "--follow"],
        cwd=ROOT,
        env=_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[bytes] = []
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: len(lines) >= 3, "the flags already on the topic")
        time.sleep(2.5)  # longer than the default --idle-exit: --follow must not stop
        assert proc.poll() is None
        after = _put_flags(settings, _flags(3, 4))
        _wait_for(lambda: len(lines) >= 7, "the flags sent after the start")
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert b"Traceback" not in stderr
    assert sorted(lines) == sorted(before + after)


def _wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- consume_topic


def test_consume_topic_reads_keys_values_and_headers_and_stops_when_idle(
    kafka_broker: str,
) -> None:
    topic = unique_topic("consume")
    create_topic(kafka_broker, topic, 2)
    producer = KafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    try:
        producer.send(topic, key=b"k1", value=b"v1", headers=[("reason", b"not_json")])
        producer.send(topic, key=None, value=b"v2")
        producer.flush(timeout=30)
    finally:
        producer.close()

    started = time.monotonic()
    messages = list(consume_topic(kafka_broker, topic, idle_exit_s=1.0))
    elapsed = time.monotonic() - started

    assert sorted(messages, key=lambda m: m.value) == [
        (b"k1", b"v1", [("reason", b"not_json")]),
        (None, b"v2", []),
    ]
    assert elapsed >= 1.0  # it waited the idle time out before stopping
    assert list(consume_topic(kafka_broker, topic, from_beginning=False, idle_exit_s=1)) == []


def test_consume_topic_refuses_a_missing_topic(kafka_broker: str) -> None:
    from signals.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="does not exist"):
        list(consume_topic(kafka_broker, unique_topic("missing"), idle_exit_s=1))
