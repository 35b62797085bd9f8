"""From signals to flags: score with decay, severity, one open flag per user, cooldown."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from detectors.config import DetectionConfig
from signals.flags import (
    SEVERITIES,
    AbruptChatEvidence,
    FailedLoginEvidence,
    Flag,
    RageClickEvidence,
    Severity,
    Signal,
)

_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(slots=True)
class ScoreState:
    """A user's recent signals and open flag."""

    signals: list[Signal] = field(default_factory=list)  # within the decay horizon
    flag_id: str | None = None
    opened_ts: int = 0
    last_signal_ts: int = 0  # of the open flag
    last_emit_ts: int = 0
    severity: Severity | None = None
    kinds: frozenset[str] = frozenset()  # kinds already shown on the open flag
    updates: int = 0
    flag_signals: list[Signal] = field(default_factory=list)

    def has_open_flag(self, now_ms: int, cooldown_ms: int) -> bool:
        return self.flag_id is not None and now_ms - self.last_signal_ts < cooldown_ms


class FlagScorer:
    """Turns a user's signals into at most one open flag, re-emitted as it escalates.

    Score: the sum over signal kinds of each kind's signals, each decayed by half every
    `score_half_life_ms` (10 min) of event time. A kind with only weak signals (strength < 1) adds
    at most `weak_kind_cap` (0.5), so weak signals of one kind never flag alone; with signals of two
    or more kinds the sum is multiplied by `corroboration_factor` (1.5). A user is flagged at
    `flag_threshold` (1.0): one full signal, or two weak ones of different kinds close together.
    A signal of strength 0 (configured to carry no weight) is ignored. Severity is judged on the
    full signals only (times `corroboration_factor` when of two or more
    kinds): low from 1.0 (and for a flag that weak signals made together), medium from 1.5,
    high from 3.0, critical from 5.0. So a weak signal never raises the severity.

    One open flag per user: signals within `flag_cooldown_ms` (24 h) of the flag's last signal
    join it. The flag is re-emitted (same `flag_id`, `update` + 1) when its severity rises, when a
    signal of a new kind joins, or when a full signal arrives `flag_renewal_ms` (1 h) or more after
    the last emission (new frustration). Every emission's severity is that of its score, so the
    same evidence gets the same severity whatever came before it (a renewal hours later is judged
    on its own evidence, not stepped up from the last emission); a weak signal never raises the
    severity and never renews a flag on its own. A new `flag_id` only after the cooldown.

    Examples
    --------
    >>> from signals.flags import AbruptChatEvidence, FailedLoginEvidence, Signal
    >>> scorer = FlagScorer()
    >>> state = ScoreState()
    >>> t0 = 1_795_255_200_000
    >>> weak_login = Signal(kind="failed_logins", ts=t0, strength=0.5, evidence=FailedLoginEvidence(
    ...     failures=3, span_ms=40_000, distinct_ips=1, distinct_devices=1,
    ...     waited_for_success_ms=60_000))
    >>> scorer.add(state, "u1", weak_login) is None  # weak alone never flags
    True
    >>> weak_chat = Signal(kind="abrupt_chat_end", ts=t0 + 60_000, strength=0.5,
    ...     evidence=AbruptChatEvidence(chat_id="c1", waited_ms=90_000, unanswered_messages=2,
    ...     agent_messages=0, ended_by="user", duration_ms=95_000))
    >>> flag = scorer.add(state, "u1", weak_chat)
    >>> flag.severity, round(flag.score, 2), [s.kind for s in flag.signals]
    ('low', 1.45, ['failed_logins', 'abrupt_chat_end'])
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config or DetectionConfig()

    def score(self, state: ScoreState, now_ms: int) -> float:
        """The user's score at event time `now_ms` (signals after it are not counted)."""
        return self._scores(state, now_ms)[0]

    def severity_score(self, state: ScoreState, now_ms: int) -> float:
        """The score of the kinds with a full signal only (weak-only kinds and the corroboration
        they bring left out): what severity is judged on, so a weak signal never raises it."""
        return self._scores(state, now_ms)[1]

    def _scores(self, state: ScoreState, now_ms: int) -> tuple[float, float]:
        c = self.config
        by_kind: dict[str, float] = {}
        full_by_kind: dict[str, float] = {}  # full signals only
        for s in state.signals:
            if s.ts > now_ms:
                continue
            decayed = s.strength * 0.5 ** ((now_ms - s.ts) / c.score_half_life_ms)
            by_kind[s.kind] = by_kind.get(s.kind, 0.0) + decayed
            if s.strength >= 1.0:
                full_by_kind[s.kind] = full_by_kind.get(s.kind, 0.0) + decayed
        total = sum(v if k in full_by_kind else min(v, c.weak_kind_cap) for k, v in by_kind.items())
        if len(by_kind) >= 2:
            total *= c.corroboration_factor
        full = sum(full_by_kind.values())
        if len(full_by_kind) >= 2:
            full *= c.corroboration_factor
        return total, full

    def flag_severity(self, state: ScoreState, now_ms: int) -> Severity:
        """Severity of the evidence at `now_ms`: from the full signals' score; low when only
        weak signals together made the flag."""
        return self.severity(self.severity_score(state, now_ms))

    def severity(self, score: float) -> Severity:
        c = self.config
        if score >= c.severity_critical:
            return "critical"
        if score >= c.severity_high:
            return "high"
        if score >= c.severity_medium:
            return "medium"
        return "low"

    def add(self, state: ScoreState, user_id: str, signal: Signal) -> Flag | None:
        """Add one signal (in event-time order); return the flag to emit, if any."""
        c = self.config
        if signal.strength <= 0:
            return None  # configured to carry no weight (e.g. rage_untargeted_strength=0)
        now = signal.ts
        # Forget signals whose contribution has decayed below 1 % (about 6.6 half-lives).
        horizon = now - int(6.65 * c.score_half_life_ms)
        state.signals = [s for s in state.signals if s.ts >= horizon]
        state.signals.append(signal)
        score = self.score(state, now)
        open_flag = state.has_open_flag(now, c.flag_cooldown_ms)
        if not open_flag and score < c.flag_threshold:
            return None
        if not open_flag:
            state.flag_id = _flag_id(user_id, now)
            state.opened_ts = now
            state.updates = 0
            state.severity = self.flag_severity(state, now)
            state.kinds = frozenset({signal.kind})
            state.flag_signals = list(state.signals)  # every signal the score was built from
            return self._emit(state, user_id, signal, score)
        assert state.severity is not None
        state.flag_signals.append(signal)
        state.last_signal_ts = now
        # Severity is that of the evidence now (the decayed score), whatever was emitted before,
        # so the same evidence always gets the same severity; a weak signal never raises it.
        weak = signal.strength < 1.0
        new_severity = self.flag_severity(state, now)  # weak signals do not count in it
        rises = _RANK[new_severity] > _RANK[state.severity]
        renewed = not weak and now - state.last_emit_ts >= c.flag_renewal_ms
        new_kind = signal.kind not in state.kinds
        if not (renewed or new_kind or rises):
            return None
        state.severity = new_severity
        state.kinds = state.kinds | {signal.kind}
        state.updates += 1
        return self._emit(state, user_id, signal, score)

    def _emit(self, state: ScoreState, user_id: str, signal: Signal, score: float) -> Flag:
        assert state.flag_id is not None and state.severity is not None
        state.flag_signals = state.flag_signals[-self.config.max_signals_per_flag :]
        state.kinds = state.kinds | {s.kind for s in state.flag_signals}
        state.last_signal_ts = signal.ts
        state.last_emit_ts = signal.ts
        return Flag(
            flag_id=state.flag_id,
            user_id=user_id,
            ts=signal.ts,
            severity=state.severity,
            score=round(score, 3),
            signals=tuple(state.flag_signals),
            reason=explain(state.flag_signals),
            opened_ts=state.opened_ts,
            update=state.updates,
        )


