"""Replay end to end: a simulated stream with bad lines of every kind interleaved, in memory and
through the `frustration` command."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from signals.exceptions import INVALID_REASONS
from signals.wire import DEFAULT_MAX_EVENT_BYTES
from streams.lab.simulator import SimulatedStream, Simulator
from streams.replay import Replay, ReplaySummary, replay_lines
from tests.unit.builders import HOUR, MINUTE, T0, line, wire

ROOT = Path(__file__).resolve().parents[2]
FREE_TEXT = "I feel awful"
BRUTE_FORCERS = {"203.0.113.66", "203.0.113.67", "203.0.113.68"}  # the simulator's scanners
NAME_SCANNER = "203.0.113.69"  # walks user names that do not exist (account_scan)
ATTACKER = "198.51.100.23"

#: One or more bad lines per reason; each carries free text a person wrote.
BAD: dict[str, list[bytes]] = {
    "not_json": [
        b'{"type": "chat", "user_id": "u1", "text": "I feel awful", ',
        b"I feel awful",
    ],
    "not_object": [
        b'["chat", "I feel awful"]',
        b'"I feel awful"',
    ],
    "oversized": [
        line(wire("chat", chat_id="c", action="message", sender="user", text=FREE_TEXT * 2_000))
    ],
    "missing_field": [
        line({"user_id": "u1", "ts": T0, "text": FREE_TEXT}),
        line(wire("chat", action="message", sender="user", text=FREE_TEXT)),
        line(wire("chat", chat_id="c9", action="message", message=FREE_TEXT)),
    ],
    "wrong_type": [line(wire("click", x="left", body=FREE_TEXT))],
    "invalid_value": [
        line(wire("login", outcome="nope", content=FREE_TEXT)),
        line(wire("chat", chat_id="c9", action="message", sender="bot", text=FREE_TEXT)),
    ],
    "unknown_type": [line(wire("note", text=FREE_TEXT))],
    "bad_ts": [
        line({"type": "click", "user_id": "u1", "ts": "2026-11-21T10:00:00", "text": FREE_TEXT}),
        line({"type": "click", "user_id": "u1", "ts": "1795255200000", "text": FREE_TEXT}),
        line({"type": "click", "user_id": "u1", "ts": 1795255200000.5, "text": FREE_TEXT}),
    ],
    "absurd_ts": [
        line({"type": "click", "user_id": "u1", "ts": 1795255200, "text": FREE_TEXT}),
        line({"type": "click", "user_id": "u1", "ts": 1795255200000000, "text": FREE_TEXT}),
    ],
}
assert set(BAD) == set(INVALID_REASONS)
assert len(BAD["oversized"][0]) > DEFAULT_MAX_EVENT_BYTES


@pytest.fixture(scope="module")
def stream() -> SimulatedStream:
    return Simulator(600, seed=3).run()


@pytest.fixture(scope="module")
def clean_lines(stream: SimulatedStream) -> list[bytes]:
    return list(stream.event_lines())


def with_bad_lines(clean: list[bytes], seed: int = 0, copies: int = 3) -> list[bytes]:
    """The clean lines with every bad line `copies` times at random places (and blank lines)."""
    rng = random.Random(seed)
    lines = list(clean)
    for bad in [b for group in BAD.values() for b in group] * copies:
        lines.insert(rng.randrange(len(lines) + 1), bad)
    for _ in range(5):
        lines.insert(rng.randrange(len(lines) + 1), b"")
    return lines


def expected_invalid(copies: int = 3) -> Counter[str]:
    return Counter({reason: len(group) * copies for reason, group in BAD.items()})


def replay(lines: list[bytes]) -> tuple[list, list, list, ReplaySummary]:
    flags: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    run = Replay(on_flag=flags.append, on_alert=alerts.append, on_dead_letter=dead.append)
    run.feed(lines)
    return flags, alerts, dead, run.finish()


# -- in memory ------------------------------------------------------------------------------------
def test_clean_simulated_stream_gives_flags_and_the_stuffing_alert(clean_lines: list) -> None:
    flags, alerts, summary = replay_lines(clean_lines)
    assert flags
    # Issue 11: the stuffing IP hammers some victims at machine pace before it reaches 15
    # accounts, so a brute_force alert of the same IP may come first; one stuffing alert still;
    # and the simulator's two brute-force scanners are alerted.
    assert [a["ip"] for a in alerts if a["kind"] == "credential_stuffing"] == [ATTACKER]
    assert {a["ip"] for a in alerts} == {ATTACKER, NAME_SCANNER, *BRUTE_FORCERS}
    assert {a["ip"] for a in alerts if a["kind"] == "account_scan"} == {NAME_SCANNER}
    assert {a["ip"] for a in alerts if a["kind"] == "brute_force"} >= BRUTE_FORCERS
    assert summary.invalid == Counter()
    assert summary.valid == summary.lines == len(clean_lines)


def test_bad_lines_never_change_the_flags_of_the_valid_events(clean_lines: list) -> None:
    clean_flags, clean_alerts, clean_summary = replay_lines(clean_lines)
    flags, alerts, _, summary = replay(with_bad_lines(clean_lines))
    assert flags == clean_flags
    assert alerts == clean_alerts
    assert summary.signals == clean_summary.signals
    assert summary.flags == clean_summary.flags
    assert summary.escalations == clean_summary.escalations


def test_dead_letter_count_per_reason_is_right(clean_lines: list) -> None:
    _, _, dead, summary = replay(with_bad_lines(clean_lines))
    assert Counter(d["reason"] for d in dead) == expected_invalid()
    assert summary.invalid == expected_invalid()


def test_dead_letters_never_carry_the_free_text(clean_lines: list) -> None:
    _, _, dead, _ = replay(with_bad_lines(clean_lines))
    for record in dead:
        text = orjson.dumps(record).decode()
        assert FREE_TEXT not in text
        assert "feel" not in text
        assert record["reason"] in INVALID_REASONS
        assert record["detail"]
        assert record["source"].startswith("line ")


def test_summary_counts_lines_valid_invalid_duplicates_alerts(
    stream: SimulatedStream, clean_lines: list
) -> None:
    _, _, clean_summary = replay_lines(clean_lines)
    _, _, _, summary = replay(with_bad_lines(clean_lines))
    n_bad = sum(expected_invalid().values())
    assert summary.lines == len(clean_lines) + n_bad  # blank lines are not lines of events
    assert summary.valid == len(clean_lines)
    assert sum(summary.invalid.values()) == n_bad
    unique_ids = len({e["event_id"] for e in stream.events})
    assert summary.duplicates == len(stream.events) - unique_ids == clean_summary.duplicates
    assert summary.duplicates > 0
    assert summary.late == 0
    # the stuffing IP's brute_force and credential_stuffing alerts, and the two scanners'
    assert summary.alerts == clean_summary.alerts == 6
    text = "\n".join(summary.lines_of_text())
    assert f"{summary.lines} lines, {summary.valid} valid, {n_bad} invalid" in text
    assert "not_json=6" in text
    assert "security alerts: 6" in text


def test_credential_stuffing_victims_are_never_flagged(
    stream: SimulatedStream, clean_lines: list
) -> None:
    victims = {t.user_id for t in stream.truth if t.credential_stuffing_victim}
    assert victims
    flags, _, _ = replay_lines(clean_lines)
    assert not victims & {f["user_id"] for f in flags}


def test_summary_counts_the_users_still_tracked_after_idle_ones_are_forgotten() -> None:
    """Replay does not keep a set of every user id ever seen (memory must stay bounded)."""
    lines = [
        line(wire("click", user="a", dt=0, target="#x")),
        line(wire("click", user="b", dt=3 * HOUR, target="#x")),
        line(wire("click", user="c", dt=3 * HOUR + 2 * MINUTE, target="#x")),
    ]
    _, _, summary = replay_lines(lines)
    assert summary.users == 2
    assert "2 users tracked at the end" in summary.lines_of_text()[0]


def test_dead_letter_source_is_the_line_number_in_the_input() -> None:
    lines = [line(wire("click")), b"", b"", b"not json at line 4"]
    _, _, dead, _ = replay(lines)
    assert [d["source"] for d in dead] == ["line 4"]


def test_a_line_later_than_the_lateness_is_dead_lettered_as_late() -> None:
    lines = [
        line(wire("click", dt=60_000, event_id="a")),
        line(wire("click", dt=0, event_id="b", text=FREE_TEXT)),  # a minute late
    ]
    _, _, dead, summary = replay(lines)
    assert summary.late == 1
    assert [d["reason"] for d in dead] == ["late"]
    assert dead[0]["event"]["event_id"] == "b"
    assert FREE_TEXT not in orjson.dumps(dead).decode()


def test_replay_accepts_lines_with_trailing_newlines(clean_lines: list) -> None:
    flags, _, _ = replay_lines(clean_lines)
    assert replay_lines([b + b"\n" for b in clean_lines])[0] == flags
    assert replay_lines([b + b"\r\n" for b in clean_lines])[0] == flags


# -- the command ----------------------------------------------------------------------------------
def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRUSTRATION_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_replay_command_writes_flags_summary_dead_letters_and_alerts(
    tmp_path: Path, clean_lines: list
) -> None:
    events = tmp_path / "events.ndjson"
    events.write_bytes(b"\n".join(with_bad_lines(clean_lines)) + b"\n")
    dead = tmp_path / "dead.ndjson"
    alerts = tmp_path / "alerts.ndjson"
    result = cli("replay", str(events), "--dead-letter", str(dead), "--alerts", str(alerts),
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    stdout_flags = [orjson.loads(x) for x in result.stdout.splitlines()]
    clean_flags, clean_alerts, _ = replay_lines(clean_lines)
    assert stdout_flags == clean_flags
    assert all({"flag_id", "user_id", "ts", "severity", "signals", "reason"} <= set(f)
               for f in stdout_flags)  # fmt: skip
    assert "events: " in result.stderr
    assert "invalid by reason: " in result.stderr
    assert "security alerts: 6" in result.stderr
    assert "flag_id" not in result.stderr
    alert_lines = [orjson.loads(x) for x in alerts.read_bytes().splitlines()]
    assert alert_lines == clean_alerts
    stuffing = [a for a in alert_lines if a["kind"] == "credential_stuffing"]
    assert len(stuffing) == 1
    assert stuffing[0]["ip"] == ATTACKER
    assert stuffing[0]["distinct_accounts"] >= 15
    dead_lines = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert Counter(d["reason"] for d in dead_lines) == expected_invalid()
    assert FREE_TEXT.encode() not in dead.read_bytes()


def test_replay_command_reads_stdin(tmp_path: Path) -> None:
    data = (
        b"\n".join(line(wire("click", dt=250 * i, target="#pay")) for i in range(6))
        + b"\nnot json\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRUSTRATION_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", "-"],
        input=data,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1
    assert b"not_json=1" in result.stderr


def test_simulate_then_evaluate_prints_precision_and_recall(tmp_path: Path) -> None:
    events, labels = tmp_path / "events.ndjson", tmp_path / "labels.ndjson"
    sim = cli("simulate", "--users", "400", "--seed", "5", "--out", str(events),
              "--labels", str(labels), cwd=tmp_path)  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    assert "simulated" in sim.stderr
    assert len(labels.read_bytes().splitlines()) == 400
    result = cli("evaluate", str(events), str(labels), "--baseline", "posthog", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    header = next(x for x in out if "precision" in x)
    assert "recall" in header
    rows = {
        x.split()[0]: x
        for x in out
        if re.match(r"^(overall|rage_click|failed_logins|abrupt_chat_end|posthog) ", x)
    }
    assert {"overall", "rage_click", "failed_logins", "abrupt_chat_end", "posthog"} <= set(rows)
    for row in rows.values():
        numbers = re.findall(r"\d+\.\d{3}", row)
        precision, recall = float(numbers[0]), float(numbers[1])
        assert 0.0 <= precision <= 1.0 and 0.0 <= recall <= 1.0
    overall = re.findall(r"\d+\.\d{3}", rows["overall"])
    assert float(overall[0]) > 0.5 and float(overall[1]) > 0.5
    lookalikes = next(x for x in out if x.startswith("look-alikes: "))
    assert "brute_force_victim 2 (flagged 0)" in lookalikes
    assert any(x.startswith("security alerts: ") and "brute_force=" in x for x in out)
