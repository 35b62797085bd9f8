"""The incident tracker: surges open one incident per cause, the flags it explains are attached
(earlier ones re-emitted), stronger evidence stays individual, hysteresis closes it, memory is
bounded, checkpoints round-trip."""

from __future__ import annotations

import pytest

from detectors.config import DetectionConfig
from detectors.engine import DetectionEngine
from detectors.incidents import (
    IncidentTracker,
    TrackerOutput,
    cause_key,
    flag_cause,
    flag_watermark,
)
from signals.exceptions import ConfigurationError
from signals.flags import (
    AbruptChatEvidence,
    FailedLoginEvidence,
    Flag,
    RageClickEvidence,
    Severity,
    Signal,
)
from signals.incidents import Incident
from tests.unit.builders import HOUR, MINUTE, SECOND, T0, failures

OUTAGE = "failed_logins:service_unavailable"


# -- builders --------------------------------------------------------------------------------------
def login_signal(
    ts: int, reason: str | None = "service_unavailable", strength: float = 1.0
) -> Signal:
    return Signal(
        kind="failed_logins",
        ts=ts,
        strength=strength,
        evidence=FailedLoginEvidence(
            failures=5,
            span_ms=40_000,
            distinct_ips=1,
            distinct_devices=1,
            last_reason=reason,
            waited_for_success_ms=60_000,
        ),
    )


def rage_signal(ts: int, page: str | None = "/billing", target: str | None = "#pay") -> Signal:
    return Signal(
        kind="rage_click",
        ts=ts,
        strength=1.0,
        evidence=RageClickEvidence(
            rule="burst",
            clicks=7,
            bursts=1,
            span_ms=1_500,
            max_gap_ms=300,
            target=target,
            label="Pay now",
            page=page,
        ),
    )


def chat_signal(ts: int, channel: str | None = "support") -> Signal:
    return Signal(
        kind="abrupt_chat_end",
        ts=ts,
        strength=1.0,
        evidence=AbruptChatEvidence(
            chat_id="c1",
            waited_ms=180_000,
            unanswered_messages=2,
            agent_messages=0,
            ended_by="user",
            duration_ms=200_000,
            channel=channel,
        ),
    )


def flag(
    user: str,
    ts: int,
    *signals: Signal,
    severity: Severity = "low",
    update: int = 0,
    opened_ts: int | None = None,
) -> Flag:
    """A flag of `user` at `ts`; its last signal (a login failure by default) is the trigger."""
    signals = signals or (login_signal(ts),)
    return Flag(
        flag_id=f"flg_{user}",
        user_id=user,
        ts=ts,
        severity=severity,
        score=1.0,
        signals=signals,
        reason="test",
        opened_ts=ts if opened_ts is None else opened_ts,
        update=update,
    )


def outage(n: int, start: int = 0, spacing: int = 2 * SECOND, prefix: str = "o") -> list[Flag]:
    """`n` clients locked out by service_unavailable, one every `spacing` ms from T0 + start."""
    return [flag(f"{prefix}{i:04d}", T0 + start + i * spacing) for i in range(n)]


def run(flags: list[Flag], config: DetectionConfig | None = None) -> list[TrackerOutput]:
    tracker = IncidentTracker(config)
    for f in flags:
        tracker.push(f)
    tracker.flush()
    return tracker.drain()


def incidents_of(out: list[TrackerOutput]) -> list[Incident]:
    return [o for o in out if isinstance(o, Incident)]


def last_incident(out: list[TrackerOutput]) -> dict[str, Incident]:
    """incident_id -> its last emission."""
    return {i.incident_id: i for i in incidents_of(out)}


def placement(out: list[TrackerOutput]) -> dict[str, str | None]:
    """flag_id -> incident_id of its last emission (None: individual outreach)."""
    return {o.flag_id: o.incident_id for o in out if isinstance(o, Flag)}


