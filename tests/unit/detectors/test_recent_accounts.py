"""The credential-stuffing rule counts an IP's distinct accounts as failures come
(`RecentAccounts`), not by walking its whole window at every failure: the count must be what
walking the window gives, in order and out of order, and a flood from one IP on few accounts
must still give the alert walking gave."""

from __future__ import annotations

import bisect
import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.credential_stuffing import CredentialStuffingDetector, RecentAccounts, SourceState
from tests.unit.builders import SECOND, login

WINDOW = 300


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2_000), st.sampled_from("abcdefgh"), st.integers(0, 400)),
        min_size=1,
        max_size=60,
    )
)
def test_the_count_is_the_distinct_accounts_of_the_window(
    failures: list[tuple[int, str, int]],
) -> None:
    """Each step adds a failure (up to 400 before the newest one: out of order) and counts
    since a horizon that only moves forward, as the rule does."""
    recent = RecentAccounts()
    seen: list[tuple[int, str]] = []
    newest = 0
    for step, account, back in failures:
        newest += step
        ts = max(0, newest - back)
        recent.add(ts, account)
        seen.append((ts, account))
        horizon = newest - WINDOW
        expected = len({a for t, a in seen if t >= horizon})
        assert recent.count_since(horizon) == expected


def test_a_flood_from_one_ip_on_few_accounts_then_many_gives_the_alert_walking_gave() -> None:
    detector, state = CredentialStuffingDetector(), SourceState()
    ip = "203.0.113.66"
    # 20,000 failures in 5 minutes on 10 accounts (below the rule's 15), then 5 new accounts.
    events = [login(i * 15, f"acct-{i % 10}", ip=ip) for i in range(20_000)]
    events += [login(300 * SECOND + i, f"new-{i}", ip=ip) for i in range(5)]
    alerts = [a for a in (detector.learn_one(state, e) for e in events) if a is not None]
    assert [(a.kind, a.distinct_accounts, a.ts) for a in alerts] == [
        ("credential_stuffing", 15, events[-1].ts)
    ]
    in_window = [e for e in events if e.ts >= events[-1].ts - detector.config.stuffing_window_ms]
    assert alerts[0].failures == len(in_window)
    assert alerts[0].first_ts == in_window[0].ts


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20_000), st.sampled_from(["a", "b", "c", "root"])),
        min_size=1,
        max_size=80,
    ),
    st.integers(0, 400_000),
)
def test_the_judges_verdict_is_what_every_detectors_verdict_together_says(
    steps: list[tuple[int, str]], ask_back: int
) -> None:
    """`SourceJudge.verdict` answers an attacker before walking anything; the answer must be
    what asking each detector gives (any attack is an attack, else the latest decision)."""
    from types import SimpleNamespace

    from detectors.config import DetectionConfig
    from detectors.sources import SourceJudge

    judge = SourceJudge(
        DetectionConfig(),
        SimpleNamespace(alerts_revised_too_late=0, source_copies_late=0),
        lambda alert: None,
    )
    ip, ts = "198.51.100.4", 1_795_255_200_000
    for gap, account in steps:
        ts += gap
        judge.learn(login(0, account, ip=ip).model_copy(update={"ts": ts}), copy=False)
    for asked in (ts - ask_back, ts):
        verdicts = [
            judge.stuffing.verdict(judge.sources[ip], asked, ts),
            judge.brute.verdict(judge.brute_sources[ip], asked, ts),
        ]
        expected = (
            (True, asked)
            if any(v.attack for v in verdicts)
            else (False, max(v.decided_at for v in verdicts))
        )
        assert tuple(judge.verdict(ip, asked, ts)) == expected


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 30_000),  # time step of the stream
            st.integers(0, 40),  # account
            st.booleans(),  # a name that does not exist
            st.integers(0, 200_000),  # how late it comes (0: in order)
        ),
        min_size=1,
        max_size=120,
    )
)
def test_a_late_failure_gives_what_walking_every_window_gives(
    steps: list[tuple[int, int, bool, int]],
) -> None:
    """`learn_late` skips the walk when no window can cross the rule or the attack already
    alerted covers everything from the late failure on; the full walk (`_stuffing_walk`,
    `_scan_walk`) on a copy of the same state must then give the same (nothing, and no change)."""
    detector = CredentialStuffingDetector()
    state = SourceState()
    ip, ts = "198.51.100.9", 1_795_255_200_000
    for step, account, unknown, back in steps:
        ts += step
        reason = "invalid_user" if unknown else "bad_password"
        event = login(0, f"acct-{account}", ip=ip, reason=reason).model_copy(
            update={"ts": max(0, ts - back)}
        )
        if not state.failures or event.ts >= state.last_ts:
            detector.learn_one(state, event)
            continue
        walked = copy.deepcopy(state)
        got = detector.learn_late(state, event)
        # The same insertion, then both walks with no shortcut.
        bisect.insort(walked.failures, (event.ts, event.user_id))
        walked.last_ts = max(walked.last_ts, event.ts)
        stuffing = detector._stuffing_walk(walked, event)
        scan = None
        if reason == "invalid_user":
            bisect.insort(walked.unknown, (event.ts, event.user_id))
            scan = detector._scan_walk(walked, event)
        assert got == (stuffing or scan)
        for name in ("failures", "unknown", "attack_until", "alert_first_ts", "alert_ts",
                     "until_before", "scan_until", "scan_first_ts", "scan_alert_ts",
                     "scan_until_before"):  # fmt: skip
            assert getattr(state, name) == getattr(walked, name), name
