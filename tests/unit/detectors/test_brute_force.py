"""Brute force: one IP hammering one account beyond a person's pace or volume is a security alert
of its own kind and never an outreach flag; a person locked out at human pace still flags."""

from __future__ import annotations

from detectors.brute_force import BruteForceDetector, BruteForceState
from detectors.config import DetectionConfig
from detectors.engine import DetectionEngine
from signals.flags import SecurityAlert
from tests.unit.builders import (
    MINUTE,
    SECOND,
    T0,
    alerts_of,
    by_ts,
    failures,
    flags_of,
    login,
    run_engine,
    signals_of,
)

SCANNER = "203.0.113.7"


def alerts_alone(events: list, config: DetectionConfig | None = None) -> list[SecurityAlert]:
    detector, state = BruteForceDetector(config), BruteForceState()
    out = [detector.learn_one(state, e) for e in events]
    return [a for a in out if a is not None]


# -- volume ---------------------------------------------------------------------------------------
def test_20_failures_of_one_account_within_5_minutes_at_human_pace_are_brute_force() -> None:
    events = failures(0, 20, 12 * SECOND, user="root", ip=SCANNER, irregular=True)  # 3 min 51 s
    alerts = alerts_alone(events)
    assert [(a.kind, a.rule, a.failures, a.ip, a.distinct_accounts) for a in alerts] == [
        ("brute_force", "volume", 20, SCANNER, 1)
    ]
    assert alerts[0].ts == events[-1].ts and alerts[0].first_ts == events[0].ts


def test_19_failures_or_20_spread_over_more_than_5_minutes_are_not() -> None:
    assert alerts_alone(failures(0, 19, 12 * SECOND, user="root", ip=SCANNER, irregular=True)) == []
    assert alerts_alone(failures(0, 20, 16 * SECOND, user="root", ip=SCANNER, irregular=True)) == []


def test_volume_counts_one_account_so_a_busy_office_nat_is_not_brute_force() -> None:
    # 30 colleagues behind one address, each mistyping once or twice: 45 failures, no attack.
    events = by_ts(
        [login(i * 6 * SECOND, f"colleague-{i}", ip="100.64.1.1") for i in range(30)]
        + [login(i * 6 * SECOND + 8 * SECOND, f"colleague-{i}", ip="100.64.1.1") for i in range(15)]
    )
    assert [a for a in alerts_alone(events) if a.kind == "brute_force"] == []


# -- pace -----------------------------------------------------------------------------------------
def test_five_attempts_2_seconds_apart_are_a_machine_rhythm() -> None:
    alerts = alerts_alone(failures(0, 5, 2 * SECOND, user="root", ip=SCANNER))
    assert [(a.rule, a.failures) for a in alerts] == [("pace", 5)]


def test_a_median_gap_of_3_seconds_is_human_pace_and_4_attempts_too_few_to_judge() -> None:
    # gaps of 3.75 and 2.25 s: a median of 3 s, and uneven
    assert alerts_alone(failures(0, 8, 3 * SECOND, user="root", ip=SCANNER, irregular=True)) == []
    assert alerts_alone(failures(0, 4, 2 * SECOND, user="root", ip=SCANNER)) == []


def test_double_submits_do_not_make_a_person_look_like_a_machine() -> None:
    events = [
        e
        for k in range(6)
        for e in (
            login(k * 8 * SECOND + (k % 2) * 2 * SECOND, ip="100.64.0.5"),
            login(k * 8 * SECOND + (k % 2) * 2 * SECOND + 300, ip="100.64.0.5"),
        )
    ]
    assert alerts_alone(events) == []


# -- rhythm ---------------------------------------------------------------------------------------
def test_six_attempts_exactly_3_seconds_apart_are_a_timer_not_a_person() -> None:
    # A real sshd scanner on `root` (umm_secure cscirepo): every 3.0 s, just outside the pace rule.
    alerts = alerts_alone(failures(0, 6, 3 * SECOND, user="root", ip=SCANNER))
    assert [(a.rule, a.failures) for a in alerts] == [("rhythm", 6)]


def test_an_even_rhythm_at_a_slow_pace_is_a_timer_too_but_five_attempts_are_too_few() -> None:
    assert [a.rule for a in alerts_alone(failures(0, 6, 40 * SECOND, user="root", ip=SCANNER))] == [
        "rhythm"
    ]
    assert alerts_alone(failures(0, 5, 40 * SECOND, user="root", ip=SCANNER)) == []


def test_gaps_uneven_by_more_than_a_second_are_a_person() -> None:
    # 15 s +- 1.25 s: as regular as a person retyping gets, and still not a timer
    gaps = [15_000, 16_250, 13_750, 15_000, 16_250, 13_750, 15_000]
    times = [sum(gaps[:i]) for i in range(len(gaps) + 1)]
    assert alerts_alone([login(t, "me", ip="100.64.0.8") for t in times]) == []