def _flag_id(user_id: str, opened_ts: int) -> str:
    digest = hashlib.blake2b(f"{user_id}|{opened_ts}".encode(), digest_size=10).hexdigest()
    return f"flg_{digest}"


def _duration(ms: int) -> str:
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes = ms / 60_000
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def describe(signal: Signal) -> str:
    """One clause an agent can read, from the evidence only."""
    e = signal.evidence
    if isinstance(e, RageClickEvidence):
        control = f"“{e.label}”" if e.label else (e.target or "one control")
        where = f" on {e.page}" if e.page else ""
        if e.rule == "burst":
            return f"clicked {control} {e.clicks} times in {_duration(e.span_ms)}{where}"
        return (
            f"hammered {control} in {e.bursts} bursts ({e.clicks} clicks) "
            f"within {_duration(e.span_ms)}{where}"
        )
    if isinstance(e, FailedLoginEvidence):
        why = f" ({e.last_reason})" if e.last_reason else ""
        return (
            f"failed to log in {e.failures} times in {_duration(e.span_ms)}{why} "
            f"with no success after"
        )
    if isinstance(e, AbruptChatEvidence):
        who = {"user": "left", "system": "was cut off from", "timeout": "timed out of"}[e.ended_by]
        return f"{who} a chat after waiting {_duration(e.waited_ms)} for a reply"
    raise TypeError(f"unknown evidence {type(e).__name__}")


def explain(signals: list[Signal]) -> str:
    """One plain sentence: the latest signal of each kind, strongest kind first."""
    latest: dict[str, Signal] = {}
    for s in signals:
        latest[s.kind] = s
    ordered = sorted(latest.values(), key=lambda s: -s.strength)
    text = "; ".join(describe(s) for s in ordered)
    return f"The client {text}."
