"""Credential stuffing: one source failing logins for many accounts. A security matter, not
outreach: the accounts it touches are victims, and are never flagged for it."""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

from detectors.config import DetectionConfig
from detectors.failed_login import SourceVerdict
from signals.events import LoginEvent
from signals.flags import SecurityAlert


@dataclass(slots=True)
class SourceState:
    """Recent failures of one source IP: (ts, account) in event-time order."""

    failures: list[tuple[int, str]] = field(default_factory=list)
    attack_until: int = -1  # event time until which the IP counts as an attacker
    alert_first_ts: int = -1  # first failure of the attack that was alerted
    last_ts: int = 0


class CredentialStuffingDetector:
    """Finds a source IP failing logins for `stuffing_min_accounts` (15) distinct accounts within
    `stuffing_window_ms` (5 min), the pattern Azure Sentinel calls password spraying.

    It raises one `SecurityAlert` per attack (again only after the IP has been quiet for
    `stuffing_hold_ms`), and marks the IP as an attacker until `stuffing_hold_ms` after its last
    failure; `FailedLoginDetector` then leaves that IP's failures out of its counts.

    Where it fails: attacks spread over many IPs (botnets) pass below the per-IP threshold; a large
    office behind one NAT address with 15 people mistyping within 5 minutes would be marked.

    Cost: O(failures in the window) per failure of that IP; state is kept per IP, not per user.

    Examples
    --------
    >>> from signals.events import LoginEvent
    >>> detector = CredentialStuffingDetector()
    >>> state = SourceState()
    >>> t0 = 1_795_255_200_000
    >>> alerts = [
    ...     detector.learn_one(state, LoginEvent(type="login", user_id=f"victim-{i}",
    ...                        ts=t0 + 1000 * i, outcome="failure", ip="203.0.113.9"))
    ...     for i in range(15)
    ... ]
    >>> [a.distinct_accounts for a in alerts if a is not None]
    [15]
    >>> detector.is_attack(state, t0 + 20_000)
    True
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config or DetectionConfig()

    def learn_one(self, state: SourceState, event: LoginEvent) -> SecurityAlert | None:
        """Add one failed login with an IP (in event-time order); an alert on a new attack."""
        c = self.config
        ts = event.ts
        state.last_ts = ts
        horizon = ts - c.stuffing_window_ms
        failures = state.failures
        if failures and failures[0][0] < horizon:
            failures[:] = [f for f in failures if f[0] >= horizon]
        failures.append((ts, event.user_id))
        if state.attack_until >= ts:
            state.attack_until = ts + c.stuffing_hold_ms  # the attack goes on
            return None
        accounts = {f[1] for f in failures}
        if len(accounts) < c.stuffing_min_accounts:
            return None
        state.attack_until = ts + c.stuffing_hold_ms
        first = failures[0][0]
        state.alert_first_ts = first
        ip = event.ip or ""
        digest = hashlib.blake2b(f"{ip}|{first}".encode(), digest_size=10).hexdigest()
        return SecurityAlert(
            alert_id=f"sec_{digest}",
            ts=ts,
            ip=ip,
            distinct_accounts=len(accounts),
            failures=len(failures),
            window_ms=c.stuffing_window_ms,
            first_ts=first,
        )

    def learn_late(self, state: SourceState, event: LoginEvent) -> None:
        """Add a failure that arrives after later ones of the same IP: in the Kafka runner, a copy
        from a partition that runs behind. It counts towards the window around it and can mark
        the IP as an attacker (so victims' failures are left out), but never raises an alert:
        the partition that owns the event judges it in order."""
        c = self.config
        ts = event.ts
        bisect.insort(state.failures, (ts, event.user_id))
        state.last_ts = max(state.last_ts, ts)
        if self.is_attack(state, ts):
            return
        # The earliest window of `stuffing_window_ms` that this failure completes, if any.
        for start_ts, _ in state.failures:
            if start_ts < ts - c.stuffing_window_ms:
                continue
            if start_ts > ts:
                break
            window = [
                f for f in state.failures if start_ts <= f[0] <= start_ts + c.stuffing_window_ms
            ]
            if len({account for _, account in window}) >= c.stuffing_min_accounts:
                first = state.alert_first_ts if state.attack_until >= start_ts else start_ts
                state.alert_first_ts = (
                    min(first, start_ts) if state.alert_first_ts >= 0 else start_ts
                )
                state.attack_until = max(state.attack_until, window[-1][0] + c.stuffing_hold_ms)
                return

    def is_attack(self, state: SourceState, ts: int) -> bool:
        """Whether the IP counted as an attacker at event time `ts`."""
        return state.attack_until >= ts and state.alert_first_ts <= ts

    def verdict(self, state: SourceState, ts: int) -> SourceVerdict:
        """Attack or not at event time `ts`, and from when that is final. An IP that failed for
        `stuffing_suspect_accounts` accounts but fewer than `stuffing_min_accounts` is undecided
        until its stuffing window has passed."""
        if self.is_attack(state, ts):
            return SourceVerdict(True, ts)
        horizon = ts - self.config.stuffing_window_ms
        recent = [f for f in state.failures if horizon <= f[0] <= ts]
        if len({account for _, account in recent}) >= self.config.stuffing_suspect_accounts:
            return SourceVerdict(False, recent[0][0] + self.config.stuffing_window_ms)
        return SourceVerdict(False, ts)

    def is_idle(self, state: SourceState, now_ms: int) -> bool:
        """True when nothing of this IP's state matters any more (safe to forget)."""
        c = self.config
        return now_ms - state.last_ts > max(c.stuffing_window_ms, c.stuffing_hold_ms)