# -- parallel -------------------------------------------------------------------------------------
def test_four_failures_within_one_second_are_parallel_connections() -> None:
    events = [login(k * 200, "root", ip=SCANNER) for k in range(4)]
    assert [(a.rule, a.failures) for a in alerts_alone(events)] == [("parallel", 4)]


def test_a_triple_submit_is_not_parallel() -> None:
    assert alerts_alone([login(k * 300, "root", ip=SCANNER) for k in range(3)]) == []


# -- one alert per attack, and the IP stays marked ------------------------------------------------
def test_one_alert_per_attack_and_a_new_one_after_the_hold() -> None:
    first = failures(0, 60, 2 * SECOND, user="root", ip=SCANNER)
    again = failures(3 * 60 * MINUTE, 6, 2 * SECOND, user="root", ip=SCANNER)
    alerts = alerts_alone(first + again)
    assert len(alerts) == 2
    assert alerts[1].first_ts == again[0].ts
    assert alerts[0].alert_id != alerts[1].alert_id


def test_verdict_marks_the_ip_from_the_hammered_accounts_first_failure_for_an_hour() -> None:
    detector, state = BruteForceDetector(), BruteForceState()
    events = failures(MINUTE, 6, 2 * SECOND, user="root", ip=SCANNER)
    for e in events:
        detector.learn_one(state, e)
    assert not detector.verdict(state, T0, T0 + 10 * MINUTE).attack  # before the attack began
    assert detector.verdict(state, events[0].ts, events[-1].ts).attack
    assert detector.verdict(state, events[-1].ts + 59 * MINUTE).attack
    assert not detector.verdict(state, events[-1].ts + 61 * MINUTE).attack


def test_an_ip_with_10_failures_on_one_account_is_undecided_for_its_window() -> None:
    detector, state = BruteForceDetector(), BruteForceState()
    events = failures(0, 10, 20 * SECOND, user="root", ip=SCANNER, irregular=True)
    for e in events:
        detector.learn_one(state, e)
    verdict = detector.verdict(state, events[-1].ts, events[-1].ts + MINUTE)
    assert not verdict.attack and verdict.decided_at == events[-1].ts + 5 * MINUTE
    assert detector.verdict(state, events[-1].ts, events[-1].ts + 5 * MINUTE).decided_at == (
        events[-1].ts
    )


# -- through the engine ---------------------------------------------------------------------------
def test_a_brute_forced_account_is_never_an_outreach_flag_but_a_brute_force_alert() -> None:
    out = run_engine(failures(0, 131, 2 * SECOND, user="root", ip=SCANNER))
    assert flags_of(out) == [] and signals_of(out) == []
    alerts = alerts_of(out)
    assert [(a.kind, a.ip) for a in alerts] == [("brute_force", SCANNER)]


def test_a_person_locked_out_at_human_pace_from_their_own_ip_still_flags() -> None:
    events = failures(
        0, 6, 15 * SECOND, user="me", ip="100.64.0.8", device_id="d-me", irregular=True
    )
    out = run_engine(events)
    assert [f.user_id for f in flags_of(out)] == ["me"]
    assert alerts_of(out) == []


def test_a_slow_attacker_reaching_20_failures_within_its_window_takes_the_early_ones_too() -> None:
    # About 11 s apart: the first five look like a person; the 10th, before the account is judged,
    # makes the IP undecided, and the 20th, 3.5 min in, shows it is not a person. The account's
    # judgement waits for the IP's window, so no flag ever goes out.
    out = run_engine(failures(0, 20, 11 * SECOND, user="root", ip=SCANNER, irregular=True))
    assert flags_of(out) == [] and signals_of(out) == []
    assert [a.rule for a in alerts_of(out)] == ["volume"]


def test_a_person_on_another_ip_is_flagged_while_a_scanner_hammers_another_account() -> None:
    scanner = failures(0, 40, 2 * SECOND, user="root", ip=SCANNER)
    me = failures(10 * SECOND, 5, 20 * SECOND, user="me", ip="100.64.0.8")
    out = run_engine(by_ts(scanner + me))
    assert [f.user_id for f in flags_of(out)] == ["me"]
    assert [a.kind for a in alerts_of(out)] == ["brute_force"]


def test_a_held_alert_is_raised_when_event_time_is_advanced_without_an_event() -> None:
    # A Kafka worker whose partition went idle advances event time instead of flushing: the
    # alert held for its IP's window must come out then, as at the end of a replay.
    engine = DetectionEngine()
    events = failures(0, 131, 2 * SECOND, user="root", ip=SCANNER)
    for event in events:
        engine.push(event)
    assert alerts_of(engine.drain()) == []  # held a window of its IP's time
    engine.advance_watermark(events[-1].ts + 10 * MINUTE)
    assert [(a.kind, a.ip) for a in alerts_of(engine.drain())] == [("brute_force", SCANNER)]
