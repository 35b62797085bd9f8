"""Abrupt chat endings: what must flag, what must not, and the boundaries."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from detectors.abrupt_chat import AbruptChatEndDetector, AbruptChatState
from detectors.config import DetectionConfig
from signals.events import ChatEvent
from signals.flags import AbruptChatEvidence, Signal
from tests.unit.builders import (
    MINUTE,
    SECOND,
    chat,
    engine_flags,
    flags_of,
    learn_all,
    run_engine,
    signals_of,
    waiting_chat,
)


def chat_signals(events: Iterable[ChatEvent], config: DetectionConfig | None = None) -> list:
    return learn_all(AbruptChatEndDetector(config), AbruptChatState(), events)


def evidence(signal: Signal) -> AbruptChatEvidence:
    assert isinstance(signal.evidence, AbruptChatEvidence)
    return signal.evidence


def msg(dt: int, sender: str, chat_id: str = "c1", user: str = "u1") -> ChatEvent:
    return chat(dt, user, chat_id, action="message", sender=sender)


def end(dt: int, ended_by: str | None, chat_id: str = "c1", user: str = "u1") -> ChatEvent:
    return chat(dt, user, chat_id, action="end", ended_by=ended_by)


def start(dt: int = 0, chat_id: str = "c1", user: str = "u1", **kw: object) -> ChatEvent:
    return chat(dt, user, chat_id, action="start", **kw)


# -- must flag ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ended_by", ["user", "system", "timeout"])
def test_chat_ended_while_the_client_waited_2_minutes_flags(ended_by: str) -> None:
    events = waiting_chat(0, 2 * MINUTE, ended_by=ended_by)
    signals = chat_signals(events)
    assert len(signals) == 1
    signal = signals[0]
    assert signal.kind == "abrupt_chat_end"
    assert signal.ts == events[-1].ts
    assert signal.strength == 1.0
    ev = evidence(signal)
    assert (ev.chat_id, ev.waited_ms, ev.unanswered_messages, ev.agent_messages, ev.ended_by) == (
        "c1",
        2 * MINUTE,
        1,
        0,
        ended_by,
    )
    assert ev.duration_ms == 2 * MINUTE + SECOND
    flags = engine_flags(events)
    assert len(flags) == 1 and flags[0].ts == events[-1].ts


def test_client_gave_up_in_the_queue_before_any_agent_joined_flags() -> None:
    events = [
        start(0, channel="support"),
        msg(2 * SECOND, "user"),
        msg(40 * SECOND, "user"),
        msg(90 * SECOND, "user"),
        end(5 * MINUTE, "user"),
    ]
    signals = chat_signals(events)
    assert len(signals) == 1
    ev = evidence(signals[0])
    assert ev.waited_ms == 5 * MINUTE - 2 * SECOND  # from the FIRST unanswered message
    assert ev.unanswered_messages == 3
    assert signals[0].strength == 1.2  # +0.1 per minute past 2


def test_evidence_keeps_the_channel_given_when_the_chat_started() -> None:
    # Platforms send the channel (queue) with the start event, not with every step.
    events = [start(0, channel="billing"), msg(SECOND, "user"), end(4 * MINUTE, "timeout")]
    signals = chat_signals(events)
    assert len(signals) == 1
    assert evidence(signals[0]).channel == "billing"


def test_answered_client_who_said_a_last_word_and_left_later_does_not_flag() -> None:
    # Issue 11: real answered askers say "thanks" or "ok" and leave 3-34 min later.
    for wait in (3 * MINUTE, 34 * MINUTE):
        events = [
            start(0),
            msg(SECOND, "user"),
            msg(30 * SECOND, "agent"),
            msg(60 * SECOND, "user"),
            end(60 * SECOND + wait, "timeout"),
        ]
        assert chat_signals(events) == []


def test_answered_client_with_two_unanswered_follow_ups_does_not_flag() -> None:
    events = [
        start(0),
        msg(SECOND, "user"),
        msg(30 * SECOND, "agent"),
        msg(MINUTE, "user"),
        msg(2 * MINUTE, "user"),
        end(30 * MINUTE, "user"),
    ]
    assert chat_signals(events) == []


def test_answered_client_who_kept_asking_and_waited_10_minutes_flags() -> None:
    events = [
        start(0),
        msg(SECOND, "user"),
        msg(30 * SECOND, "agent"),
        msg(MINUTE, "user"),
        msg(3 * MINUTE, "user"),
        msg(6 * MINUTE, "user"),
        end(11 * MINUTE, "user"),
    ]
    signals = chat_signals(events)
    assert len(signals) == 1
    ev = evidence(signals[0])
    assert (ev.waited_ms, ev.agent_messages, ev.unanswered_messages) == (10 * MINUTE, 1, 3)
    # One minute less of waiting, or one follow-up less, is a last word, not abandonment.
    assert chat_signals([*events[:-1], end(11 * MINUTE - 1, "user")]) == []
    assert chat_signals([*events[:4], *events[5:]]) == []


def test_answered_follow_up_thresholds_come_from_the_config() -> None:
    config = DetectionConfig(chat_followup_min_messages=1, chat_followup_min_wait_ms=3 * MINUTE)
    events = [
        start(0),
        msg(SECOND, "user"),
        msg(30 * SECOND, "agent"),
        msg(60 * SECOND, "user"),
        end(60 * SECOND + 3 * MINUTE, "timeout"),
    ]
    assert len(chat_signals(events, config)) == 1


def test_one_departure_ending_several_waiting_chats_is_one_signal() -> None:
    # Issue 11: an asker who left once with 3 chats open got 3 signals summed to critical.
    events = [start(0, c) for c in "abc"]
    events += [msg(SECOND, "user", c) for c in "abc"]
    events += [end(10 * MINUTE, "user", c) for c in "abc"]
    signals = chat_signals(events)
    assert len(signals) == 1 and evidence(signals[0]).chat_id == "a"
    flags = engine_flags(events)
    assert len(flags) == 1 and len(flags[0].signals) == 1
    assert flags[0].severity == "medium"  # one 10-minute wait (1.8), not three summed (critical)


def test_a_later_departure_is_a_new_signal() -> None:
    events = [*waiting_chat(0, 3 * MINUTE, chat_id="a")]
    events += waiting_chat(3 * MINUTE + 2 * SECOND, 3 * MINUTE, chat_id="b")
    assert [evidence(s).chat_id for s in chat_signals(events)] == ["a", "b"]


def test_chat_without_start_event_is_still_judged() -> None:
    events = [msg(0, "user"), end(3 * MINUTE, "user")]
    assert len(chat_signals(events)) == 1


def test_very_long_wait_caps_strength_at_2() -> None:
    signals = chat_signals(waiting_chat(0, 60 * MINUTE))
    assert signals[0].strength == 2.0


def test_several_open_chats_of_a_user_are_judged_separately() -> None:
    events = [
        start(0, "a"),
        start(SECOND, "b"),
        msg(2 * SECOND, "user", "a"),
        msg(3 * SECOND, "user", "b"),
        msg(10 * SECOND, "agent", "b"),
        end(4 * MINUTE, "user", "b"),
        end(4 * MINUTE + SECOND, "user", "a"),
    ]
    signals = chat_signals(events)
    assert [evidence(s).chat_id for s in signals] == ["a"]


# -- boundaries -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wait", "strength"),
    [
        (59_999, None),
        (60_000, 0.5),
        (119_999, 0.5),
        (120_000, 1.0),
        (180_000, 1.1),
    ],
)
def test_wait_boundaries_60s_weak_and_120s_full(wait: int, strength: float | None) -> None:
    signals = chat_signals(waiting_chat(0, wait))
    assert [s.strength for s in signals] == ([] if strength is None else [strength])


def test_weak_wait_alone_does_not_flag() -> None:
    out = run_engine(waiting_chat(0, 90 * SECOND))
    assert len(signals_of(out)) == 1
    assert flags_of(out) == []


# -- must not flag --------------------------------------------------------------------------------
def test_chat_ended_by_the_agent_does_not_flag() -> None:
    assert chat_signals(waiting_chat(0, 10 * MINUTE, ended_by="agent")) == []
    assert engine_flags(waiting_chat(0, 10 * MINUTE, ended_by="agent")) == []


def test_end_without_ended_by_does_not_flag() -> None:
    assert chat_signals(waiting_chat(0, 10 * MINUTE, ended_by=None)) == []


def test_user_ends_shortly_after_an_agent_reply_does_not_flag() -> None:
    events = [
        start(0),
        msg(SECOND, "user"),
        msg(4 * MINUTE, "agent"),  # a late answer, but an answer
        end(4 * MINUTE + 20 * SECOND, "user"),
    ]
    assert chat_signals(events) == []


def test_user_thanks_and_leaves_quickly_after_the_answer_does_not_flag() -> None:
    events = [
        start(0),
        msg(SECOND, "user"),
        msg(50 * SECOND, "agent"),
        msg(60 * SECOND, "user"),
        end(90 * SECOND, "user"),
    ]
    assert chat_signals(events) == []


def test_chat_opened_and_closed_within_seconds_with_no_message_does_not_flag() -> None:
    assert chat_signals([start(0), end(4 * SECOND, "user")]) == []


def test_chat_opened_and_left_without_any_client_message_does_not_flag() -> None:
    assert chat_signals([start(0), end(10 * MINUTE, "user")]) == []


def test_end_of_an_unknown_chat_does_not_flag() -> None:
    assert chat_signals([end(10 * MINUTE, "user", chat_id="never-started")]) == []


def test_agent_messages_of_another_chat_do_not_answer_this_one() -> None:
    events = [
        start(0, "a"),
        start(0, "b"),
        msg(SECOND, "user", "a"),
        msg(30 * SECOND, "agent", "b"),
        end(3 * MINUTE, "user", "a"),
    ]
    assert len(chat_signals(events)) == 1


def test_second_end_of_the_same_chat_is_ignored() -> None:
    events = [*waiting_chat(0, 3 * MINUTE), end(4 * MINUTE, "user")]
    assert len(chat_signals(events)) == 1


def test_thresholds_come_from_the_config() -> None:
    config = DetectionConfig(chat_min_wait_ms=5 * MINUTE, chat_weak_wait_ms=3 * MINUTE)
    assert [s.strength for s in chat_signals(waiting_chat(0, 4 * MINUTE), config)] == [0.5]
    assert [s.strength for s in chat_signals(waiting_chat(0, 5 * MINUTE), config)] == [1.0]