# -- cause keys ------------------------------------------------------------------------------------
def test_cause_keys_name_the_kind_and_what_it_points_at() -> None:
    assert cause_key(login_signal(T0)) == OUTAGE
    assert cause_key(login_signal(T0, reason=None)) == "failed_logins:-"
    assert cause_key(rage_signal(T0)) == "rage_click:/billing|#pay"
    assert cause_key(rage_signal(T0, page=None, target=None)) == "rage_click:-|Pay now"
    assert cause_key(chat_signal(T0)) == "abrupt_chat_end:support"
    assert cause_key(chat_signal(T0, channel=None)) == "abrupt_chat_end:-"
    # a flag's cause is that of the signal that triggered this emission (the last one)
    mixed = flag("u", T0 + MINUTE, rage_signal(T0), login_signal(T0 + MINUTE))
    assert flag_cause(mixed) == OUTAGE


# -- surge, attachment, re-emission ----------------------------------------------------------------
def test_surge_opens_one_incident_and_attaches_every_flag_of_the_cause() -> None:
    flags = outage(60)  # 60 clients in two minutes
    out = run(flags)
    (incident,) = last_incident(out).values()
    assert incident.cause == OUTAGE and incident.kind == "failed_logins"
    assert incident.affected_users == 60 and incident.individual_users == 0
    assert incident.status == "open" and incident.closed_ts is None
    assert incident.first_seen_ts == T0 and incident.opened_ts == T0 + 24 * 2 * SECOND
    assert incident.last_seen_ts == T0 + 59 * 2 * SECOND
    assert incident.incident_id.startswith("inc_")
    assert incident.evidence == (
        "Clients could not log in (service_unavailable): up to 60 within 5 min (usually none)."
    )
    assert "problem on our side" in incident.message
    assert "o00" not in incident.message + incident.evidence  # no client named
    assert set(placement(out).values()) == {incident.incident_id}


def test_opening_re_emits_the_earlier_flags_with_the_same_id_and_update() -> None:
    flags = outage(25)
    out = run(flags)
    emitted = [o for o in out if isinstance(o, Flag)]
    first_24 = {f.flag_id for f in flags[:24]}
    individual = [f for f in emitted if f.incident_id is None]
    attached = [f for f in emitted if f.incident_id is not None]
    assert {f.flag_id for f in individual} == first_24  # passed on before the surge showed
    assert {f.flag_id for f in attached} == first_24 | {flags[24].flag_id}
    for f in attached:  # the same emission, now attached
        (original,) = [g for g in flags if g.flag_id == f.flag_id]
        assert f == original.model_copy(update={"incident_id": f.incident_id})
    # the incident record comes before the flags that point at it
    first_incident = next(i for i, o in enumerate(out) if isinstance(o, Incident))
    first_attached = next(i for i, o in enumerate(out) if isinstance(o, Flag) and o.incident_id)
    assert first_incident < first_attached
    (opened,) = [i for i in incidents_of(out) if i.update == 0]
    assert opened.affected_users == 25


def test_below_the_minimum_nothing_opens() -> None:
    out = run(outage(24, spacing=10 * SECOND))
    assert incidents_of(out) == []
    assert all(o.incident_id is None for o in out if isinstance(o, Flag))


def test_unrelated_and_stronger_flags_stay_individual() -> None:
    flags = outage(40)
    t = T0 + 70 * SECOND  # while the incident is open
    flags += [
        flag("bad-password", t, login_signal(t, reason="bad_password")),
        flag("rager", t + 1, rage_signal(t + 1)),
        flag("severe", t + 2, severity="high"),
        flag("two-causes", t + 3, chat_signal(t - MINUTE), login_signal(t + 3)),
    ]
    out = run(sorted(flags, key=lambda f: f.ts))
    where = placement(out)
    for user in ("bad-password", "rager", "severe", "two-causes"):
        assert where[f"flg_{user}"] is None, user
    (incident,) = last_incident(out).values()
    assert incident.affected_users == 40
    assert incident.individual_users == 2  # severe, two-causes: its cause, stronger evidence


