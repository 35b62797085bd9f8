"""One contract, every detector: deterministic, state survives a pickle round trip mid-stream,
order within the lateness does not matter (through the engine), bad fields never get in."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from detectors.abrupt_chat import AbruptChatEndDetector, AbruptChatState
from detectors.engine import DetectionEngine
from detectors.failed_login import FailedLoginDetector, FailedLoginState
from detectors.rage_click import RageClickDetector, RageClickState
from signals.exceptions import InvalidEvent
from signals.wire import AnyEvent, parse_event
from tests.unit.builders import (
    MINUTE,
    SECOND,
    by_ts,
    chat,
    click,
    clicks,
    failures,
    flags_of,
    jittered,
    line,
    login,
    mixed_stream,
    run_engine,
    signals_of,
    waiting_chat,
    wire,
)


# -- one adapter per detector ---------------------------------------------------------------------
class Runner:
    """Feeds events one at a time into a detector and its state; `state` must be picklable."""

    def new_state(self) -> Any:
        raise NotImplementedError

    def step(self, state: Any, event: AnyEvent) -> list[Any]:
        raise NotImplementedError

    def finish(self, state: Any) -> list[Any]:
        return []


class RageRunner(Runner):
    def __init__(self) -> None:
        self.detector = RageClickDetector()

    def new_state(self) -> RageClickState:
        return RageClickState()

    def step(self, state: RageClickState, event: AnyEvent) -> list[Any]:
        assert event.type == "click"
        signal = self.detector.learn_one(state, event)
        return [] if signal is None else [signal]


class LoginRunner(Runner):
    def __init__(self) -> None:
        self.detector = FailedLoginDetector()

    def new_state(self) -> FailedLoginState:
        return FailedLoginState()

    def _due(self, state: FailedLoginState, before: int | None) -> list[Any]:
        out = []
        while state.deadline is not None and (before is None or state.deadline < before):
            signal = self.detector.advance(state, state.deadline + 1)
            if signal is not None:
                out.append(signal)
        return out

    def step(self, state: FailedLoginState, event: AnyEvent) -> list[Any]:
        assert event.type == "login"
        out = self._due(state, event.ts)
        self.detector.learn_one(state, event)
        return out

    def finish(self, state: FailedLoginState) -> list[Any]:
        return self._due(state, None)


class ChatRunner(Runner):
    def __init__(self) -> None:
        self.detector = AbruptChatEndDetector()

    def new_state(self) -> AbruptChatState:
        return AbruptChatState()

    def step(self, state: AbruptChatState, event: AnyEvent) -> list[Any]:
        assert event.type == "chat"
        signal = self.detector.learn_one(state, event)
        return [] if signal is None else [signal]


class EngineRunner(Runner):
    """The whole engine; its state is the engine itself (pickled whole, or via snapshot)."""

    def new_state(self) -> DetectionEngine:
        return DetectionEngine()

    def step(self, state: DetectionEngine, event: AnyEvent) -> list[Any]:
        state.push(event)
        return state.drain()

    def finish(self, state: DetectionEngine) -> list[Any]:
        state.flush()
        return state.drain()


# -- streams --------------------------------------------------------------------------------------
def rage_stream() -> list[AnyEvent]:
    events = [
        *clicks(0, 8, 250),  # burst
        *clicks(10 * SECOND, 20, 100, target="#qty", label="+"),  # stepper
        *[
            click(20 * SECOND + i * 150, target="#p", element="p", label=None, detail=1 + i % 3)
            for i in range(9)
        ],  # triple-click selection
        *clicks(30 * SECOND, 4, 300, target="#send", page="/messages"),
        *clicks(50 * SECOND, 4, 300, target="#send", page="/messages"),
        *clicks(70 * SECOND, 5, 300, target="#send", page="/messages"),  # repeated bursts
        *[click(90 * SECOND + i * 200, target=None, x=400 + 5 * i, y=300) for i in range(7)],
        *clicks(2 * MINUTE, 10, 1_500),  # slow
    ]
    return by_ts(events)


def login_stream() -> list[AnyEvent]:
    events = [
        *failures(0, 5, 20 * SECOND),  # lock-out
        login(5 * MINUTE, outcome="success"),
        *failures(6 * MINUTE, 3, 15 * SECOND),  # weak
        *failures(20 * MINUTE, 10, 500),  # scripted: one attempt
        *failures(30 * MINUTE, 5, 20 * SECOND),
        login(30 * MINUTE + 80 * SECOND + 30 * SECOND, outcome="success"),  # cleared in time
        *failures(40 * MINUTE, 7, 30 * SECOND, ip="100.64.3.3", device_id="d1"),
    ]
    return by_ts(events)


def chat_stream() -> list[AnyEvent]:
    events = [
        *waiting_chat(0, 3 * MINUTE, chat_id="a"),
        *waiting_chat(MINUTE, 90 * SECOND, chat_id="b", ended_by="timeout"),  # weak
        *waiting_chat(2 * MINUTE, 10 * MINUTE, chat_id="c", ended_by="agent"),
        chat(20 * MINUTE, chat_id="d", action="start"),
        chat(20 * MINUTE + 3 * SECOND, chat_id="d", action="end", ended_by="user"),
        chat(30 * MINUTE, chat_id="e", action="message", sender="user"),
        chat(31 * MINUTE, chat_id="e", action="message", sender="agent"),
        chat(31 * MINUTE + 20 * SECOND, chat_id="e", action="end", ended_by="user"),
        *waiting_chat(40 * MINUTE, 5 * MINUTE, chat_id="f", ended_by="system"),
    ]
    return by_ts(events)


@dataclass(frozen=True)
class Case:
    name: str
    runner: Callable[[], Runner]
    stream: Callable[[], list[AnyEvent]]
    bad_lines: tuple[bytes, ...]

    def __str__(self) -> str:
        return self.name


CASES = [
    Case(
        "rage_click",
        RageRunner,
        rage_stream,
        (
            line(wire("click", x="left")),
            line(wire("click", detail=-2)),
            line(wire("click", target=["#a"])),
            line(wire("click", ts=1.5e12)),
        ),
    ),
    Case(
        "failed_login",
        LoginRunner,
        login_stream,
        (
            line(wire("login")),
            line(wire("login", outcome="locked")),
            line(wire("login", outcome="failure", ip=17)),
            line(wire("login", outcome=True)),
        ),
    ),
    Case(
        "abrupt_chat",
        ChatRunner,
        chat_stream,
        (
            line(wire("chat", action="end")),
            line(wire("chat", chat_id="c", action="close")),
            line(wire("chat", chat_id="c", action="message")),
            line(wire("chat", chat_id="c", action="end", ended_by="client")),
            line(wire("chat", chat_id="", action="start")),
        ),
    ),
    Case(
        "engine",
        EngineRunner,
        mixed_stream,
        (
            line(wire("scroll")),
            line(wire("click", user="")),
            line(wire("click", ts="2026-11-21T10:00:00")),
            line(wire("login", outcome="failure", ts=1_795_255_200)),
        ),
    ),
]


def run(case: Case, events: list[AnyEvent]) -> list[Any]:
    runner = case.runner()
    state = runner.new_state()
    out: list[Any] = []
    for event in events:
        out += runner.step(state, event)
    return out + runner.finish(state)


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def test_stream_produces_output(case: Case) -> None:
    assert signals_of(run(case, case.stream())), "the contract stream should exercise the detector"


def test_same_input_twice_gives_equal_output(case: Case) -> None:
    stream = case.stream()
    assert run(case, stream) == run(case, stream)
    assert run(case, case.stream()) == run(case, stream)  # rebuilt from scratch


@pytest.mark.parametrize("fraction", [0.1, 0.33, 0.5, 0.77, 0.95])
def test_state_pickled_mid_stream_continues_identically(case: Case, fraction: float) -> None:
    stream = case.stream()
    expected = run(case, stream)
    cut = int(len(stream) * fraction)
    runner = case.runner()
    state = runner.new_state()
    out: list[Any] = []
    for event in stream[:cut]:
        out += runner.step(state, event)
    copy = pickle.loads(pickle.dumps(state))
    # the original goes on too, unaffected by the copy
    fresh = case.runner()
    for event in stream[cut:]:
        out_copy = fresh.step(copy, event)
        out_orig = runner.step(state, event)
        assert out_copy == out_orig
        out += out_copy
    out += fresh.finish(copy)
    assert out == expected


def test_engine_snapshot_restore_mid_stream_continues_identically(case: Case) -> None:
    stream = jittered(case.stream(), seed=7)
    expected = run_engine(stream)
    cut = len(stream) // 2
    first = DetectionEngine()
    for event in stream[:cut]:
        first.push(event)
    second = DetectionEngine()
    second.restore(first.snapshot())
    for event in stream[cut:]:
        second.push(event)
    second.flush()
    assert first.drain() + second.drain() == expected


@pytest.mark.parametrize("seed", range(4))
def test_out_of_order_within_the_lateness_gives_identical_flags(case: Case, seed: int) -> None:
    stream = case.stream()
    expected = run_engine(stream)
    shuffled = run_engine(jittered(stream, seed))
    assert flags_of(shuffled) == flags_of(expected)
    assert signals_of(shuffled) == signals_of(expected)


def test_bad_fields_are_rejected_at_parse(case: Case) -> None:
    for raw in case.bad_lines:
        with pytest.raises(InvalidEvent):
            parse_event(raw)
