"""FlagScorer: decaying score, weak-signal cap, corroboration, severity, one open flag per user."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from detectors.config import DetectionConfig
from detectors.scoring import FlagScorer, ScoreState
from signals.flags import (
    SEVERITIES,
    AbruptChatEvidence,
    FailedLoginEvidence,
    Flag,
    RageClickEvidence,
    Signal,
    SignalKind,
)
from tests.unit.builders import (
    HOUR,
    MINUTE,
    SECOND,
    T0,
    clicks,
    engine_flags,
    failures,
    waiting_chat,
)

FREE_TEXT = "I feel awful"


def sig(kind: SignalKind, dt: int = 0, strength: float = 1.0) -> Signal:
    """A signal of `kind` at T0 + dt."""
    evidence: RageClickEvidence | FailedLoginEvidence | AbruptChatEvidence
    if kind == "rage_click":
        evidence = RageClickEvidence(
            rule="burst", clicks=6, bursts=1, span_ms=1_500, max_gap_ms=300, target="#pay",
            label="Pay now", element="button", page="/billing",
        )  # fmt: skip
    elif kind == "failed_logins":
        evidence = FailedLoginEvidence(
            failures=5 if strength >= 1 else 3, span_ms=80_000, distinct_ips=1,
            distinct_devices=1, last_reason="bad_password", waited_for_success_ms=60_000,
        )  # fmt: skip
    else:
        evidence = AbruptChatEvidence(
            chat_id="c1", waited_ms=180_000 if strength >= 1 else 90_000, unanswered_messages=2,
            agent_messages=0, ended_by="user", duration_ms=200_000,
        )  # fmt: skip
    return Signal(kind=kind, ts=T0 + dt, strength=strength, evidence=evidence)


def feed(signals: Iterable[Signal], user: str = "u1", config: DetectionConfig | None = None):
    scorer = FlagScorer(config)
    state = ScoreState()
    out: list[Flag] = []
    for s in signals:
        flag = scorer.add(state, user, s)
        if flag is not None:
            out.append(flag)
    return out


# -- score ----------------------------------------------------------------------------------------
def test_one_full_signal_flags_low_with_score_1() -> None:
    flags = feed([sig("rage_click")])
    assert len(flags) == 1
    flag = flags[0]
    assert (flag.severity, flag.score, flag.update) == ("low", 1.0, 0)
    assert flag.ts == flag.opened_ts == T0
    assert flag.user_id == "u1"
    assert flag.flag_id.startswith("flg_")


def test_score_halves_every_10_minutes() -> None:
    scorer, state = FlagScorer(), ScoreState()
    scorer.add(state, "u1", sig("rage_click"))
    assert scorer.score(state, T0) == pytest.approx(1.0)
    assert scorer.score(state, T0 + 10 * MINUTE) == pytest.approx(0.5)
    assert scorer.score(state, T0 + 20 * MINUTE) == pytest.approx(0.25)


def test_score_is_a_decaying_sum_of_signals() -> None:
    scorer, state = FlagScorer(), ScoreState()
    scorer.add(state, "u1", sig("rage_click", 0))
    scorer.add(state, "u1", sig("rage_click", 10 * MINUTE))
    assert scorer.score(state, T0 + 10 * MINUTE) == pytest.approx(1.5)


@pytest.mark.parametrize("kind", ["rage_click", "failed_logins", "abrupt_chat_end"])
def test_weak_signals_of_one_kind_never_flag_alone_however_many(kind: SignalKind) -> None:
    signals = [sig(kind, i * SECOND, 0.5) for i in range(10)]
    assert feed(signals) == []
    scorer, state = FlagScorer(), ScoreState()
    for s in signals:
        scorer.add(state, "u1", s)
    assert scorer.score(state, T0 + 10 * SECOND) == pytest.approx(0.5)  # capped


def test_two_weak_signals_of_different_kinds_close_together_flag_with_corroboration() -> None:
    flags = feed([sig("failed_logins", 0, 0.5), sig("abrupt_chat_end", MINUTE, 0.5)])
    assert len(flags) == 1
    flag = flags[0]
    expected = (0.5 * 0.5 ** (1 / 10) + 0.5) * 1.5
    assert flag.score == pytest.approx(expected, abs=1e-3)
    assert flag.severity == "low"
    assert flag.ts == T0 + MINUTE
    assert {s.kind for s in flag.signals} == {"failed_logins", "abrupt_chat_end"}


def test_weak_pair_at_the_same_moment_scores_1_5() -> None:
    flags = feed([sig("failed_logins", 0, 0.5), sig("abrupt_chat_end", 0, 0.5)])
    assert [f.score for f in flags] == [1.5]


def test_weak_lockout_and_weak_chat_together_flag_through_the_engine() -> None:
    events = failures(0, 3, 20 * SECOND) + waiting_chat(2 * MINUTE, 90 * SECOND)
    flags = engine_flags(events)
    assert len(flags) == 1
    assert {s.kind for s in flags[0].signals} == {"failed_logins", "abrupt_chat_end"}
    assert all(s.strength == 0.5 for s in flags[0].signals)
    # each alone does not flag
    assert engine_flags(failures(0, 3, 20 * SECOND)) == []
    assert engine_flags(waiting_chat(2 * MINUTE, 90 * SECOND)) == []


def test_two_weak_chats_do_not_flag_through_the_engine() -> None:
    events = waiting_chat(0, 90 * SECOND, chat_id="a") + waiting_chat(
        SECOND, 100 * SECOND, chat_id="b"
    )
    assert engine_flags(events) == []


def test_two_weak_signals_of_different_kinds_far_apart_do_not_flag() -> None:
    assert feed([sig("failed_logins", 0, 0.5), sig("abrupt_chat_end", HOUR, 0.5)]) == []


def test_a_flag_raised_by_corroboration_lists_the_corroborating_signal() -> None:
    # 12 minutes apart the pair still reaches the threshold ((0.5 * 2^-1.2 + 0.5) * 1.5 = 1.08):
    # the flag must show both signals, not a lone weak one that never flags on its own.
    flags = feed([sig("failed_logins", 0, 0.5), sig("abrupt_chat_end", 12 * MINUTE, 0.5)])
    assert len(flags) == 1
    assert flags[0].score >= 1.0
    assert {s.kind for s in flags[0].signals} == {"failed_logins", "abrupt_chat_end"}
    assert "log in" in flags[0].reason


def test_corroboration_multiplies_strong_signals_of_two_kinds() -> None:
    flags = feed([sig("rage_click", 0), sig("abrupt_chat_end", 0)])
    assert [f.score for f in flags] == [1.0, 3.0]
    assert [f.severity for f in flags] == ["low", "high"]


# -- severity -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("score", "severity"),
    [
        (1.0, "low"),
        (1.499, "low"),
        (1.5, "medium"),
        (2.999, "medium"),
        (3.0, "high"),
        (4.999, "high"),
        (5.0, "critical"),
        (12.0, "critical"),
    ],
)
def test_severity_thresholds(score: float, severity: str) -> None:
    assert FlagScorer().severity(score) == severity


def test_two_full_signals_of_one_kind_at_once_are_medium() -> None:
    flags = feed([sig("rage_click", 0), sig("rage_click", 0)])
    assert [(f.severity, f.score, f.update) for f in flags] == [("low", 1.0, 0), ("medium", 2.0, 1)]


def test_three_strong_kinds_at_full_strength_are_critical() -> None:
    flags = feed(
        [sig("rage_click", 0), sig("failed_logins", 0, 2.0), sig("abrupt_chat_end", 0, 2.0)]
    )
    assert flags[-1].severity == "critical"
    assert flags[-1].score == pytest.approx(7.5)


# -- one open flag per user -----------------------------------------------------------------------
def test_later_signals_re_emit_the_same_flag_when_severity_rises() -> None:
    flags = feed([sig("rage_click", 0), sig("rage_click", MINUTE)])
    assert len(flags) == 2
    assert flags[0].flag_id == flags[1].flag_id
    assert [f.update for f in flags] == [0, 1]
    assert [f.severity for f in flags] == ["low", "medium"]
    assert flags[1].opened_ts == T0
    assert flags[1].ts == T0 + MINUTE
    assert len(flags[1].signals) == 2


def test_a_later_signal_that_changes_nothing_is_not_re_emitted() -> None:
    # low, then medium; a third rage signal keeps it medium (score < 3): no emission
    flags = feed([sig("rage_click", 0), sig("rage_click", MINUTE), sig("rage_click", 30 * MINUTE)])
    assert [f.update for f in flags] == [0, 1]


def test_a_new_kind_joining_re_emits_the_same_flag() -> None:
    flags = feed([sig("rage_click", 0), sig("abrupt_chat_end", 40 * MINUTE, 0.5)])
    assert len(flags) == 2
    assert flags[0].flag_id == flags[1].flag_id
    assert flags[1].update == 1
    assert {s.kind for s in flags[1].signals} == {"rage_click", "abrupt_chat_end"}


def test_updates_count_up_1_2_3() -> None:
    flags = feed(
        [
            sig("rage_click", 0),
            sig("failed_logins", MINUTE, 0.5),
            sig("abrupt_chat_end", 2 * MINUTE, 0.5),
            sig("rage_click", 3 * MINUTE, 2.0),
        ]
    )
    assert [f.update for f in flags] == list(range(len(flags)))
    assert len({f.flag_id for f in flags}) == 1
    assert len(flags) >= 3


def test_a_new_flag_id_only_after_24h_without_signals() -> None:
    # a signal every 12 h keeps the flag open (renewed each time), never a new flag_id
    signals = [sig("rage_click", i * 12 * HOUR) for i in range(4)]
    flags = feed(signals)
    assert len({f.flag_id for f in flags}) == 1
    assert [f.update for f in flags] == [0, 1, 2, 3]
    # 24 h and more after the last signal: a new flag
    flags = feed([sig("rage_click", 0), sig("rage_click", 24 * HOUR + SECOND)])
    assert len(flags) == 2
    assert flags[0].flag_id != flags[1].flag_id
    assert [f.update for f in flags] == [0, 0]
    assert flags[1].opened_ts == T0 + 24 * HOUR + SECOND


def test_a_signal_just_inside_the_cooldown_joins_the_open_flag() -> None:
    flags = feed([sig("rage_click", 0), sig("rage_click", 24 * HOUR - SECOND)])
    assert len({f.flag_id for f in flags}) == 1
    assert flags[-1].update == 1


def test_flag_id_is_stable_same_input_same_id() -> None:
    first = feed([sig("rage_click", 0), sig("failed_logins", MINUTE)])
    second = feed([sig("rage_click", 0), sig("failed_logins", MINUTE)])
    assert first == second
    other_user = feed([sig("rage_click", 0)], user="u2")
    assert other_user[0].flag_id != first[0].flag_id


def test_flag_id_is_stable_through_the_engine() -> None:
    events = clicks(0, 6, 250)
    assert engine_flags(events)[0].flag_id == engine_flags(events)[0].flag_id


def test_flag_keeps_at_most_max_signals_per_flag() -> None:
    config = DetectionConfig(max_signals_per_flag=3)
    flags = feed([sig("rage_click", i * 10 * SECOND, 3.0) for i in range(8)], config=config)
    assert all(len(f.signals) <= 3 for f in flags)


# -- the flag as JSON -----------------------------------------------------------------------------
def test_flag_json_has_the_documented_fields_and_rfc3339_times() -> None:
    flag = feed([sig("rage_click", 250)])[0]
    data = flag.model_dump(mode="json")
    assert {
        "flag_id",
        "user_id",
        "ts",
        "severity",
        "score",
        "signals",
        "reason",
        "opened_ts",
        "update",
    } <= set(data)
    assert data["ts"] == "2026-11-21T10:00:00.250Z"
    assert data["opened_ts"] == "2026-11-21T10:00:00.250Z"
    assert data["severity"] == "low"
    assert data["score"] == 1.0
    assert data["update"] == 0
    assert len(data["signals"]) == 1
    signal = data["signals"][0]
    assert set(signal) == {"kind", "ts", "strength", "evidence"}
    assert signal["kind"] == "rage_click"
    assert signal["ts"] == "2026-11-21T10:00:00.250Z"
    assert signal["evidence"]["clicks"] == 6
    assert Flag.model_validate(data) == flag  # reads back


def one_sentence(text: str) -> bool:
    # a sentence ends with ".", and no sentence boundary (". X") inside it
    return text.endswith(".") and "\n" not in text and not re.search(r"\.\s+[A-Z]", text[:-1])


@pytest.mark.parametrize(
    "events",
    [
        clicks(0, 6, 250),
        clicks(0, 4, 250) + clicks(20 * SECOND, 4, 250) + clicks(40 * SECOND, 4, 250),
        failures(0, 6, 20 * SECOND),
        waiting_chat(0, 5 * MINUTE),
        failures(0, 3, 20 * SECOND) + waiting_chat(2 * MINUTE, 90 * SECOND),
        clicks(0, 6, 250) + failures(MINUTE, 5, 20 * SECOND) + waiting_chat(3 * MINUTE, 4 * MINUTE),
    ],
    ids=["rage", "bursts", "lockout", "chat", "weak-pair", "all"],
)
def test_reason_is_one_plain_sentence_from_metadata(events: list) -> None:
    flags = engine_flags(events)
    assert flags
    for flag in flags:
        assert flag.reason.startswith("The client ")
        assert one_sentence(flag.reason), flag.reason
        assert FREE_TEXT not in flag.reason


def test_reason_describes_every_kind_of_the_flag() -> None:
    events = (
        clicks(0, 6, 250) + failures(MINUTE, 5, 20 * SECOND) + waiting_chat(3 * MINUTE, 4 * MINUTE)
    )
    reason = engine_flags(events)[-1].reason
    assert "clicked “Pay now” 6 times" in reason
    assert "failed to log in 5 times" in reason
    assert "chat after waiting 4 min" in reason


# -- issue 11: weak signals, consistent severity, the whole episode in the reason -----------------
def test_a_weak_signal_hours_later_never_raises_the_severity() -> None:
    # Issue 11: a 4-failure weak give-up 11 h after the last emission re-emitted high -> critical.
    flags = feed(
        [sig("rage_click", 0, 2.0), sig("rage_click", 0, 2.0), sig("failed_logins", 11 * HOUR, 0.5)]
    )
    severities = [SEVERITIES.index(f.severity) for f in flags]
    assert flags[-2].severity == "high"  # the two rage signals together
    assert severities[-1] <= severities[-2]
    assert flags[-1].score == 0.5 and flags[-1].severity == "low"  # its own evidence: low


def test_a_weak_signal_does_not_renew_a_flag() -> None:
    flags = feed([sig("rage_click", 0), sig("rage_click", 3 * HOUR, 0.5)])
    assert len(flags) == 1


def test_the_same_evidence_gets_the_same_severity_whatever_came_before() -> None:
    # One full signal is low on its own; 2 h after an earlier flag it is still low (not a step up).
    alone = feed([sig("rage_click", 0)])
    after = feed([sig("rage_click", 0, 2.0), sig("rage_click", 2 * HOUR)])
    assert alone[0].severity == "low"
    assert after[0].severity == "medium" and after[-1].severity == "low"
    assert after[-1].flag_id == after[0].flag_id


def test_the_reason_describes_the_whole_burst_not_its_last_six_clicks() -> None:
    flags = engine_flags(clicks(0, 12, 250))
    assert "12 times" in flags[-1].reason
    assert flags[-1].signals[-1].evidence.clicks == 12  # type: ignore[union-attr]


def test_a_weak_signal_of_another_kind_does_not_raise_the_severity_by_corroboration() -> None:
    # 2.0 alone is medium; a weak x/y click burst 15 min earlier once made it high (x 1.5).
    alone = feed([sig("abrupt_chat_end", 15 * MINUTE, 2.0)])
    with_weak = feed([sig("rage_click", 0, 0.5), sig("abrupt_chat_end", 15 * MINUTE, 2.0)])
    assert alone[-1].severity == with_weak[-1].severity == "medium"
    assert with_weak[-1].score > alone[-1].score  # the score still shows the corroboration


def test_weak_signals_of_a_kind_with_a_full_signal_do_not_raise_the_severity() -> None:
    flags = feed([sig("rage_click", 0), *(sig("rage_click", i * SECOND, 0.5) for i in range(1, 6))])
    assert [f.severity for f in flags] == ["low"]