def test_attached_flag_leaves_the_incident_when_stronger_evidence_joins() -> None:
    flags = outage(30)
    t = T0 + 5 * MINUTE
    first = flags[0]
    again = flag("o0000", t, *first.signals, login_signal(t), severity="medium", update=1)
    worse = flag(
        "o0000", t + MINUTE, *again.signals, chat_signal(t + MINUTE), severity="high", update=2
    )
    out = run([*flags, again, worse])
    emitted = [
        (o.update, o.incident_id) for o in out if isinstance(o, Flag) and o.user_id == "o0000"
    ]
    (incident,) = last_incident(out).values()
    iid = incident.incident_id
    assert emitted == [(0, None), (0, iid), (1, iid), (2, None)]


def test_two_simultaneous_causes_open_two_incidents() -> None:
    logins = outage(40, prefix="l")
    clicks = [
        flag(f"c{i:03d}", T0 + i * 3 * SECOND, rage_signal(T0 + i * 3 * SECOND)) for i in range(30)
    ]
    out = run(sorted(logins + clicks, key=lambda f: (f.ts, f.flag_id)))
    incidents = last_incident(out)
    assert sorted(i.cause for i in incidents.values()) == [OUTAGE, "rage_click:/billing|#pay"]
    by_cause = {i.cause: i for i in incidents.values()}
    assert by_cause[OUTAGE].affected_users == 40
    assert by_cause["rage_click:/billing|#pay"].affected_users == 30
    assert "“Pay now”" in by_cause["rage_click:/billing|#pay"].message
    where = placement(out)
    assert {where[f.flag_id] for f in logins} == {by_cause[OUTAGE].incident_id}
    assert {where[f.flag_id] for f in clicks} == {by_cause["rage_click:/billing|#pay"].incident_id}


# -- baseline and hysteresis -----------------------------------------------------------------------
def test_a_slow_rise_never_surges() -> None:
    """Over six hours a cause grows from nothing to 45 clients per five minutes: the baseline rises
    with it and no incident opens, although the minimum of 25 is passed for hours."""
    flags, t, n = [], 0, 0
    while t < 6 * HOUR:
        per_minute = 9 * t / (6 * HOUR)  # 0 -> 9 clients a minute
        gap = int(60_000 / per_minute) if per_minute > 0.05 else 20 * MINUTE
        t += gap
        flags.append(flag(f"s{n:05d}", T0 + t))
        n += 1
    assert n > 1_000
    out = run(flags)
    assert incidents_of(out) == []
    # the same number of clients within minutes is an incident
    assert len(last_incident(run(outage(45, spacing=5 * SECOND)))) == 1


def test_a_busy_cause_needs_five_times_its_usual_level() -> None:
    """A cause that steadily flags 8 clients per five minutes: 30 in five minutes is not five times
    that, 45 is."""
    steady = [flag(f"b{i:05d}", T0 + i * 37_500) for i in range(int(3 * HOUR / 37_500))]
    end = steady[-1].ts - T0 + 37_500
    moderate = outage(30, start=end, spacing=10 * SECOND, prefix="m")
    assert incidents_of(run(steady + moderate)) == []
    strong = outage(45, start=end, spacing=6 * SECOND, prefix="m")
    (incident,) = last_incident(run(steady + strong)).values()
    assert 7.0 <= incident.baseline_rate * 5 <= 8.5  # clients per five minutes, as learnt


