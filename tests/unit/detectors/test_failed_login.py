"""Repeated failed logins and credential stuffing: what must flag, what must not, boundaries."""

from __future__ import annotations

from collections.abc import Iterable

from detectors.config import DetectionConfig
from detectors.credential_stuffing import CredentialStuffingDetector, SourceState
from detectors.engine import DetectionEngine
from detectors.failed_login import FailedLoginDetector, FailedLoginState
from signals.events import LoginEvent
from signals.flags import FailedLoginEvidence, Signal
from tests.unit.builders import (
    MINUTE,
    SECOND,
    T0,
    alerts_of,
    by_ts,
    click,
    failures,
    flags_of,
    login,
    run_engine,
    signals_of,
)

ATTACKER = "198.51.100.23"


def login_signals(events: Iterable[LoginEvent], config: DetectionConfig | None = None) -> list:
    """The failed-login detector alone, driven like the engine drives it (deadlines fire before
    the first later event, and at the end)."""
    detector = FailedLoginDetector(config)
    state = FailedLoginState()
    out: list[Signal] = []
    for event in events:
        while state.deadline is not None and state.deadline < event.ts:
            signal = detector.advance(state, state.deadline + 1)
            if signal is not None:
                out.append(signal)
        detector.learn_one(state, event)
    while state.deadline is not None:
        signal = detector.advance(state, state.deadline + 1)
        if signal is not None:
            out.append(signal)
    return out


def evidence(signal: Signal) -> FailedLoginEvidence:
    assert isinstance(signal.evidence, FailedLoginEvidence)
    return signal.evidence


# -- must flag ------------------------------------------------------------------------------------
def test_five_failures_at_human_pace_with_no_success_signal_60s_after_the_fifth() -> None:
    events = failures(0, 5, 20 * SECOND)
    signals = login_signals(events)
    assert len(signals) == 1
    signal = signals[0]
    assert signal.kind == "failed_logins"
    assert signal.ts == events[4].ts + 60_000
    assert signal.strength == 1.0
    ev = evidence(signal)
    assert ev.failures == 5
    assert ev.span_ms == 80 * SECOND
    assert ev.waited_for_success_ms == 60_000
    assert ev.last_reason == "bad_password"


def test_no_signal_until_the_confirmation_minute_has_passed() -> None:
    detector, state = FailedLoginDetector(), FailedLoginState()
    events = failures(0, 5, 20 * SECOND)
    for event in events:
        detector.learn_one(state, event)
    fifth = events[-1].ts
    assert detector.advance(state, fifth + 59_999) is None
    assert detector.advance(state, fifth + 60_000) is None
    signal = detector.advance(state, fifth + 60_001)
    assert signal is not None and signal.ts == fifth + 60_000


def test_lockout_flags_through_the_engine_with_flag_ts_at_the_deadline() -> None:
    events = failures(0, 5, 20 * SECOND)
    out = run_engine(events)
    flags = flags_of(out)
    assert len(flags) == 1
    assert flags[0].ts == events[-1].ts + 60_000
    assert flags[0].model_dump(mode="json")["ts"] == "2026-11-21T10:02:20.000Z"
    assert [s.kind for s in flags[0].signals] == ["failed_logins"]


def test_lockout_flag_comes_once_a_later_event_is_processed_without_flush() -> None:
    # In the client's own event time: its own later events move it (another client's do not).
    engine = DetectionEngine(DetectionConfig(allowed_lateness_ms=5_000))
    for event in failures(0, 5, 20 * SECOND):
        engine.push(event)
    deadline = T0 + 80 * SECOND + 60_000
    engine.push(click(deadline - T0))  # at the deadline: a success could be
    engine.push(click(deadline - T0 + 5_000))  # the client's time reaches the deadline, not past
    assert flags_of(engine.drain()) == []
    engine.push(click(deadline - T0 + 5_001))  # past it: everything up to the deadline is in
    flags = flags_of(engine.drain())
    assert len(flags) == 1 and flags[0].ts == deadline


def test_lockout_flag_comes_when_the_watermark_is_advanced_while_input_is_quiet() -> None:
    # streams.embedded.runner advances event time when input goes quiet "so buffered events and
    # pending timers do not wait for more traffic": the confirmation timer must fire then.
    engine = DetectionEngine()
    for event in failures(0, 5, 20 * SECOND):
        engine.push(event)
    deadline = T0 + 80 * SECOND + 60_000
    engine.advance_watermark(deadline + 10 * MINUTE)
    flags = flags_of(engine.drain())
    assert len(flags) == 1
    assert flags[0].ts == deadline


