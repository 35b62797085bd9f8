"""The Kafka runner's split of users over partitions, one engine per partition, must give exactly
what one engine gives over the whole stream: flags, alerts and late events (no Kafka here; the
integration tests check the same through a real broker)."""

from __future__ import annotations

import zlib

import pytest

from detectors.engine import DetectionEngine, Output
from signals.wire import AnyEvent, parse_event_object
from streams.kafka.partitions import destinations
from streams.lab.simulator import Simulator
from tests.unit.builders import (
    MINUTE,
    SECOND,
    alerts_of,
    by_ts,
    failures,
    flags_of,
    jittered,
    late_of,
    login,
    mixed_stream,
    with_id,
)


def crc_partition(user_id: str, partitions: int) -> int:
    return zlib.crc32(user_id.encode()) % partitions


def one_engine(events: list[AnyEvent]) -> list[Output]:
    engine = DetectionEngine()
    for event in events:
        engine.push(event)
    engine.flush()
    return engine.drain()


def partition_engines(partitions: int) -> list[DetectionEngine]:
    """As the worker builds them: the IP's own partition raises its alerts."""
    return [
        DetectionEngine(alerts_for=lambda ip, p=p: crc_partition(ip, partitions) == p)
        for p in range(partitions)
    ]


def partitioned(events: list[AnyEvent], partitions: int) -> list[Output]:
    engines = partition_engines(partitions)
    for event in events:
        for p, source_only in destinations(event, partitions, crc_partition):
            engines[p].push(event, source_only=source_only)
    out: list[Output] = []
    for engine in engines:
        engine.flush()
        out += engine.drain()
    return out


def summary(outputs: list[Output]) -> tuple[set[tuple[str, int, str, str]], set[str], int]:
    flags = {(f.flag_id, f.update, f.severity, f.reason) for f in flags_of(outputs)}
    alerts = {a.alert_id for a in alerts_of(outputs)}
    return flags, alerts, len(late_of(outputs))


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_partitioned_engines_match_one_engine_on_a_simulated_stream(partitions: int) -> None:
    stream = Simulator(400, seed=21, duration_ms=2_400_000).run()
    events = [parse_event_object(e) for e in stream.events]
    expected = summary(one_engine(events))
    flags, alerts, _ = expected
    assert len(flags) >= 10 and alerts, "the stream should flag users and catch the stuffing"
    got = partitioned(events, partitions)
    assert summary(got) == expected
    assert len(alerts_of(got)) == len(alerts), "each alert raised once"


def test_an_attack_split_over_partitions_is_still_caught_thanks_to_the_copies() -> None:
    events = jittered(mixed_stream(), seed=4)
    expected = summary(one_engine(events))
    got = summary(partitioned(events, 8))
    assert got == expected
    assert got[1], "the attack is caught"
    # Without the copies each partition sees 2 of the 16 accounts and cannot judge the IP.
    lone = [DetectionEngine() for _ in range(8)]
    for event in events:
        lone[crc_partition(event.user_id, 8)].push(event)
    lone_alerts = set()
    for engine in lone:
        engine.flush()
        lone_alerts |= {a.alert_id for a in alerts_of(engine.drain())}
    assert not lone_alerts, "one partition alone sees too little of the attack"


def test_copies_from_a_partition_running_behind_still_protect_the_victims() -> None:
    """Copies arriving behind the partition's own events, beyond the allowed lateness (here
    about 8 s of event time: another worker's router lagging) are added to the IP's window out of
    order, so the victims are still left out and no flag differs from one engine's. The limit:
    a copy later than the login confirmation wait (60 s) comes after the victim was judged."""
    stream = Simulator(400, seed=21, duration_ms=2_400_000).run()
    events = [parse_event_object(e) for e in stream.events]
    expected_flags, expected_alerts, _ = summary(one_engine(events))
    engines = partition_engines(4)
    lagging: list[tuple[int, AnyEvent]] = []
    for i, event in enumerate(events):
        for p, source_only in destinations(event, 4, crc_partition):
            if source_only:
                lagging.append((p, event))
            else:
                engines[p].push(event)
        if i % 60 == 59:  # the lagging router catches up in bursts
            for p, copy in lagging:
                engines[p].push(copy, source_only=True)
            lagging.clear()
    for p, copy in lagging:
        engines[p].push(copy, source_only=True)
    out: list[Output] = []
    for engine in engines:
        engine.flush()
        out += engine.drain()
    assert sum(e.stats.source_copies_late for e in engines) > 0, "the copies did come late"
    flags, alerts, _ = summary(out)
    assert flags == expected_flags
    assert alerts == expected_alerts, "the alert too, raised late by the copies when needed"
    assert len(alerts_of(out)) == len(expected_alerts), "and raised once"


