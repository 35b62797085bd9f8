"""`frustration evaluate`: how well the detectors find the simulated ground truth.

User level: a user is predicted frustrated when they got at least one flag; per signal kind, when
one of their flags carries a signal of that kind. Detection delay is the event time from an
episode's `evident_ts` (when an observer could tell) to the first flag showing that kind.

Clients hit by a simulated outage (`outage` in the truth) are left out of those scores: they are
frustrated by the platform, not individually, and `incident_report` scores them instead: how many
support-queue items the stream made with incident grouping and without it, and whether any
outage client still reached individual outreach.
"""

from __future__ import annotations

import statistics
from collections import Counter
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
from streams.replay import ReplayResult, replay_all


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
    event_lines: list[bytes],
    truth: list[dict[str, Any]],
    config: DetectionConfig | None = None,
    result: ReplayResult | None = None,
) -> list[Score]:
    """Overall and per-kind scores of our detectors on a labelled stream (outage clients left
    out). `result`: a replay of `event_lines` already made, to avoid a second one."""
    if result is None:
        result = replay_all(event_lines, config)
    outage = {t["user_id"] for t in truth if t.get("outage")}
    truth = [t for t in truth if t["user_id"] not in outage]
    flags = [f for f in result.flags if f["user_id"] not in outage]
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


@dataclass(frozen=True, slots=True)
class IncidentReport:
    """Support-queue items of a replay, with and without incident grouping."""

    incidents: dict[str, int]  # cause -> clients attached (last emission of each incident)
    outage_clients: int
    outage_flagged: int
    outage_individual: int  # outage clients whose flag still went to individual outreach
    other_flagged: int  # clients flagged who were not hit by an outage
    other_individual: int  # of them, those in individual outreach
    items_without_grouping: int  # one per flag
    individual_flags: int

    @property
    def items_with_grouping(self) -> int:
        return self.individual_flags + len(self.incidents)

    def lines(self) -> list[str]:
        causes = ", ".join(f"{c}: {n} clients" for c, n in sorted(self.incidents.items()))
        return [
            f"incidents: {len(self.incidents)}" + (f" ({causes})" if causes else ""),
            f"outage clients: {self.outage_clients}, flagged {self.outage_flagged}, "
            f"in individual outreach {self.outage_individual}",
            f"other clients flagged: {self.other_flagged}, in individual outreach "
            f"{self.other_individual}",
            f"support-queue items without incident grouping: {self.items_without_grouping}",
            f"support-queue items with incident grouping: {self.items_with_grouping} "
            f"({self.individual_flags} individual flags + {len(self.incidents)} "
            f"incident{'' if len(self.incidents) == 1 else 's'})",
        ]


def incident_report(result: ReplayResult, truth: list[dict[str, Any]]) -> IncidentReport:
    """Queue items with and without grouping, and where the outage clients ended up. A flag's
    place is that of its last emission (a re-emission with `incident_id` attaches it)."""
    outage = {t["user_id"] for t in truth if t.get("outage")}
    last: dict[str, dict[str, Any]] = {}
    for f in result.flags:
        last[f["flag_id"]] = f
    individual = [f for f in last.values() if f["incident_id"] is None]
    incidents: dict[str, int] = {}
    for i in result.incidents:
        incidents[i["incident_id"]] = i["affected_users"]
    by_cause = {i["cause"]: incidents[i["incident_id"]] for i in result.incidents}
    flagged = {f["user_id"] for f in last.values()}
    alone = {f["user_id"] for f in individual}
    return IncidentReport(
        incidents=by_cause if len(by_cause) == len(incidents) else incidents,
        outage_clients=len(outage),
        outage_flagged=len(flagged & outage),
        outage_individual=len(alone & outage),
        other_flagged=len(flagged - outage),
        other_individual=len(alone - outage),
        items_without_grouping=len(last),
        individual_flags=len(individual),
    )


def lookalike_report(result: ReplayResult, truth: list[dict[str, Any]]) -> list[str]:
    """Per benign look-alike (and victims of the simulated attacks): how many users, how many of
    them flagged (each is a false flag), and the security alerts by kind."""
    flagged = {f["user_id"] for f in result.flags}
    users: dict[str, set[str]] = {}
    for t in truth:
        if t.get("frustrated") or t.get("outage"):
            continue  # an outage client flagged is a true flag of the outage, not a look-alike's
        labels = list(t.get("lookalikes", []))
        if t.get("credential_stuffing_victim"):
            labels.append("credential_stuffing_victim")
        for label in labels:
            users.setdefault(label, set()).add(t["user_id"])
    parts = [f"{label} {len(u)} (flagged {len(u & flagged)})" for label, u in sorted(users.items())]
    kinds = Counter(a["kind"] for a in result.alerts)
    alerts = ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())) or "none"
    return [f"look-alikes: {', '.join(parts) or 'none'}", f"security alerts: {alerts}"]
