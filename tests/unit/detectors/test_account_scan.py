"""Account scans: one IP trying user names that do not exist is a scanner walking a list, even
when it stays under 15 accounts in 5 minutes; the real account it also tries is not flagged."""

from __future__ import annotations

from detectors.config import DetectionConfig
from detectors.credential_stuffing import CredentialStuffingDetector, SourceState
from signals.flags import SecurityAlert
from tests.unit.builders import (
    MINUTE,
    SECOND,
    alerts_of,
    by_ts,
    failures,
    flags_of,
    login,
    run_engine,
    signals_of,
)

SCANNER = "203.0.113.9"


def alerts_alone(events: list) -> list[SecurityAlert]:
    detector, state = CredentialStuffingDetector(), SourceState()
    out = [detector.learn_one(state, e) for e in events]
    return [a for a in out if a is not None]


def names(start: int, n: int, gap: int, ip: str = SCANNER) -> list:
    return [login(start + i * gap, f"no-such-{i}", ip=ip, reason="invalid_user") for i in range(n)]


def test_five_names_that_do_not_exist_within_5_minutes_are_an_account_scan() -> None:
    events = names(0, 5, 40 * SECOND)
    alerts = alerts_alone(events)
    assert [(a.kind, a.distinct_accounts, a.failures, a.ip) for a in alerts] == [
        ("account_scan", 5, 5, SCANNER)
    ]
    assert alerts[0].ts == events[-1].ts and alerts[0].first_ts == events[0].ts


def test_four_names_or_five_spread_over_more_than_5_minutes_are_not() -> None:
    assert alerts_alone(names(0, 4, 40 * SECOND)) == []
    assert alerts_alone(names(0, 5, 80 * SECOND)) == []


def test_a_person_mistyping_their_own_name_twice_is_not_a_scan() -> None:
    events = [
        login(0, "jon", ip="100.64.0.8", reason="invalid_user"),
        login(20 * SECOND, "jhon", ip="100.64.0.8", reason="invalid_user"),
        *failures(40 * SECOND, 4, 20 * SECOND, user="john", ip="100.64.0.8", irregular=True),
    ]
    assert alerts_alone(events) == []


def test_the_set_of_reasons_for_accounts_that_do_not_exist_is_a_setting() -> None:
    config = DetectionConfig(login_nonexistent_account_reasons=("no_such_account",))
    detector, state = CredentialStuffingDetector(config), SourceState()
    out = [detector.learn_one(state, e) for e in names(0, 6, 10 * SECOND)]
    assert [a for a in out if a is not None] == []  # invalid_user is not one of them here


def test_a_slow_name_walker_retrying_root_at_human_pace_is_never_an_outreach_flag() -> None:
    # As a real scanner did (umm_secure discovery): 3 tries on root per connection, a few names
    # that do not exist between, 8 accounts in 4.5 minutes, 15 never reached.
    events = by_ts(
        [
            *failures(0, 3, 7 * SECOND, user="root", ip=SCANNER, irregular=True),
            *names(30 * SECOND, 3, 9 * SECOND),
            *failures(2 * MINUTE, 3, 6 * SECOND, user="root", ip=SCANNER, irregular=True),
            *[
                login(3 * MINUTE + i * 8 * SECOND, f"list-{i}", ip=SCANNER, reason="invalid_user")
                for i in range(3)
            ],
            *failures(4 * MINUTE, 3, 7 * SECOND, user="root", ip=SCANNER, irregular=True),
        ]
    )
    out = run_engine(events)
    assert flags_of(out) == [] and signals_of(out) == []
    assert [a.kind for a in alerts_of(out)] == ["account_scan"]


def test_a_credential_stuffing_alert_still_comes_when_a_scan_reaches_15_accounts() -> None:
    events = names(0, 16, 10 * SECOND)
    assert [(a.kind, a.distinct_accounts) for a in alerts_alone(events)] == [
        ("account_scan", 5),
        ("credential_stuffing", 15),
    ]


def test_a_late_copy_that_completes_a_scan_raises_the_alert_in_order_processing_would() -> None:
    events = names(0, 5, 40 * SECOND)
    in_order = alerts_alone(events)
    detector, state = CredentialStuffingDetector(), SourceState()
    out = [detector.learn_one(state, e) for e in events[:2] + events[3:]]
    assert [a for a in out if a is not None] == []  # 4 names: not yet
    late = detector.learn_late(state, events[2])
    assert late == in_order[0]
    assert detector.is_attack(state, events[0].ts)
    assert detector.learn_late(state, events[2]) is None  # a repeated copy alerts no more


def test_a_failure_arriving_after_the_scan_was_alerted_gives_the_in_order_alert_not_another() -> (
    None
):
    """The Kafka rebalance case: the scan's 4th name (another client, or a copy from a partition
    running behind) arrives after the 5th and 6th. In order the alert is raised at the 5th name,
    with the IP's first failure in that window; out of order the 6th completed the rule first.
    The held alert is replaced by the in-order one: the same alert as a replay, only one."""
    real = [login(0, "alice", ip=SCANNER), login(5 * SECOND, "alice", ip=SCANNER)]
    # the 5th name is at 290 s: alice's failures are in its window
    scan = names(90 * SECOND, 6, 50 * SECOND)
    in_order = by_ts(real + scan)
    arrived = [*real, *scan[:3], scan[4], scan[5], scan[3]]
    expected = alerts_of(run_engine(in_order))
    assert [(a.kind, a.ts, a.first_ts) for a in expected] == [
        ("account_scan", scan[4].ts, real[0].ts)
    ]
    assert alerts_of(run_engine(arrived)) == expected


def test_a_revision_that_comes_after_the_hold_is_counted_and_not_sent_twice() -> None:
    from detectors.engine import DetectionEngine

    real = [login(0, "alice", ip=SCANNER), login(5 * SECOND, "alice", ip=SCANNER)]
    scan = names(90 * SECOND, 6, 50 * SECOND)
    engine = DetectionEngine(DetectionConfig(source_alert_hold_ms=1_000))
    for event in [*real, *scan[:3], scan[4], scan[5]]:
        engine.push(event)
    engine.push(login(342 * SECOND, "bob", ip=SCANNER))  # the IP's time passes the hold
    engine.push(scan[3])
    engine.flush()
    assert len(alerts_of(engine.drain())) == 1
    assert engine.stats.alerts_revised_too_late == 1