def test_incident_closes_after_the_rate_falls_back_and_does_not_flap() -> None:
    c = DetectionConfig()
    flags = outage(60)
    last = flags[-1].ts
    after = [
        flag(f"late{i}", last + 3 * MINUTE + i * 2 * MINUTE) for i in range(10)
    ]  # 1 client every 2 min, 3-21 min after: quiet
    clock = last + HOUR
    tracker = IncidentTracker()
    for f in flags + after:
        tracker.push(f)
    tracker.advance_watermark(clock)
    out = tracker.drain()
    (incident,) = last_incident(out).values()
    assert incident.status == "closed" and incident.closed_ts is not None
    # quiet once the window no longer holds more than 5; closed after 5 quiet minutes
    assert last + c.incident_close_quiet_ms < incident.closed_ts <= last + 12 * MINUTE
    assert incident.ts == incident.closed_ts
    updates = [i.update for i in incidents_of(out)]
    assert updates == list(range(len(updates)))  # 0, 1, 2, ...: one record per change
    assert sum(i.status == "closed" for i in incidents_of(out)) == 1
    where = placement(out)
    closed_at = incident.closed_ts
    for f in after:  # new clients after the close go to individual outreach; before, attached
        expected = None if f.ts >= closed_at else incident.incident_id
        assert where[f.flag_id] == expected, f.user_id
    assert tracker.open == {}


def test_an_attached_flag_stays_attached_after_the_close() -> None:
    flags = outage(40)
    later = flags[0].ts + 2 * HOUR
    renewal = flag("o0000", later, *flags[0].signals, login_signal(later), update=1)
    out = run([*flags, renewal])
    (incident,) = last_incident(out).values()
    assert incident.status == "closed"
    assert placement(out)["flg_o0000"] == incident.incident_id


def test_updates_are_emitted_at_most_once_per_bucket() -> None:
    out = run(outage(300, spacing=400))  # 300 clients in two minutes
    records = incidents_of(out)
    assert [r.update for r in records] == list(range(len(records)))
    assert len(records) <= 2 + 2 * MINUTE // DetectionConfig().incident_bucket_ms + 1
    assert records[-1].affected_users == 300
    assert records[-1].peak_rate == pytest.approx(300 / 5)


# -- event time, duplicates, late flags ------------------------------------------------------------
def test_duplicates_are_dropped() -> None:
    flags = outage(30)
    twice = [f for f in flags for _ in range(2)]
    tracker = IncidentTracker()
    for f in twice:
        tracker.push(f)
    tracker.flush()
    assert tracker.drain() == run(flags)
    assert tracker.stats.duplicates == 30


def test_a_late_flag_is_grouped_and_counted() -> None:
    flags = outage(40)
    tracker = IncidentTracker()
    for f in flags[1:]:
        tracker.push(f)
    tracker.advance_watermark(flags[-1].ts)
    tracker.push(flags[0])  # far behind the watermark
    tracker.flush()
    out = tracker.drain()
    assert tracker.stats.late == 1
    (incident,) = last_incident(out).values()
    assert placement(out)[flags[0].flag_id] == incident.incident_id


def test_watermark_moves_do_not_change_the_output() -> None:
    """However often event time is advanced between flags (a service's idle ticks, a replay's
    batches), the output is the same."""
    flags = outage(60) + outage(10, start=30 * MINUTE, spacing=MINUTE, prefix="q")
    expected = run(flags)
    for every in (1, 3, 7):
        tracker = IncidentTracker()
        for n, f in enumerate(flags):
            tracker.push(f)
            if n % every == 0:
                tracker.advance_watermark(f.ts)
        tracker.flush()
        assert tracker.drain() == expected, every


def test_flag_watermark_follows_the_shared_clock_less_one_lateness() -> None:
    # Per-user time (issue 12): a client's pending deadline no longer holds the tracker back (a
    # client whose clock runs behind would hold everyone's flags); its flag, if it comes after the
    # tracker moved on, is grouped at once.
    engine = DetectionEngine(DetectionConfig(allowed_lateness_ms=5_000))
    for e in failures(0, 5, 10 * SECOND, "locked"):
        engine.push(e)
    for e in failures(40 * SECOND, 1, SECOND, "other", reason="bad_otp"):
        engine.push(e)
    assert engine.watermark_ms == T0 + 35 * SECOND
    assert flag_watermark(engine) == T0 + 30 * SECOND
    deadline = T0 + 40 * SECOND + 60 * SECOND
    engine.advance_watermark(deadline + 10 * SECOND)
    assert [o for o in engine.drain() if isinstance(o, Flag)]
    assert flag_watermark(engine) == (engine.watermark_ms or 0) - 5_000