def test_more_failures_give_a_stronger_signal() -> None:
    signals = login_signals(failures(0, 8, 10 * SECOND))
    assert len(signals) == 1
    assert evidence(signals[0]).failures == 8
    assert signals[0].strength == 1.6


def test_five_failures_within_10_minutes_flag() -> None:
    # 5 attempts spanning 9 min 40 s
    assert len(login_signals(failures(0, 5, 145 * SECOND))) == 1


def test_double_submits_count_once_each_but_five_attempts_still_flag() -> None:
    events = [
        e
        for k in range(5)
        for e in (login(k * 20 * SECOND), login(k * 20 * SECOND + 400))  # double submit
    ]
    signals = login_signals(events)
    assert len(signals) == 1
    assert evidence(signals[0]).failures == 5


def test_failures_from_several_ips_and_devices_are_counted_in_evidence() -> None:
    events = [
        login(i * 20 * SECOND, ip=f"100.64.0.{i % 2}", device_id=f"d{i % 3}") for i in range(5)
    ]
    ev = evidence(login_signals(events)[0])
    assert (ev.distinct_ips, ev.distinct_devices) == (2, 3)


# -- must not flag --------------------------------------------------------------------------------
def test_a_couple_of_failures_then_success_do_not_flag() -> None:
    events = [*failures(0, 2, 8 * SECOND), login(20 * SECOND, outcome="success")]
    assert login_signals(events) == []
    assert run_engine(events) == []


def test_four_failures_then_success_do_not_flag() -> None:
    events = [*failures(0, 4, 15 * SECOND), login(70 * SECOND, outcome="success")]
    assert login_signals(events) == []


def test_success_within_60s_after_the_fifth_failure_clears_it() -> None:
    events = failures(0, 5, 20 * SECOND)
    for after in (1 * SECOND, 30 * SECOND, 59 * SECOND, 60 * SECOND):
        stream = [*events, login(events[-1].ts - T0 + after, outcome="success")]
        assert login_signals(stream) == [], after
        assert signals_of(run_engine(stream)) == [], after


def test_success_after_the_confirmation_minute_does_not_undo_the_signal() -> None:
    events = failures(0, 5, 20 * SECOND)
    stream = [*events, login(events[-1].ts - T0 + 61 * SECOND, outcome="success")]
    assert len(login_signals(stream)) == 1
    assert len(flags_of(run_engine(stream))) == 1


def test_failures_under_1s_apart_count_as_one_attempt() -> None:
    events = failures(0, 10, 500)
    assert login_signals(events) == []
    assert run_engine(events) == []


def test_failures_999ms_apart_are_one_attempt_and_1000ms_apart_are_separate() -> None:
    assert login_signals(failures(0, 5, 999)) == []
    signals = login_signals(failures(0, 5, 1_000))
    assert [evidence(s).failures for s in signals] == [5]


def test_scripted_failures_500ms_apart_never_flag_however_many() -> None:
    assert run_engine(failures(0, 200, 500)) == []


def test_five_failures_spread_over_more_than_10_minutes_do_not_flag() -> None:
    events = failures(0, 5, 3 * MINUTE)  # first and fifth 12 min apart
    signals = login_signals(events)
    assert all(s.strength < 1.0 for s in signals)
    assert flags_of(run_engine(events)) == []


def test_three_or_four_failures_then_five_quiet_minutes_are_a_weak_signal() -> None:
    for n in (3, 4):
        events = failures(0, n, 15 * SECOND)
        signals = login_signals(events)
        assert len(signals) == 1
        assert signals[0].strength == 0.5
        assert signals[0].ts == events[-1].ts + 300_000
        assert evidence(signals[0]).failures == n
        out = run_engine(events)
        assert len(signals_of(out)) == 1
        assert flags_of(out) == []  # weak alone never flags


def test_three_failures_then_another_try_within_5_minutes_are_not_yet_weak() -> None:
    events = [*failures(0, 3, 15 * SECOND), login(4 * MINUTE, outcome="success")]
    assert login_signals(events) == []


def test_one_or_two_failures_then_quiet_make_no_signal() -> None:
    assert login_signals(failures(0, 1, 1)) == []
    assert login_signals(failures(0, 2, 10 * SECOND)) == []


def test_other_accounts_failures_do_not_add_up() -> None:
    events = [login(i * 20 * SECOND, user=f"u{i}") for i in range(10)]
    assert run_engine(events) == []


# -- credential stuffing --------------------------------------------------------------------------
def stuffing(start: int, accounts: int, gap: int, prefix: str = "victim") -> list[LoginEvent]:
    return [login(start + i * gap, user=f"{prefix}-{i:02d}", ip=ATTACKER) for i in range(accounts)]


