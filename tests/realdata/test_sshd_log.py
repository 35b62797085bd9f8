"""The sshd-log converter (`streams/lab/sshd_log.py`) on the raw log behind the development set
(loghub OpenSSH_2k): it reads the same attempts as the provided conversion, and replaying them
gives the same verdict: both credential-stuffing sources alerted, nobody flagged for outreach."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from streams.lab.sshd_log import events_from_sshd_log
from streams.replay import Replay

pytestmark = pytest.mark.realdata


def test_the_converter_reads_the_attempts_of_the_provided_conversion(real_data: Path) -> None:
    raw = (real_data / "loghub" / "OpenSSH_2k.log").read_text(errors="replace").splitlines()
    ours = Counter(
        (e["user_id"], e["ip"], e["outcome"]) for e in events_from_sshd_log(raw, year=2016)
    )
    provided = Counter(
        (e["user_id"], e["ip"], e["outcome"])
        for e in map(json.loads, (real_data / "dev" / "openssh_2k.events.jsonl").open())
    )
    assert ours == provided  # including "invalid user  0101" (two spaces: a name with a space)


def test_replaying_the_converted_log_flags_nobody_and_alerts_both_stuffing_sources(
    real_data: Path,
) -> None:
    raw = (real_data / "loghub" / "OpenSSH_2k.log").read_text(errors="replace").splitlines()
    events = sorted(events_from_sshd_log(raw, year=2016), key=lambda e: e["ts"])
    flags: list[dict] = []
    alerts: list[dict] = []
    run = Replay(on_flag=flags.append, on_alert=alerts.append)
    run.feed([json.dumps(e).encode() for e in events])
    summary = run.finish()
    assert summary.valid == len(events) and summary.late == 0
    assert flags == []
    stuffing = {a["ip"] for a in alerts if a["kind"] == "credential_stuffing"}
    assert stuffing == {"103.99.0.122", "187.141.143.180"}
