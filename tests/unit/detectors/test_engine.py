"""DetectionEngine: event time, lateness, duplicates, bounded memory, expiry, checkpoints."""

from __future__ import annotations

import pickle

import pytest

import detectors.engine as engine_module
from detectors.config import DetectionConfig
from detectors.engine import STATE_VERSION, DetectionEngine, LateEvent
from signals.exceptions import ConfigurationError
from signals.flags import Flag
from tests.unit.builders import (
    HOUR,
    MINUTE,
    SECOND,
    T0,
    by_ts,
    click,
    clicks,
    failures,
    flags_of,
    jittered,
    late_of,
    login,
    mixed_stream,
    run_engine,
    waiting_chat,
    with_id,
)

#: The former global default: tests of wide reordering use it explicitly.
FIVE_S = DetectionConfig(allowed_lateness_ms=5_000)


def test_mixed_stream_flags_what_it_should() -> None:
    out = run_engine(mixed_stream())
    flagged = {f.user_id for f in flags_of(out)}
    assert flagged == {"rage", "locked", "chatter", "weakpair"}
    assert sum(o.__class__.__name__ == "SecurityAlert" for o in out) == 1


# -- event time and lateness ----------------------------------------------------------------------
def test_output_depends_on_event_time_not_arrival_order_within_the_lateness() -> None:
    stream = mixed_stream()
    expected = flags_of(run_engine(stream))
    for seed in range(5):
        assert flags_of(run_engine(jittered(stream, seed))) == expected


def test_reversed_arrival_within_5s_gives_the_same_flags() -> None:
    events = clicks(0, 8, 250)
    assert flags_of(run_engine(reversed(events), FIVE_S)) == flags_of(run_engine(events, FIVE_S))


def test_event_later_than_the_allowed_lateness_is_reported_and_not_processed() -> None:
    engine = DetectionEngine(FIVE_S)
    engine.push(click(10 * SECOND, target="#x"))  # the same client's clock: its own events
    late = click(10 * SECOND - 5_001)
    engine.push(late)
    out = engine.drain()
    assert [type(o) for o in out] == [LateEvent]
    assert out[0].event == late
    assert out[0].watermark_ms == T0 + 5 * SECOND
    assert engine.stats.late == 1
    engine.flush()
    assert sum(engine.stats.events.values()) == 1


def test_another_clients_clock_never_makes_this_clients_events_late() -> None:
    engine = DetectionEngine()
    engine.push(click(590 * SECOND, user="future-dated"))  # a client ten minutes ahead
    for e in clicks(0, 8, 250):
        engine.push(e)
    engine.flush()
    assert engine.stats.late == 0
    assert [f.user_id for f in flags_of(engine.drain())] == ["u1"]


def test_event_exactly_at_the_lateness_bound_is_still_processed() -> None:
    engine = DetectionEngine(FIVE_S)
    engine.push(click(10 * SECOND, target="#x"))
    engine.push(click(5 * SECOND))
    engine.flush()
    assert engine.stats.late == 0
    assert sum(engine.stats.events.values()) == 2


def test_late_clicks_are_not_counted_into_a_burst() -> None:
    events = clicks(0, 6, 250)
    engine = DetectionEngine()
    for e in events[:5]:
        engine.push(e)
    engine.push(click(20 * SECOND, target="#x"))  # the client's own clock moves on
    engine.push(events[5])  # 18.75 s late
    engine.flush()
    out = engine.drain()
    assert flags_of(out) == []
    assert len(late_of(out)) == 1


def test_duplicated_event_ids_give_identical_flags() -> None:
    stream = mixed_stream()
    doubled = [e for e in stream for _ in (0, 1)]
    engine = DetectionEngine()
    for e in doubled:
        engine.push(e)
    engine.flush()
    assert flags_of(engine.drain()) == flags_of(run_engine(stream))
    assert engine.stats.duplicates == len(stream)


