"""Repeated failed logins: a client locked out of their own account."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from detectors.config import DetectionConfig
from signals.events import LoginEvent
from signals.flags import FailedLoginEvidence, Signal


@dataclass(slots=True)
class FailedLoginState:
    """One account's recent failed attempts since its last success or last signal."""

    attempts: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    last_failure_ts: int = 0
    last_reason: str | None = None
    deadline: int | None = None  # event time at which the pending attempts are judged
    targeted_until: int = -1  # an attacker failed for this account: nothing counts until then


class SourceVerdict(NamedTuple):
    """What the per-IP detectors (credential stuffing, brute force) say of one failure of an IP."""

    attack: bool
    decided_at: int  # event time from which the verdict is final (<= the asked time: final now)


#: source_verdict(ip, failure_ts, now_ms): is that failure of that IP an attacker's, as known now?
SourceVerdictOf = Callable[[str, int, int], SourceVerdict]


def _always_clean(ip: str, ts: int, now_ms: int) -> SourceVerdict:
    return SourceVerdict(False, ts)


class FailedLoginDetector:
    """Finds an account failing to log in again and again at human pace, with no success after.

    Catches: `login_min_failures` (5) attempts within `login_window_ms` (10 min) when no success
    follows within `login_confirm_ms` (60 s) of the attempt that reached the threshold; 3 or 4
    attempts followed by `login_giveup_ms` (5 min) without a success or another try make a weak
    signal (the client gave up). Failures less than `login_merge_gap_ms` (1 s) apart are one
    attempt (a double submit, or a script).

    What never counts, because there is nobody locked out to contact:

    - failures whose reason is in `login_nonexistent_account_reasons` (`invalid_user`, ...): the
      account does not exist;
    - failures from an IP the credential-stuffing or brute-force detector marks as an attacker
      at that failure's time: those accounts are victims of an attack. While any IP of the
      pending attempts is undecided (a suspect that may still become an attacker within its
      judging window), the judgement waits, for every such IP, until the window from its last
      failure has passed: at most `max(stuffing_window_ms, brute_force_window_ms)` (5 min) after
      the last attempt;
    - any failure of an account an attacker failed for within `login_targeted_hold_ms` (1 h)
      before: an account under attack fails from other scanners too (the `root` of a public
      sshd), and its holder cannot be told from them;
    - attempts from more than `login_max_source_ips` (2) distinct IPs (unless all from one
      device): a person locked out tries from their own device, a botnet from many.

    Where it fails: a client who gives up after two attempts is not caught; a person who shares a
    NAT address with an attacker, or whose account is under attack, goes uncounted meanwhile; a
    slow attacker at human pace from one IP on one account looks like a person locked out.

    Cost: O(attempts in the window) per failure, a few tuples of state per account.

    Score: 1.0 at `login_min_failures` attempts, +0.2 for each attempt more, at most 2.0; 0.5 for a
    weak signal.

    Examples
    --------
    >>> from signals.events import LoginEvent
    >>> detector = FailedLoginDetector()
    >>> state = FailedLoginState()
    >>> t0 = 1_795_255_200_000
    >>> for i in range(5):
    ...     _ = detector.learn_one(state, LoginEvent(type="login", user_id="u1", ts=t0 + 20_000 * i,
    ...                                              outcome="failure", reason="bad_password"))
    >>> detector.advance(state, t0 + 80_000 + 60_000) is None  # still waiting for a success
    True
    >>> signal = detector.advance(state, t0 + 80_000 + 60_001)
    >>> signal.evidence.failures, signal.strength
    (5, 1.0)
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config or DetectionConfig()

    def learn_one(self, state: FailedLoginState, event: LoginEvent) -> None:
        """Add one login attempt (in event-time order). Signals come from `advance`, once a success
        has had `login_confirm_ms` to arrive."""
        c = self.config
        ts = event.ts
        if event.outcome == "success":
            state.attempts.clear()
            state.deadline = None
            return
        if event.reason in c.login_nonexistent_account_reasons:
            return  # no such account: nobody to contact (the IP's detectors still count it)
        merged = bool(state.attempts) and ts - state.last_failure_ts < c.login_merge_gap_ms
        state.last_failure_ts = ts
        state.last_reason = event.reason
        if merged:
            return
        horizon = ts - c.login_window_ms
        if state.attempts and state.attempts[0][0] < horizon:
            state.attempts[:] = [a for a in state.attempts if a[0] >= horizon]
        state.attempts.append((ts, event.ip, event.device_id))
        if len(state.attempts) >= c.login_min_failures:
            if state.deadline is None or len(state.attempts) == c.login_min_failures:
                state.deadline = ts + c.login_confirm_ms  # fixed from the threshold on
        else:
            state.deadline = ts + c.login_giveup_ms  # judged as weak once they stop trying

    def advance(
        self,
        state: FailedLoginState,
        now_ms: int,
        source_verdict: SourceVerdictOf = _always_clean,
    ) -> Signal | None:
        """Judge the pending attempts once event time has passed their deadline. May instead move
        the deadline while an attempt's source IP is undecided (to when every one is decided);
        the caller re-schedules it."""
        deadline = state.deadline
        if deadline is None or now_ms <= deadline:
            return None
        c = self.config
        verdicts = [
            source_verdict(ip, ts, deadline) if ip else SourceVerdict(False, ts)
            for ts, ip, _ in state.attempts
        ]
        undecided = max((v.decided_at for v in verdicts), default=deadline)
        if undecided > deadline:
            state.deadline = undecided
            return None
        attacked = [a[0] for a, v in zip(state.attempts, verdicts, strict=True) if v.attack]
        if attacked:
            state.targeted_until = max(
                state.targeted_until, attacked[-1] + c.login_targeted_hold_ms
            )
        counted = [
            a
            for a, v in zip(state.attempts, verdicts, strict=True)
            if not v.attack and a[0] > state.targeted_until
        ]
        state.attempts.clear()
        state.deadline = None
        ips = {a[1] for a in counted if a[1] is not None}
        devices = {a[2] for a in counted}
        if len(ips) > c.login_max_source_ips and (len(devices) != 1 or None in devices):
            return None  # tries spread over many sources: a botnet's, not one person's
        n = len(counted)
        if n >= c.login_min_failures:
            strength = min(2.0, 1.0 + 0.2 * (n - c.login_min_failures))
        elif n >= c.login_weak_failures:
            strength = 0.5
        else:
            return None
        evidence = FailedLoginEvidence(
            failures=n,
            span_ms=counted[-1][0] - counted[0][0],
            distinct_ips=len({a[1] for a in counted if a[1] is not None}),
            distinct_devices=len({a[2] for a in counted if a[2] is not None}),
            last_reason=state.last_reason,
            waited_for_success_ms=deadline - state.last_failure_ts,
        )
        return Signal(kind="failed_logins", ts=deadline, strength=strength, evidence=evidence)