# -- memory and checkpoints ------------------------------------------------------------------------
def test_idle_causes_and_old_attachments_are_forgotten() -> None:
    tracker = IncidentTracker()
    for i in range(200):  # 200 different pages, one rage click each
        t = T0 + i * SECOND
        tracker.push(flag(f"r{i}", t, rage_signal(t, page=f"/p{i}")))
    for f in outage(30):
        tracker.push(f.model_copy(update={"ts": f.ts + 10 * MINUTE}))
    tracker.advance_watermark(T0 + 20 * MINUTE)
    assert len(tracker.causes) == 201 and len(tracker.attached) == 30
    tracker.advance_watermark(T0 + 30 * HOUR)
    tracker.push(flag("new", T0 + 30 * HOUR + SECOND, rage_signal(T0 + 30 * HOUR + SECOND)))
    tracker.advance_watermark(T0 + 32 * HOUR)
    assert set(tracker.causes) == {"rage_click:/billing|#pay"}
    assert tracker.attached == {} and tracker.open == {}
    assert len(tracker._recent) <= 1


def test_snapshot_and_restore_resume_exactly() -> None:
    flags = outage(50) + outage(5, start=40 * MINUTE, spacing=MINUTE, prefix="z")
    expected = run(flags)
    for cut in (10, 30, 52):
        tracker = IncidentTracker()
        for f in flags[:cut]:
            tracker.push(f)
        out = tracker.drain()
        resumed = IncidentTracker()
        resumed.restore(tracker.snapshot())
        for f in flags[cut:]:
            resumed.push(f)
        resumed.flush()
        assert out + resumed.drain() == expected, cut


def test_restore_refuses_another_state_version() -> None:
    import pickle

    with pytest.raises(ConfigurationError, match="incident state has version 99"):
        IncidentTracker().restore(pickle.dumps((99,)))


def test_config_keeps_the_hysteresis_consistent() -> None:
    with pytest.raises(ConfigurationError, match="incident_close_users"):
        DetectionConfig(incident_min_users=5, incident_close_users=5)
    with pytest.raises(ConfigurationError, match="incident_close_factor"):
        DetectionConfig(incident_surge_factor=2.0, incident_close_factor=2.0)
    with pytest.raises(ConfigurationError, match="incident_window_ms"):
        DetectionConfig(incident_window_ms=30_000)


def test_thresholds_are_settings() -> None:
    config = DetectionConfig(incident_min_users=10, incident_window_ms=60_000)
    (incident,) = last_incident(run(outage(10, spacing=5 * SECOND), config)).values()
    assert incident.affected_users == 10 and incident.window_ms == 60_000
    assert incidents_of(run(outage(10, spacing=5 * SECOND))) == []


def weak_xy_burst(ts: int) -> Signal:
    """A weak rage-click signal of clicks without a target (x/y only)."""
    base = rage_signal(ts, page=None, target=None)
    evidence = base.evidence.model_copy(update={"label": None})
    return base.model_copy(update={"strength": 0.5, "evidence": evidence})