def test_one_ip_failing_for_15_accounts_within_5_minutes_is_a_security_alert() -> None:
    events = stuffing(0, 15, 10 * SECOND)
    out = run_engine(events)
    alerts = alerts_of(out)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.kind == "credential_stuffing"
    assert alert.ip == ATTACKER
    assert alert.distinct_accounts == 15
    assert alert.ts == events[-1].ts
    assert alert.first_ts == events[0].ts
    assert flags_of(out) == []


def test_14_accounts_are_no_attack() -> None:
    assert alerts_of(run_engine(stuffing(0, 14, 10 * SECOND))) == []


def test_15_accounts_over_more_than_5_minutes_are_no_attack() -> None:
    assert alerts_of(run_engine(stuffing(0, 15, 22 * SECOND))) == []  # 5 min 8 s


def test_the_detector_alone_alerts_once_per_attack() -> None:
    detector, state = CredentialStuffingDetector(), SourceState()
    alerts = [detector.learn_one(state, e) for e in stuffing(0, 40, 2 * SECOND)]
    assert sum(a is not None for a in alerts) == 1
    assert detector.is_attack(state, T0 + 80 * SECOND)


def test_victims_with_five_human_pace_failures_after_the_ip_is_an_attacker_are_not_flagged() -> (
    None
):
    events = stuffing(0, 15, 3 * SECOND)
    victim = [login(60 * SECOND + k * 15 * SECOND, "target", ip=ATTACKER) for k in range(6)]
    out = run_engine(by_ts(events + victim))
    assert len(alerts_of(out)) == 1
    assert flags_of(out) == []
    assert signals_of(out) == []


def test_first_victim_failing_before_the_ip_reaches_15_accounts_is_never_flagged() -> None:
    # The first account gets five tries at human pace, all before any other account; the attack
    # then goes on one account every 15 s, and reaches 15 accounts 4 min after it began.
    first = [login(k * 10 * SECOND, "victim-first", ip=ATTACKER) for k in range(5)]
    rest = stuffing(45 * SECOND, 14, 15 * SECOND)
    assert rest[-1].ts - first[0].ts < 5 * MINUTE
    out = run_engine(by_ts(first + rest))
    assert len(alerts_of(out)) == 1
    assert flags_of(out) == []


def test_early_victims_of_a_slow_attack_are_not_flagged_even_with_no_events_after_it() -> None:
    # The attack reaches 15 accounts 4 min 50 s after it started; nothing comes after it.
    early = [login(k * 12 * SECOND, f"early-{k}", ip=ATTACKER) for k in range(3)]
    early_retries = [
        login(3 * 12 * SECOND + j * 20 * SECOND + k * 3 * SECOND, f"early-{k}", ip=ATTACKER)
        for j in range(4)
        for k in range(3)
    ]
    rest = stuffing(4 * MINUTE, 12, 4 * SECOND, prefix="late")
    stream = by_ts(early + early_retries + rest)
    assert stream[-1].ts - stream[0].ts < 5 * MINUTE
    out = run_engine(stream)
    assert len(alerts_of(out)) == 1
    assert flags_of(out) == []


def test_a_genuine_lockout_on_another_ip_during_an_attack_is_still_flagged() -> None:
    events = stuffing(0, 20, 5 * SECOND)
    honest = failures(10 * SECOND, 5, 20 * SECOND, user="honest", ip="100.64.7.7")
    flags = flags_of(run_engine(by_ts(events + honest)))
    assert [f.user_id for f in flags] == ["honest"]


def test_lockout_from_an_ip_shared_by_3_accounts_that_is_no_attack_is_flagged_later() -> None:
    # An office NAT: two colleagues fail once each; the judgement waits for the stuffing window.
    colleagues = [login(5 * SECOND, "colleague-a", ip="100.64.1.1"),
                  login(6 * SECOND, "colleague-b", ip="100.64.1.1")]  # fmt: skip
    mine = failures(0, 5, 20 * SECOND, user="me", ip="100.64.1.1")
    out = run_engine(by_ts(colleagues + mine))
    flags = flags_of(out)
    assert [f.user_id for f in flags] == ["me"]
    assert alerts_of(out) == []
    assert flags[0].ts >= mine[-1].ts + 60_000


def test_an_attacker_ip_stays_marked_for_the_hold_time() -> None:
    events = stuffing(0, 15, 5 * SECOND)
    later = failures(30 * MINUTE, 6, 20 * SECOND, user="later-victim", ip=ATTACKER)
    out = run_engine(by_ts(events + later))
    assert flags_of(out) == []


# -- issue 11: accounts that do not exist, every undecided source, accounts under attack ----------
def test_failures_for_an_account_that_does_not_exist_never_count() -> None:
    events = failures(0, 12, 5 * SECOND, user="admin", reason="invalid_user", ip="100.64.3.3")
    assert signals_of(run_engine(events)) == []
    unknown = failures(0, 6, 20 * SECOND, user="nobody", reason="unknown_user")
    assert login_signals(unknown) == []


