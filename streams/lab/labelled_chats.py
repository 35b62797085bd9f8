"""Score the chat detector on labelled real chats (the dev IRC slice, or any file like it).

The labels file has one JSON object per chat that ended with the client leaving: `chat_id`,
`user_id`, `expect_flag` (`yes`, `no` or `either`) and a `case`. The detector judges a
*departure* (a client leaving ends all their open chats at once) and makes one signal for it, so
scoring is by departure: its expectation is `yes` when any of its chats is `yes`, `no` when all
are `no`, else `either`; it counts as flagged when an emitted flag carries a signal of one of its
chats. `max_signals_per_departure` shows whether a departure made one signal or several.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from detectors.config import DetectionConfig
from streams.replay import replay_all


@dataclass(slots=True)
class ChatScore:
    """Flagged chats by expectation, and what was flagged against it."""

    labelled: Counter[str] = field(default_factory=Counter)  # departures per expectation
    flagged: Counter[str] = field(default_factory=Counter)  # flagged departures per expectation
    false_flags: list[list[dict[str, Any]]] = field(default_factory=list)  # `no` flagged
    missed: list[list[dict[str, Any]]] = field(default_factory=list)  # `yes` not flagged
    max_signals_per_departure: int = 0

    def line(self) -> str:
        parts = [f"{k} {self.flagged[k]}/{self.labelled[k]}" for k in ("yes", "no", "either")]
        return (
            "departures flagged (of labelled): "
            + ", ".join(parts)
            + f"; most signals from one departure: "
            f"{self.max_signals_per_departure}"
        )


def score_chats(
    events: Iterable[bytes], labels: Iterable[bytes], config: DetectionConfig | None = None
) -> ChatScore:
    """Replay `events` and join the flagged departures with `labels`."""
    events = list(events)
    ends: dict[str, tuple[str, int]] = {}  # chat_id -> its departure (user, end ts)
    for raw in events:
        if b'"end"' in raw:
            event = orjson.loads(raw)
            if event.get("type") == "chat" and event.get("action") == "end":
                ends.setdefault(event["chat_id"], (event["user_id"], event["ts"]))
    result = replay_all(events, config)
    flagged_chats: set[str] = set()
    per_departure: dict[tuple[str, int], set[str]] = {}
    for flag in result.flags:
        for signal in flag["signals"]:
            chat_id = signal["evidence"].get("chat_id")
            if chat_id is None:
                continue
            flagged_chats.add(chat_id)
            per_departure.setdefault((flag["user_id"], signal["ts"]), set()).add(chat_id)
    score = ChatScore()
    score.max_signals_per_departure = max((len(v) for v in per_departure.values()), default=0)
    departures: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for raw in labels:
        if raw.strip():
            label = orjson.loads(raw)
            departures.setdefault(ends[label["chat_id"]], []).append(label)
    for chats in departures.values():
        expected = {label["expect_flag"] for label in chats}
        expect = "yes" if "yes" in expected else "no" if expected == {"no"} else "either"
        score.labelled[expect] += 1
        if any(label["chat_id"] in flagged_chats for label in chats):
            score.flagged[expect] += 1
            if expect == "no":
                score.false_flags.append(chats)
        elif expect == "yes":
            score.missed.append(chats)
    return score


def main() -> None:  # pragma: no cover - a lab tool: python -m streams.lab.labelled_chats
    import sys

    events, labels = sys.argv[1], sys.argv[2]
    with open(events, "rb") as ev, open(labels, "rb") as lab:
        score = score_chats(ev, lab)
    print(score.line())
    for label in score.false_flags:
        print("false flag:", orjson.dumps(label).decode())
    for label in score.missed:
        print("missed:", orjson.dumps(label).decode())


if __name__ == "__main__":  # pragma: no cover
    main()
