"""The /ops aggregates stay bounded in memory whatever the traffic (issue 13: the "where people
rage-click" counter held 20k controls after 30 h)."""

from __future__ import annotations

from streams.queue.feed import ACTIVITY_CAP, ACTIVITY_HORIZON_S, RAGE_CONTROLS_CAP, RecentActivity


def test_rage_controls_are_forgotten_after_the_hour() -> None:
    activity = RecentActivity()
    t0 = 1_800_000_000.0
    for n in range(20_000):  # 20k distinct controls over 30 h
        activity.add_rage(t0 + n * 5.4, "/page", f"control {n}")
    now = t0 + 19_999 * 5.4
    assert len(activity.rage) <= ACTIVITY_HORIZON_S / 5.4 + 1
    assert all(t >= now - ACTIVITY_HORIZON_S for t, _, _ in activity.rage)
    top = activity.top_controls(now, 10)
    assert len(top) == 10 and all(n == 1 for _, n in top)


def test_a_burst_within_the_hour_is_capped() -> None:
    activity = RecentActivity()
    t0 = 1_800_000_000.0
    for n in range(RAGE_CONTROLS_CAP * 3):
        activity.add_rage(t0 + n * 0.001, "/p", f"c{n}")
    for _ in range(ACTIVITY_CAP * 2):
        activity.events.append((t0, 1))
        activity.signals.append((t0, "rage_click"))
    assert len(activity.rage) == RAGE_CONTROLS_CAP
    assert len(activity.events) == ACTIVITY_CAP and len(activity.signals) == ACTIVITY_CAP
    # the newest are kept
    assert activity.rage[-1][2] == f"c{RAGE_CONTROLS_CAP * 3 - 1}"