def _with_ids(events: list[AnyEvent], prefix: str) -> list[AnyEvent]:
    return [with_id(e, f"{prefix}-{i:05d}") for i, e in enumerate(by_ts(events))]


def brute_force_stream() -> list[AnyEvent]:
    """Two scanners on root (one at machine pace, one slow but 25 times), a person locked out on
    another IP, and the root holder's own failures later while root is still under attack."""
    events: list[AnyEvent] = [
        *failures(0, 40, 2 * SECOND, user="root", ip="203.0.113.7"),
        *failures(10 * MINUTE, 25, 9 * SECOND, user="admin", ip="203.0.113.8", irregular=True),
        *failures(20 * MINUTE, 6, 15 * SECOND, user="root", ip="203.0.113.9", irregular=True),
        *failures(30 * SECOND, 6, 20 * SECOND, user="locked", ip="100.64.0.8", irregular=True),
    ]
    events += [login(k * 7 * SECOND, f"user-{k}", ip=f"100.65.0.{k}") for k in range(30)]
    return _with_ids(events, "bf")


def botnet_stream() -> list[AnyEvent]:
    """Ordinary typos for 20 minutes, then 300 IPs failing for one or two accounts each, real
    accounts among them tried from 6 IPs; and a person locked out meanwhile."""
    events: list[AnyEvent] = [
        login(m * MINUTE + k * 13 * SECOND, f"typo-{m}-{k}", ip=f"100.64.{m}.{k + 1}")
        for m in range(30)
        for k in range(3)
    ]
    for i in range(300):
        ip = f"198.18.{i // 200}.{i % 200 + 1}"
        events.append(login(20 * MINUTE + i * 1_500, f"leaked-{i}", ip=ip, reason="invalid_user"))
        if i % 2:
            events.append(login(20 * MINUTE + i * 1_500 + 700, f"leaked-b{i}", ip=ip))
    for j in range(20):
        for k in range(6):
            ip = f"198.19.{j}.{k + 1}"
            events.append(login(21 * MINUTE + j * SECOND + k * 20 * SECOND, f"client-{j}", ip=ip))
            events.append(login(22 * MINUTE + j * SECOND + k * SECOND, f"other-{j}-{k}", ip=ip))
    events += failures(22 * MINUTE, 6, 20 * SECOND, user="locked", ip="100.70.0.7", irregular=True)
    return _with_ids(events, "bot")


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_brute_force_gives_the_same_alerts_and_flags_with_any_number_of_partitions(
    partitions: int,
) -> None:
    events = jittered(brute_force_stream(), seed=5)
    expected = summary(one_engine(events))
    flags, alerts, _ = expected
    assert len(alerts) == 2, "both scanners are caught"
    assert [f[0] for f in flags] and len(flags) == 1, "only the person locked out is flagged"
    got = partitioned(events, partitions)
    assert summary(got) == expected
    assert len(alerts_of(got)) == 2, "each alert raised once"
    assert {f.user_id for f in flags_of(got)} == {"locked"}


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_a_botnet_gives_the_same_alert_and_flags_with_any_number_of_partitions(
    partitions: int,
) -> None:
    events = jittered(botnet_stream(), seed=6)
    expected = summary(one_engine(events))
    got = partitioned(events, partitions)
    assert summary(got) == expected
    assert [a.kind for a in alerts_of(got)] == ["distributed_stuffing"], "raised once"
    assert {f.user_id for f in flags_of(got)} == {"locked"}, "no botnet victim is flagged"


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_an_account_scan_gives_the_same_alerts_and_flags_with_any_number_of_partitions(
    partitions: int,
) -> None:
    scanner = "203.0.113.9"
    events: list[AnyEvent] = [
        login(k * 40 * SECOND, f"no-such-{k}", ip=scanner, reason="invalid_user") for k in range(7)
    ]
    events += failures(10 * SECOND, 6, 20 * SECOND, user="root", ip=scanner, irregular=True)
    events += failures(MINUTE, 6, 20 * SECOND, user="locked", ip="100.64.0.8", irregular=True)
    events = jittered(_with_ids(events, "scan"), seed=5)
    expected = summary(one_engine(events))
    flags, alerts, _ = expected
    assert {f[0] for f in flags} and len(alerts) == 1, "locked is flagged, the scan alerted"
    assert summary(partitioned(events, partitions)) == expected
