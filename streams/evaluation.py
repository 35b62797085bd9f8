"""`frustration evaluate`: how well the detectors find the simulated ground truth.

User level: a user is predicted frustrated when they got at least one flag; per signal kind, when
one of their flags carries a signal of that kind. Detection delay is the event time from an
episode's `evident_ts` (when an observer could tell) to the first flag showing that kind.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from detectors.baselines import BaselineName, BaselineRageClicks
from detectors.config import DetectionConfig
from signals.events import ClickEvent
from signals.exceptions import InvalidEvent
from signals.flags import SIGNAL_KINDS, parse_ts
from signals.wire import parse_event
from streams.replay import replay_lines


@dataclass(frozen=True, slots=True)
class Score:
    name: str
    tp: int
    fp: int
    fn: int
    median_delay_ms: float | None = None

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def line(self) -> str:
        delay = (
            f"{self.median_delay_ms / 1000:8.1f} s"
            if self.median_delay_ms is not None
            else "       -"
        )
        return (
            f"{self.name:<18} {self.precision:9.3f} {self.recall:7.3f} {self.f1:6.3f} "
            f"{self.tp:6d} {self.fp:5d} {self.fn:5d} {delay}"
        )


HEADER = (
    f"{'':<18} {'precision':>9} {'recall':>7} {'F1':>6} {'TP':>6} {'FP':>5} {'FN':>5} "
    f"{'median delay':>10}"
)


def _score(
    name: str,
    predicted: set[str],
    truth: set[str],
    delays: list[int] | None = None,
) -> Score:
    median = statistics.median(delays) if delays else None
    return Score(
        name,
        tp=len(predicted & truth),
        fp=len(predicted - truth),
        fn=len(truth - predicted),
        median_delay_ms=median,
    )


def load_truth(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines if line.strip()]


def evaluate(
    event_lines: list[bytes], truth: list[dict[str, Any]], config: DetectionConfig | None = None
) -> list[Score]:
    """Overall and per-kind scores of our detectors on a labelled stream."""
    flags, _, _ = replay_lines(event_lines, config)
    flagged = {f["user_id"] for f in flags}
    first_seen: dict[tuple[str, str], int] = {}
    for f in flags:
        ts: int = parse_ts(f["ts"])
        for kind in {s["kind"] for s in f["signals"]}:
            first_seen.setdefault((f["user_id"], kind), ts)
    frustrated = {t["user_id"] for t in truth if t["frustrated"]}
    scores = [_score("overall", flagged, frustrated)]
    for kind in SIGNAL_KINDS:
        true_users = {t["user_id"] for t in truth if any(e["kind"] == kind for e in t["episodes"])}
        predicted = {user for (user, k) in first_seen if k == kind}
        delays = []
        for t in truth:
            for e in t["episodes"]:
                key = (t["user_id"], kind)
                if e["kind"] == kind and key in first_seen:
                    delays.append(max(0, first_seen[key] - e["evident_ts"]))
                    break
        scores.append(_score(kind, predicted, true_users, delays))
    return scores


def evaluate_baseline(
    event_lines: list[bytes], truth: list[dict[str, Any]], rule: BaselineName
) -> Score:
    """A published rage-click rule, scored against the rage-click ground truth."""
    events: list[ClickEvent] = []
    for line in event_lines:
        try:
            event = parse_event(line)
        except InvalidEvent:
            continue
        if isinstance(event, ClickEvent):
            events.append(event)
    events.sort(key=lambda e: e.ts)  # give the baseline perfectly ordered input
    detector = BaselineRageClicks(rule)
    first: dict[str, int] = {}
    for event in events:
        if detector.learn_one(event):
            first.setdefault(event.user_id, event.ts)
    true_users = {
        t["user_id"] for t in truth if any(e["kind"] == "rage_click" for e in t["episodes"])
    }
    delays = [
        max(0, first[t["user_id"]] - e["evident_ts"])
        for t in truth
        for e in t["episodes"][:1]
        if e["kind"] == "rage_click" and t["user_id"] in first
    ]
    return _score(f"{rule} rage_click", set(first), true_users, delays)