def test_a_victim_flagged_after_the_close_by_evidence_from_the_outage_joins_it() -> None:
    # Issue 11: a client gave up logging in during the outage (weak) and was flagged only later,
    # when a weak x/y click burst corroborated it: a victim of the outage, not a separate case.
    flags = outage(40)
    tracker = IncidentTracker()
    for f in flags:
        tracker.push(f)
    tracker.advance_watermark(flags[-1].ts + 30 * MINUTE)
    (closed,) = last_incident(tracker.drain()).values()
    assert closed.status == "closed" and closed.closed_ts is not None
    during = flags[-1].ts - MINUTE
    late = closed.closed_ts + 5 * MINUTE
    victim = flag("v1", late, login_signal(during, strength=0.5), weak_xy_burst(late))
    tracker.push(victim)
    tracker.flush()
    out = tracker.drain()
    assert placement(out)["flg_v1"] == closed.incident_id
    (record,) = incidents_of(out)
    assert record.status == "closed" and record.affected_users == closed.affected_users + 1
    assert record.update == closed.update + 1
    # evidence from after the close, or a full signal of another cause, stays individual
    after = flag("v2", late, login_signal(late, strength=0.5), weak_xy_burst(late))
    other = flag("v3", late, login_signal(during, strength=0.5), rage_signal(late))
    out = run([*flags, after, other])
    assert placement(out)["flg_v2"] is None and placement(out)["flg_v3"] is None


def test_a_weak_signal_of_another_cause_does_not_take_a_flag_out_of_the_incident() -> None:
    flags = outage(30)
    mixed = flag(
        "m1",
        flags[-1].ts + SECOND,
        weak_xy_burst(flags[-1].ts),
        login_signal(flags[-1].ts + SECOND),
    )
    out = run([*flags, mixed])
    (incident,) = last_incident(out).values()
    assert placement(out)["flg_m1"] == incident.incident_id


# -- issue 11: a fresh tracker at a large platform -------------------------------------------------
def busy_chat_cause_with_a_peak() -> list[Flag]:
    """A cause busy from the start (12 clients per 5 min), and 30 within 5 min at minute 30."""
    steady = [flag(f"b{i:05d}", T0 + i * 25 * SECOND, chat_signal(T0 + i * 25 * SECOND))
              for i in range(int(HOUR / (25 * SECOND)))]  # fmt: skip
    peak_at = T0 + 30 * MINUTE
    peak = [flag(f"p{i:03d}", peak_at + i * 8 * SECOND, chat_signal(peak_at + i * 8 * SECOND))
            for i in range(20)]  # fmt: skip
    return sorted(steady + peak, key=lambda f: (f.ts, f.flag_id))


def run_active(flags: list[Flag], active: int) -> list[TrackerOutput]:
    """`flags` through a tracker watching since T0 with `active` clients active."""
    tracker = IncidentTracker()
    tracker.advance_watermark(T0)
    tracker.observe_active(active)
    for f in flags:
        tracker.push(f)
    tracker.flush()
    return tracker.drain()


def test_a_busy_cause_at_a_large_platform_is_no_surge_from_zero() -> None:
    # Issue 11: 30 000 users, no outage, an abrupt_chat_end incident open 70 min. Counted from a
    # baseline of zero the busy cause surges; with 30 000 active clients it does not.
    flags = busy_chat_cause_with_a_peak()
    assert len(last_incident(run_active(flags, 0))) == 1  # what a zero start does
    assert incidents_of(run_active(flags, 30_000)) == []


def test_an_outage_hours_after_the_start_of_a_large_platform_still_opens() -> None:
    flags = outage(60, start=2 * HOUR)
    (incident,) = last_incident(run_active(flags, 30_000)).values()
    assert incident.cause == OUTAGE and incident.affected_users == 60
    # and the prior shows in the baseline it was judged against: 30 x 2^-2 per 5 min
    assert incident.baseline_rate * 5 == pytest.approx(7.5, rel=0.05)


def test_the_prior_comes_from_the_config_and_whole_thousands() -> None:
    flags = busy_chat_cause_with_a_peak()
    assert len(last_incident(run_active(flags, 999))) == 1  # under a thousand: no prior
    config = DetectionConfig(incident_prior_per_1000_active=0)
    tracker = IncidentTracker(config)
    tracker.observe_active(30_000)
    for f in flags:
        tracker.push(f)
    tracker.flush()
    assert len(last_incident(tracker.drain())) == 1