def test_the_nonexistent_account_reasons_are_a_setting() -> None:
    events = failures(0, 6, 20 * SECOND, user="admin", reason="invalid_user")
    config = DetectionConfig(login_nonexistent_account_reasons=("no_such_login",))
    assert len(login_signals(events, config)) == 1


def test_a_real_accounts_failures_still_count_beside_nonexistent_ones() -> None:
    events = failures(0, 5, 20 * SECOND, reason="bad_password") + failures(
        7 * SECOND, 5, 20 * SECOND, reason="invalid_user"
    )
    signals = login_signals(by_ts(events))
    assert len(signals) == 1 and evidence(signals[0]).failures == 5


def test_the_judgement_waits_for_every_undecided_source_not_only_the_first() -> None:
    # "shared" fails twice from a suspect NAT address (3 accounts: undecided until 5 min), then
    # three times from a second IP that is clean at the first deadline (200 s) but, by the time
    # the first IP is decided (300 s), has failed for 10 accounts, and reaches 15 at 340 s: an
    # attack whose window holds its failures on "shared". Those must not count (the old rule
    # waited once, for the first undecided IP, and flagged "shared").
    first_ip, second_ip = "100.64.9.1", "100.64.9.2"
    nat = [login(5 * SECOND, "other-a0", ip=first_ip), login(6 * SECOND, "other-a1", ip=first_ip)]
    mine_first = failures(0, 2, 20 * SECOND, user="shared", ip=first_ip)
    mine_second = failures(100 * SECOND, 3, 20 * SECOND, user="shared", ip=second_ip)
    attack = [login(210 * SECOND + k * 10 * SECOND, f"other-b{k}", ip=second_ip) for k in range(14)]
    out = run_engine(by_ts(nat + mine_first + mine_second + attack))
    alerts = alerts_of(out)
    assert [(a.kind, a.ip, a.first_ts) for a in alerts] == [
        ("credential_stuffing", second_ip, T0 + 100 * SECOND)
    ]
    assert flags_of(out) == [] and signals_of(out) == []


def test_the_longest_wait_is_the_stuffing_window_after_the_last_attempt() -> None:
    # A NAT address with two colleagues failing: "me" is judged 5 min after my last failure.
    colleagues = [login(5 * SECOND, "colleague-a", ip="100.64.1.1"),
                  login(6 * SECOND, "colleague-b", ip="100.64.1.1")]  # fmt: skip
    mine = failures(0, 5, 20 * SECOND, user="me", ip="100.64.1.1")
    flags = flags_of(run_engine(by_ts(colleagues + mine)))
    assert [f.ts for f in flags] == [mine[-1].ts + 5 * MINUTE]


def test_an_account_under_attack_is_not_flagged_for_failures_from_other_scanners() -> None:
    # The `root` of a public sshd: one scanner at machine pace, then another at human pace.
    first = failures(0, 6, 2 * SECOND, user="root", ip="203.0.113.7")
    second = failures(20 * MINUTE, 7, 15 * SECOND, user="root", ip="203.0.113.8", irregular=True)
    out = run_engine(first + second)
    assert [a.ip for a in alerts_of(out)] == ["203.0.113.7"]
    assert flags_of(out) == [] and signals_of(out) == []


def test_an_account_attacked_more_than_an_hour_ago_flags_again() -> None:
    first = failures(0, 6, 2 * SECOND, user="root", ip="203.0.113.7")
    later = failures(70 * MINUTE, 6, 15 * SECOND, user="root", ip="100.64.0.8", irregular=True)
    flags = flags_of(run_engine(first + later))
    assert [f.user_id for f in flags] == ["root"]
    assert flags[0].ts > later[-1].ts


def test_a_victim_arriving_after_later_ones_gives_the_stuffing_alert_in_order_would() -> None:
    """The 15th account of an attack arrives after the 16th (another client's batch, or a Kafka
    partition behind): in order the alert is raised at the 15th, and that is what comes, once."""
    attack = [login(i * 10 * SECOND, f"victim-{i}", ip=ATTACKER) for i in range(17)]
    arrived = [*attack[:14], attack[15], attack[16], attack[14]]
    expected = alerts_of(run_engine(attack))
    assert [(a.kind, a.ts, a.first_ts, a.distinct_accounts) for a in expected] == [
        ("credential_stuffing", attack[14].ts, attack[0].ts, 15)
    ]
    assert alerts_of(run_engine(arrived)) == expected
    assert not flags_of(run_engine(arrived))