def test_duplicate_delivered_seconds_later_is_dropped() -> None:
    events = [with_id(e, f"r{i}") for i, e in enumerate(clicks(0, 6, 250))]
    engine = DetectionEngine()
    for e in events:
        engine.push(e)
    engine.push(events[0])  # a client retry, 1.25 s after the original's successors
    engine.flush()
    assert len(flags_of(engine.drain())) == 1
    assert engine.stats.duplicates == 1


def test_events_without_event_id_are_never_deduplicated() -> None:
    events = clicks(0, 3, 250)
    out = run_engine([*events, *events], FIVE_S)  # same content, no event_id: six clicks
    assert len(flags_of(out)) == 1


def test_flush_then_more_input_continues_in_event_time() -> None:
    engine = DetectionEngine()
    for e in clicks(0, 3, 250):
        engine.push(e)
    engine.flush()
    for e in clicks(1_000, 3, 250):
        engine.push(e)
    engine.flush()
    assert len(flags_of(engine.drain())) == 1


# -- memory and expiry ----------------------------------------------------------------------------
def test_memory_stays_bounded_over_50k_distinct_users_across_hours() -> None:
    config = DetectionConfig()
    engine = DetectionEngine(config)
    n = 50_000
    span = 8 * HOUR
    step = span // n
    most_users = most_sources = most_ids = most_clocks = 0
    for i in range(n):
        dt = i * step
        if i % 10 == 0:
            event = login(dt, user=f"user-{i}", ip=f"100.{i % 250}.{i // 250 % 250}.1")
        else:
            event = click(dt, user=f"user-{i}")
        engine.push(with_id(event, f"id-{i}"))
        if i % 1_000 == 0:
            engine.drain()
            most_users = max(most_users, len(engine.users))
            most_sources = max(most_sources, len(engine.judge.sources))
            most_ids = max(most_ids, sum(len(c.seen) for c in engine.clocks.values()))
            most_clocks = max(most_clocks, len(engine.clocks))
    engine.flush()
    # users idle for the TTL (2 h) are forgotten: at most ~2 h of users plus a sweep interval
    per_hour = n / 8
    assert most_users <= per_hour * 2.1 + 100
    assert most_sources <= per_hour / 10 * 1.1 + 100  # IPs forgotten after the hold (1 h)
    assert most_ids <= per_hour / 6 * 1.1 + 100  # event ids forgotten after 10 min
    assert most_clocks <= per_hour * 2.1 + 100  # a client's clock goes with its state and ids
    assert len(engine.users) <= per_hour * 2.1 + 100


def test_each_sweep_forgets_every_idle_user_and_ip_a_full_scan_would() -> None:
    """The sweep looks only at users and IPs its index says may be idle: none it should forget
    may stay (a user with an open flag keeps its score until the cooldown ends)."""
    config = DetectionConfig()
    engine = DetectionEngine(config)
    last_sweep = engine._last_sweep
    sweeps = 0
    for i in range(6_000):
        dt = i * 4_000
        user = f"user-{i % 700}" if i % 3 else f"user-{i}"
        if i % 7 == 0:
            event = login(dt, user=user, ip=f"100.{i // 700}.{i % 5}.1")  # new IPs each ~45 min
        else:
            event = click(dt, user=user)
        engine.push(with_id(event, f"id-{i}"))
        engine.drain()
        if engine._last_sweep == last_sweep:
            continue
        sweeps += 1
        now = last_sweep = engine._last_sweep
        for state in engine.users.values():
            idle = state.last_ts < now - config.user_idle_ttl_ms
            assert not idle or (state.score is not None and state.clicks is None)
        assert not any(engine.judge.stuffing.is_idle(s, now) for s in engine.judge.sources.values())
        assert not any(
            engine.judge.brute.is_idle(b, now) for b in engine.judge.brute_sources.values()
        )
    assert sweeps > 300 and len(engine.judge.sources) <= 10  # it swept, and it forgot IPs (of 45)


