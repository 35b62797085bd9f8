"""The /ops aggregates stay bounded in memory whatever the traffic (issue 13: the "where people
rage-click" counter held 20k controls after 30 h)."""

from __future__ import annotations

import time
from pathlib import Path

from streams.metrics import FrustrationMetrics
from streams.queue.feed import (
    ACTIVITY_CAP,
    ACTIVITY_HORIZON_S,
    RAGE_CONTROLS_CAP,
    QueueFeed,
    RecentActivity,
)
from streams.queue.pages import PageContext, ops_page
from streams.queue.security import Identity
from streams.queue.store import QueueStore
from streams.settings import Settings
from tests.unit.detectors.test_incidents import rage_signal


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


def test_untargeted_bursts_are_counted_apart_from_the_controls(tmp_path: Path) -> None:
    """Clicks on one spot of no control (strength 0: never a flag alone) are not ranked with real
    controls on /ops, where they would sit above a real "Pay now" problem as "?" / "?"; they are
    counted on a line of their own."""
    feed = QueueFeed(Settings(), QueueStore(tmp_path / "q.db"), FrustrationMetrics())
    ts = 1_795_255_200_000
    untargeted = rage_signal(ts, page=None, target=None)
    feed.route_outputs([untargeted, untargeted, rage_signal(ts)])  # the last on /billing "Pay now"
    now = time.time()
    assert feed.activity.top_controls(now, 10) == [(("/billing", "Pay now"), 1)]
    assert feed.activity.untargeted(now) == 2
    page = ops_page(feed, PageContext(identity=Identity(via="open"), csrf="x", me=None, now=now))
    assert (
        "Pay now" in page
        and "and 2 untargeted bursts" in page
        and "?" not in page.split("Where people rage-click")[1].split("</table>")[0]
    )
