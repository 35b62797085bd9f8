"""Small builders of events, streams and engine runs for the unit tests (fixed timestamps only)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from detectors.config import DetectionConfig
from detectors.engine import DetectionEngine, LateEvent, Output
from signals.events import ChatEvent, ClickEvent, LoginEvent
from signals.flags import Flag, SecurityAlert, Signal
from signals.wire import AnyEvent, parse_event_object

#: 2026-11-21T10:00:00Z
T0 = 1_795_255_200_000
SECOND = 1_000
MINUTE = 60_000
HOUR = 3_600_000

_ids = itertools.count(1)

#: The default allowed lateness (per user): arrival jitter within it must change nothing.
LATENESS_MS = DetectionConfig().allowed_lateness_ms


def wire(type_: str, user: str = "u1", dt: int = 0, **fields: Any) -> dict[str, Any]:
    """One wire-format event as a dict (`ts` = T0 + dt, epoch ms); None values are left out."""
    obj: dict[str, Any] = {"type": type_, "user_id": user, "ts": T0 + dt}
    obj.update({k: v for k, v in fields.items() if v is not None})
    return obj


def line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def click(dt: int = 0, user: str = "u1", **fields: Any) -> ClickEvent:
    """A click, parsed through the wire format. Defaults: the "Pay now" button on /billing."""
    fields.setdefault("target", "#pay")
    fields.setdefault("page", "/billing")
    fields.setdefault("label", "Pay now")
    fields.setdefault("element", "button")
    event = parse_event_object(wire("click", user, dt, **fields))
    assert isinstance(event, ClickEvent)
    return event


def login(dt: int = 0, user: str = "u1", outcome: str = "failure", **fields: Any) -> LoginEvent:
    if outcome == "failure":
        fields.setdefault("reason", "bad_password")
    event = parse_event_object(wire("login", user, dt, outcome=outcome, **fields))
    assert isinstance(event, LoginEvent)
    return event


def chat(dt: int = 0, user: str = "u1", chat_id: str = "c1", **fields: Any) -> ChatEvent:
    event = parse_event_object(wire("chat", user, dt, chat_id=chat_id, **fields))
    assert isinstance(event, ChatEvent)
    return event


def with_id(event: AnyEvent, event_id: str | None = None) -> AnyEvent:
    """The same event with an event_id (a fresh unique one unless given)."""
    return event.model_copy(update={"event_id": event_id or f"ev-{next(_ids)}"})


# -- streams --------------------------------------------------------------------------------------
def clicks(
    start: int,
    n: int,
    gap: int | Sequence[int],
    user: str = "u1",
    **fields: Any,
) -> list[ClickEvent]:
    """`n` clicks from T0 + start; `gap` is one gap for all or the list of the n - 1 gaps."""
    gaps = [gap] * (n - 1) if isinstance(gap, int) else list(gap)
    assert len(gaps) == n - 1
    out, t = [], start
    for i in range(n):
        out.append(click(t, user, **fields))
        if i < n - 1:
            t += gaps[i]
    return out


def failures(
    start: int, n: int, gap: int, user: str = "u1", *, irregular: bool = False, **fields: Any
) -> list[LoginEvent]:
    """`n` failed logins `gap` apart; `irregular` ones as a person (or a jittered script) makes
    them: every other one a quarter gap late, so gaps alternate 1.25 and 0.75 of `gap` (never the
    even rhythm of a timer, which is brute force)."""
    late = gap // 4 if irregular else 0
    return [login(start + i * gap + late * (i % 2), user, "failure", **fields) for i in range(n)]


def waiting_chat(
    start: int,
    wait: int,
    user: str = "u1",
    chat_id: str = "c1",
    ended_by: str | None = "user",
) -> list[ChatEvent]:
    """Chat opened, one client message 1 s later, ended `wait` ms after that message."""
    return [
        chat(start, user, chat_id, action="start"),
        chat(start + SECOND, user, chat_id, action="message", sender="user"),
        chat(start + SECOND + wait, user, chat_id, action="end", ended_by=ended_by),
    ]


# -- engine runs ----------------------------------------------------------------------------------
def learn_all(detector: Any, state: Any, events: Iterable[AnyEvent]) -> list[Signal]:
    """Feed events one by one to a detector's `learn_one` and collect the signals it returns."""
    out: list[Signal] = []
    for event in events:
        signal = detector.learn_one(state, event)
        if signal is not None:
            out.append(signal)
    return out


def run_engine(
    events: Iterable[AnyEvent], config: DetectionConfig | None = None, flush: bool = True
) -> list[Output]:
    engine = DetectionEngine(config)
    for event in events:
        engine.push(event)
    if flush:
        engine.flush()
    return engine.drain()


def flags_of(outputs: Iterable[Output]) -> list[Flag]:
    return [o for o in outputs if isinstance(o, Flag)]


def signals_of(outputs: Iterable[Output]) -> list[Signal]:
    return [o for o in outputs if isinstance(o, Signal)]


def alerts_of(outputs: Iterable[Output]) -> list[SecurityAlert]:
    return [o for o in outputs if isinstance(o, SecurityAlert)]


def late_of(outputs: Iterable[Output]) -> list[LateEvent]:
    return [o for o in outputs if isinstance(o, LateEvent)]


def engine_flags(events: Iterable[AnyEvent], config: DetectionConfig | None = None) -> list[Flag]:
    return flags_of(run_engine(events, config))


def by_ts(events: Iterable[AnyEvent]) -> list[AnyEvent]:
    return sorted(events, key=lambda e: e.ts)


def jittered(
    events: Iterable[AnyEvent], seed: int, max_jitter_ms: int = LATENESS_MS
) -> list[AnyEvent]:
    """Arrival order: event time plus a random delay in [0, max_jitter_ms) (default: within the
    allowed lateness)."""
    rng = random.Random(seed)
    keyed = [(e.ts + rng.randrange(max_jitter_ms), i, e) for i, e in enumerate(events)]
    return [e for _, _, e in sorted(keyed, key=lambda k: (k[0], k[1]))]


# -- a mixed stream with every kind of signal -----------------------------------------------------
def mixed_stream() -> list[AnyEvent]:
    """Rage clicks, a lock-out, an abandoned chat, benign look-alikes, and a credential-stuffing
    attack, over a few users; every event has a unique event_id; in event-time order."""
    events: list[AnyEvent] = []
    events += clicks(0, 8, 250, "rage")  # one burst of 8
    events += clicks(5 * MINUTE, 6, 400, "rage", target="#send", page="/messages", label="Send")
    events += failures(10 * SECOND, 6, 20 * SECOND, "locked", ip="100.64.0.1", irregular=True)
    events += waiting_chat(30 * SECOND, 3 * MINUTE, "chatter")
    events += clicks(0, 12, 150, "stepper", target="#qty-plus", label="+")
    events += [login(2 * SECOND, "typo"), login(9 * SECOND, "typo", "success")]
    # weak pair: 3 failed logins (weak) and a chat left after 90 s (weak)
    events += failures(MINUTE, 3, 15 * SECOND, "weakpair", ip="100.64.0.9")
    events += waiting_chat(3 * MINUTE, 90 * SECOND, "weakpair", chat_id="c-weak")
    # credential stuffing: one IP, 16 accounts, 10 s apart
    events += [
        login(20 * MINUTE + i * 10 * SECOND, f"victim-{i:02d}", ip="198.51.100.23")
        for i in range(16)
    ]
    return [with_id(e, f"m-{i:04d}") for i, e in enumerate(by_ts(events))]