def _quiet_user_stream() -> list:
    """u1 gets a flag, goes quiet for 3 h, and comes back with a lock-out and an abandoned chat."""
    u1 = [
        *clicks(0, 6, 250),
        *failures(30 * MINUTE, 3, 20 * SECOND),  # weak (no flag) ...
        *clicks(3 * HOUR, 4, 250),  # ... state that must not count after the gap
        *failures(3 * HOUR + MINUTE, 5, 20 * SECOND),
        *waiting_chat(3 * HOUR + 10 * MINUTE, 3 * MINUTE),
        *clicks(28 * HOUR, 6, 300),  # a day after the last signal: a new flag
    ]
    return u1


def test_expiry_timing_does_not_change_output() -> None:
    u1 = _quiet_user_stream()
    alone = [f for f in flags_of(run_engine(by_ts(u1))) if f.user_id == "u1"]
    assert len({f.flag_id for f in alone}) == 2
    # other users' traffic makes sweeps happen at other moments (every minute, or at odd times)
    for period in (17 * SECOND, 61 * SECOND, 7 * MINUTE, 2 * HOUR + 1):
        filler = [
            click(t, user=f"filler-{t % 7}", target="#x") for t in range(0, 29 * HOUR, period)
        ]
        busy = [f for f in flags_of(run_engine(by_ts(u1 + filler))) if f.user_id == "u1"]
        assert busy == alone, period


def test_state_of_an_idle_user_is_forgotten_but_the_open_flag_is_kept() -> None:
    engine = DetectionEngine()
    for e in clicks(0, 6, 250):
        engine.push(e)
    for t in range(0, 4 * HOUR, MINUTE):
        engine.push(click(t, user="other", target="#x"))
    state = engine.users["u1"]
    assert state.clicks is None and state.logins is None and state.chats is None
    assert state.score is not None and state.score.flag_id is not None
    # and once the cooldown has passed, the user is gone
    for t in range(4 * HOUR, 26 * HOUR, 10 * MINUTE):
        engine.push(click(t, user="other", target="#x"))
    assert "u1" not in engine.users


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [1, 10, 25, 40, 60])
def test_snapshot_restore_mid_stream_gives_the_same_flags(cut: int) -> None:
    stream = jittered(mixed_stream(), seed=1)
    expected = run_engine(stream)
    first = DetectionEngine()
    for e in stream[:cut]:
        first.push(e)
    before = first.drain()
    blob = first.snapshot()
    second = DetectionEngine()
    second.restore(blob)
    for e in stream[cut:]:
        second.push(e)
    second.flush()
    assert before + second.drain() == expected
    assert flags_of(expected)


def test_snapshot_keeps_remembered_event_ids() -> None:
    stream = mixed_stream()
    first = DetectionEngine()
    for e in stream[:20]:
        first.push(e)
    second = DetectionEngine()
    second.restore(first.snapshot())
    for e in stream[10:20]:  # redelivered after a restart
        second.push(e)
    assert second.stats.duplicates == 10


def test_snapshot_of_another_state_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = DetectionEngine()
    for e in clicks(0, 3, 250):
        engine.push(e)
    monkeypatch.setattr(engine_module, "STATE_VERSION", STATE_VERSION + 1)
    newer = engine.snapshot()
    monkeypatch.setattr(engine_module, "STATE_VERSION", STATE_VERSION)
    with pytest.raises(ConfigurationError):
        DetectionEngine().restore(newer)
    with pytest.raises(ConfigurationError):
        DetectionEngine().restore(pickle.dumps((STATE_VERSION - 1, {}, {})))
    with pytest.raises(ConfigurationError):
        DetectionEngine().restore(pickle.dumps({"version": STATE_VERSION}))


def test_flags_are_flag_models_with_increasing_updates_per_flag_id() -> None:
    flags = flags_of(run_engine(mixed_stream()))
    seen: dict[str, int] = {}
    for f in flags:
        assert isinstance(f, Flag)
        assert f.update == seen.get(f.flag_id, -1) + 1
        seen[f.flag_id] = f.update
