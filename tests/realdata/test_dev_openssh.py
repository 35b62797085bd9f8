"""A real sshd log (loghub OpenSSH_2k, development set): every failure in it comes from scanners,
so a careful human raises the two credential-stuffing alerts and contacts nobody.

Reads `../shared/real-data/dev/openssh_2k.events.jsonl` beside the repository (or the folder named
by FRUSTRATION_REAL_DATA); skipped where that folder is absent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from streams.replay import Replay, ReplaySummary

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parents[2]
REAL_DATA = Path(os.environ.get("FRUSTRATION_REAL_DATA", REPO / ".." / "shared" / "real-data"))
EVENTS = REAL_DATA / "dev" / "openssh_2k.events.jsonl"


@pytest.fixture(scope="module")
def replayed() -> tuple[list[dict[str, Any]], list[dict[str, Any]], ReplaySummary]:
    if not EVENTS.is_file():
        pytest.skip(f"real data not found at {EVENTS} (set FRUSTRATION_REAL_DATA)")
    flags: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    run = Replay(on_flag=flags.append, on_alert=alerts.append)
    run.feed(EVENTS.read_bytes().splitlines())
    return flags, alerts, run.finish()


def test_every_line_is_a_valid_login_event(
    replayed: tuple[list[dict[str, Any]], list[dict[str, Any]], ReplaySummary],
) -> None:
    _, _, summary = replayed
    assert summary.valid == summary.lines == 533
    assert summary.late == summary.duplicates == 0


def test_no_account_is_flagged_for_outreach(
    replayed: tuple[list[dict[str, Any]], list[dict[str, Any]], ReplaySummary],
) -> None:
    flags, _, summary = replayed
    assert [(f["user_id"], f["severity"], f["reason"]) for f in flags] == []
    assert summary.individual_flags == 0 and not summary.incidents
    assert not summary.signals, "not even a weak signal: every failure is a scanner's"


def test_the_two_credential_stuffing_sources_are_alerted_once_each_when_they_reach_15(
    replayed: tuple[list[dict[str, Any]], list[dict[str, Any]], ReplaySummary],
) -> None:
    _, alerts, _ = replayed
    stuffing = [
        (a["ip"], a["ts"], a["distinct_accounts"])
        for a in alerts
        if a["kind"] == "credential_stuffing"
    ]
    assert stuffing == [
        ("103.99.0.122", "2016-12-10T09:12:30.000Z", 15),
        ("187.141.143.180", "2016-12-10T09:18:18.000Z", 15),
    ]


def test_the_scanners_hammering_root_are_brute_force_alerts_not_lockouts(
    replayed: tuple[list[dict[str, Any]], list[dict[str, Any]], ReplaySummary],
) -> None:
    _, alerts, _ = replayed
    brute = {a["ip"]: a["rule"] for a in alerts if a["kind"] == "brute_force"}
    # 183.62.140.253: 276 failures for root in 10 min; 112.95.230.3: 24 in 59 s; 5.36.59.76 and
    # 106.5.5.195: six tries 2 to 2.6 s apart on one connection ("Too many authentication
    # failures"); 187.141.143.180 hammers root (46) before it sprays 28 accounts.
    assert {"183.62.140.253", "112.95.230.3", "5.36.59.76", "106.5.5.195"} <= set(brute)
    # ... caught at its 6th try on root, 3.0 s apart like a timer, before it reaches 20.
    assert brute["187.141.143.180"] == "rhythm"
    # Every alert names a scanner (119.4.203.64: admin, which does not exist, 2 s apart).
    assert set(alerts_ips := [a["ip"] for a in alerts]) <= {
        "183.62.140.253",
        "112.95.230.3",
        "5.36.59.76",
        "106.5.5.195",
        "187.141.143.180",
        "103.99.0.122",
        "119.4.203.64",
        "5.188.10.180",
    }, alerts_ips


def test_sources_walking_lists_of_user_names_that_do_not_exist_are_account_scans(
    replayed: tuple[list[dict[str, Any]], list[dict[str, Any]], ReplaySummary],
) -> None:
    _, alerts, _ = replayed
    scans = {a["ip"] for a in alerts if a["kind"] == "account_scan"}
    # 5.188.10.180 tried 5 names that do not exist (17 failures) and never 15 accounts in 5 min.
    assert scans == {"5.188.10.180", "103.99.0.122", "187.141.143.180", "183.62.140.253"}
    assert all(a["distinct_accounts"] >= 5 for a in alerts if a["kind"] == "account_scan")
