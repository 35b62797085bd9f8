"""Properties of the incident tracker over generated flag streams: arrival order within the
lateness, watermark moves and checkpoints never change its output; every flag comes out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.config import DetectionConfig
from detectors.incidents import IncidentTracker, TrackerOutput
from signals.flags import Flag, Severity, Signal
from signals.incidents import Incident
from tests.unit.builders import SECOND, T0
from tests.unit.detectors.test_incidents import chat_signal, login_signal, rage_signal

#: Small thresholds, so that short generated streams open, grow and close incidents.
CONFIG = DetectionConfig(
    incident_min_users=4,
    incident_close_users=1,
    incident_window_ms=60_000,
    incident_bucket_ms=10_000,
    incident_close_quiet_ms=20_000,
    incident_baseline_half_life_ms=300_000,
)
LATENESS = CONFIG.incident_lateness_ms
CAUSES = ("outage", "bad_password", "rage", "chat")


def signal_of(cause: str, ts: int) -> Signal:
    if cause == "outage":
        return login_signal(ts)
    if cause == "bad_password":
        return login_signal(ts, reason="bad_password")
    if cause == "rage":
        return rage_signal(ts)
    return chat_signal(ts)


@st.composite
def flag_streams(draw: st.DrawFn) -> list[Flag]:
    """Emissions of up to 30 clients: each one flag, re-emitted up to twice with a new signal,
    mostly of the crowd's cause; in event-time order."""
    crowd = draw(st.sampled_from(CAUSES))
    flags: list[Flag] = []
    for n in range(draw(st.integers(1, 30))):
        user = f"u{n:02d}"
        t = T0 + draw(st.integers(0, 240 * SECOND))
        signals: list[Signal] = []
        severity: Severity = "low"
        for update in range(draw(st.integers(1, 3))):
            cause = draw(st.sampled_from([crowd, crowd, crowd, *CAUSES]))
            signals.append(signal_of(cause, t))
            severity = max(
                severity, draw(st.sampled_from(["low", "low", "medium", "high"])), key=_rank
            )
            flags.append(
                Flag(
                    flag_id=f"flg_{user}",
                    user_id=user,
                    ts=t,
                    severity=severity,
                    score=1.0,
                    signals=tuple(signals),
                    reason="generated",
                    opened_ts=flags[-1].opened_ts if update else t,
                    update=update,
                )
            )
            t += draw(st.integers(1, 90 * SECOND))
    return sorted(flags, key=lambda f: (f.ts, f.flag_id, f.update))


def _rank(severity: str) -> int:
    return ("low", "medium", "high", "critical").index(severity)


def run(flags: list[Flag], advances: list[int] | None = None) -> list[TrackerOutput]:
    """Push in the given order; before push i, advance the watermark to advances[i] if set."""
    tracker = IncidentTracker(CONFIG)
    for i, f in enumerate(flags):
        if advances is not None and advances[i]:
            tracker.advance_watermark(advances[i])
        tracker.push(f)
    tracker.flush()
    assert tracker.stats.late == 0
    return tracker.drain()


@settings(max_examples=60, deadline=None, database=None)
@given(stream=flag_streams(), data=st.data())
def test_arrival_order_within_the_lateness_and_watermark_moves_change_nothing(
    stream: list[Flag], data: st.DataObject
) -> None:
    jitter = data.draw(
        st.lists(st.integers(0, LATENESS - 1), min_size=len(stream), max_size=len(stream))
    )
    keyed = sorted(
        ((f.ts + j, i, f) for i, (f, j) in enumerate(zip(stream, jitter, strict=True))),
        key=lambda k: (k[0], k[1]),
    )
    arrival = [f for _, _, f in keyed]
    # An upstream watermark may promise at most (arrival key - lateness): nothing older follows.
    moves = data.draw(st.lists(st.booleans(), min_size=len(stream), max_size=len(stream)))
    advances = [k - LATENESS if move else 0 for (k, _, _), move in zip(keyed, moves, strict=True)]
    expected = run(stream)
    assert run(arrival) == expected
    assert run(arrival, advances) == expected


@settings(max_examples=40, deadline=None, database=None)
@given(stream=flag_streams(), data=st.data())
def test_every_flag_comes_out_and_attachments_point_at_emitted_incidents(
    stream: list[Flag], data: st.DataObject
) -> None:
    out = run(stream)
    emitted = [o for o in out if isinstance(o, Flag)]
    incidents = [o for o in out if isinstance(o, Incident)]
    # each pushed emission comes out; a second time only to attach it to an incident
    keys = [(f.flag_id, f.update) for f in stream]
    assert {(f.flag_id, f.update) for f in emitted} == set(keys)
    for key in keys:
        copies = [f.incident_id for f in emitted if (f.flag_id, f.update) == key]
        assert len(copies) in (1, 2), (key, copies)
        if len(copies) == 2:
            assert copies[0] is None and copies[1] is not None, (key, copies)
    known = {i.incident_id for i in incidents}
    assert {f.incident_id for f in emitted if f.incident_id} <= known
    for i in incidents:  # every incident record is consistent
        assert i.first_seen_ts <= i.opened_ts <= i.last_seen_ts
        assert i.affected_users + i.individual_users >= CONFIG.incident_min_users
        assert (i.status == "closed") == (i.closed_ts is not None)
    # a flag is only attached when its evidence is all of the incident's cause, below high
    by_id = {i.incident_id: i for i in incidents}
    for f in emitted:
        if f.incident_id:
            assert f.severity in ("low", "medium")
            cause = by_id[f.incident_id].cause
            assert len({s.kind for s in f.signals}) == 1 and cause.startswith(f.signals[0].kind)
    # a checkpoint anywhere changes nothing
    cut = data.draw(st.integers(0, len(stream)))
    tracker = IncidentTracker(CONFIG)
    for f in stream[:cut]:
        tracker.push(f)
    head = tracker.drain()
    resumed = IncidentTracker(CONFIG)
    resumed.restore(tracker.snapshot())
    for f in stream[cut:]:
        resumed.push(f)
    resumed.flush()
    assert head + resumed.drain() == out
