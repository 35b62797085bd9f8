"""Brute force: one source hammering one or a few accounts far beyond human pace or volume. A
security matter, not outreach: the account is under attack, its holder is not locked out."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import statistics
from dataclasses import dataclass, field
from typing import Literal

from detectors.config import DetectionConfig
from detectors.failed_login import SourceVerdict
from signals.events import LoginEvent
from signals.flags import SecurityAlert

Rule = Literal["volume", "pace", "rhythm", "parallel"]


@dataclass(slots=True)
class BruteForceState:
    """Recent failures of one source IP: (ts, account) in event-time order."""

    failures: list[tuple[int, str]] = field(default_factory=list)
    attack_until: int = -1  # event time until which the IP counts as an attacker
    alert_first_ts: int = -1  # first failure (on the hammered account) of the alerted attack
    last_ts: int = 0


class BruteForceDetector:
    """Finds one IP failing logins for one account beyond what a person does, by any of:

    - volume: `brute_force_min_failures` (20) failures within `brute_force_window_ms` (5 min);
      a person locked out tries a handful of times, lock-out policies stop them at 5 to 10;
    - pace: the last `brute_force_pace_attempts` (5) attempts (failures at least
      `login_merge_gap_ms` apart) with a median gap under `brute_force_max_median_gap_ms` (3 s):
      a person reads the error and retypes a password, sshd scanners retry every 2 s;
    - rhythm: the last `brute_force_rhythm_attempts` (6) attempts evenly spaced, every gap
      within `brute_force_rhythm_max_jitter_ms` (1 s) of the others, at any pace: a script's
      timer (a real scanner tried `root` every 3.0 s); people are never that regular;
    - parallel: `brute_force_parallel_failures` (4) failures within `brute_force_parallel_ms`
      (1 s): parallel connections; a double or triple submit is 2 or 3.

    It raises one `SecurityAlert` of kind `brute_force` per attack and marks the IP as an attacker
    from the hammered account's first failure in the window until `brute_force_hold_ms` (1 h)
    after the IP's last failure; `FailedLoginDetector` then leaves that IP's failures out.

    Where it fails: a slow, irregular attack at human pace and volume (one try a minute, with
    jitter) looks like a person;
    a person hammering the button of a broken login page (4 submits within a second) is marked.

    Cost: O(failures of the IP in the window) per failure until the IP is an attacker; after
    that a failure only cuts the window's front in place and is appended; state is kept per IP,
    not per user.

    Examples
    --------
    >>> from signals.events import LoginEvent
    >>> detector = BruteForceDetector()
    >>> state = BruteForceState()
    >>> t0 = 1_795_255_200_000
    >>> alerts = [
    ...     detector.learn_one(state, LoginEvent(type="login", user_id="root", ts=t0 + 2_000 * i,
    ...                        outcome="failure", reason="bad_password", ip="203.0.113.7"))
    ...     for i in range(6)
    ... ]
    >>> [(a.kind, a.rule, a.failures) for a in alerts if a is not None]  # 2 s apart: a script
    [('brute_force', 'pace', 5)]
    >>> detector.is_attack(state, t0 + 60_000)
    True
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config or DetectionConfig()

    def learn_one(self, state: BruteForceState, event: LoginEvent) -> SecurityAlert | None:
        """Add one failed login with an IP (in event-time order); an alert on a new attack."""
        ts = event.ts
        state.last_ts = ts
        failures = state.failures
        horizon = ts - self.config.brute_force_window_ms
        if failures and failures[0][0] < horizon:
            # (in time order: cut the front, not a new list per failure of a long flood)
            del failures[: bisect.bisect_left(failures, (horizon, ""))]
        failures.append((ts, event.user_id))
        if state.attack_until >= ts:
            state.attack_until = ts + self.config.brute_force_hold_ms  # the attack goes on
            return None
        return self._judge(state, event.ip or "", len(failures) - 1)

    def learn_late(self, state: BruteForceState, event: LoginEvent) -> SecurityAlert | None:
        """Add a failure that arrives after later ones of the same IP (a Kafka copy from a
        partition that runs behind), and judge again every later failure it may complete, as
        in-order processing would have (same alert_id; partitions may repeat it, idempotently)."""
        c = self.config
        failures = state.failures
        bisect.insort(failures, (event.ts, event.user_id))
        state.last_ts = max(state.last_ts, event.ts)
        start = bisect.bisect_left(failures, (event.ts, event.user_id))
        for end in range(start, len(failures)):
            end_ts, account = failures[end]
            if account != event.user_id or self.is_attack(state, end_ts):
                continue
            rule, first_ts, _ = self._rule(failures, end)
            if rule is None:
                continue
            if state.alert_first_ts >= 0 and abs(state.alert_first_ts - first_ts) <= (
                c.brute_force_window_ms
            ):
                # Alerted already from a later failure (copies were missing then): same attack.
                state.alert_first_ts = min(state.alert_first_ts, first_ts)
                return None
            until = end_ts + c.brute_force_hold_ms
            for later_ts, _ in failures[end + 1 :]:  # the attack went on
                if later_ts <= until:
                    until = later_ts + c.brute_force_hold_ms
            return self._judge(state, event.ip or "", end, until)
        return None

    def in_order_alert(self, state: BruteForceState, ip: str) -> SecurityAlert | None:
        """The alert in-order processing of the IP's failures would have raised for its current
        attack (the earliest failure completing a rule from `alert_first_ts` on), when failures
        came out of order (`learn_late` found an earlier start of an attack already alerted).
        Changes nothing."""
        if state.alert_first_ts < 0:
            return None
        for end in range(len(state.failures)):
            rule, first_ts, counted = self._rule(state.failures, end)
            if rule is not None and first_ts >= state.alert_first_ts:
                return self._alert(state, ip, end, rule, first_ts, counted)
        return None

    def _judge(
        self, state: BruteForceState, ip: str, end: int, until: int | None = None
    ) -> SecurityAlert | None:
        """Whether the failure at `end` completes an attack; if so mark the IP and alert."""
        rule, first_ts, counted = self._rule(state.failures, end)
        if rule is None:
            return None
        end_ts = state.failures[end][0]
        state.attack_until = max(
            state.attack_until, until or end_ts + self.config.brute_force_hold_ms
        )
        state.alert_first_ts = first_ts
        return self._alert(state, ip, end, rule, first_ts, counted)

    def _alert(
        self, state: BruteForceState, ip: str, end: int, rule: Rule, first_ts: int, counted: int
    ) -> SecurityAlert:
        end_ts = state.failures[end][0]
        window = [
            f
            for f in state.failures[: end + 1]
            if f[0] >= end_ts - self.config.brute_force_window_ms
        ]
        digest = hashlib.blake2b(f"brute_force|{ip}|{first_ts}".encode(), digest_size=10)
        return SecurityAlert(
            alert_id=f"sec_{digest.hexdigest()}",
            kind="brute_force",
            ts=end_ts,
            ip=ip,
            distinct_accounts=len({a for _, a in window}),
            failures=counted,
            window_ms=self.config.brute_force_window_ms,
            first_ts=first_ts,
            rule=rule,
        )

    def _rule(self, failures: list[tuple[int, str]], end: int) -> tuple[Rule | None, int, int]:
        """(rule, first failure, failures counted) for the account of the failure at `end`,
        judged on its failures from this IP within the window ending there."""
        c = self.config
        end_ts, account = failures[end]
        times = [
            t
            for t, a in failures[: end + 1]
            if a == account and t >= end_ts - c.brute_force_window_ms
        ]
        if len(times) >= c.brute_force_min_failures:
            return "volume", times[0], len(times)
        parallel = [t for t in times if t > end_ts - c.brute_force_parallel_ms]
        if len(parallel) >= c.brute_force_parallel_failures:
            return "parallel", parallel[0], len(parallel)
        attempts: list[int] = []
        for t in times:
            if not attempts or t - attempts[-1] >= c.login_merge_gap_ms:
                attempts.append(t)
        last = attempts[-c.brute_force_pace_attempts :]
        if len(last) == c.brute_force_pace_attempts:
            gaps = [b - a for a, b in itertools.pairwise(last)]
            if statistics.median(gaps) < c.brute_force_max_median_gap_ms:
                return "pace", last[0], len([t for t in times if t >= last[0]])
        last = attempts[-c.brute_force_rhythm_attempts :]
        if len(last) == c.brute_force_rhythm_attempts:
            gaps = [b - a for a, b in itertools.pairwise(last)]
            if max(gaps) - min(gaps) <= c.brute_force_rhythm_max_jitter_ms:
                return "rhythm", last[0], len([t for t in times if t >= last[0]])
        return None, 0, 0

    def is_attack(self, state: BruteForceState, ts: int) -> bool:
        """Whether the IP counted as an attacker at event time `ts`."""
        return state.attack_until >= ts and 0 <= state.alert_first_ts <= ts

    def verdict(self, state: BruteForceState, ts: int, now_ms: int | None = None) -> SourceVerdict:
        """Whether this IP's failure at `ts` is an attacker's, as known at `now_ms` (default
        `ts`), and from when that is final. An IP that failed `brute_force_suspect_failures`
        times for one account around `ts` is undecided until the window from `ts` has passed."""
        c = self.config
        now = ts if now_ms is None else now_ms
        if self.is_attack(state, ts):
            return SourceVerdict(True, ts)
        if now >= ts + c.brute_force_window_ms:
            return SourceVerdict(False, ts)
        per_account: dict[str, int] = {}
        for t, account in state.failures:
            if ts - c.brute_force_window_ms <= t <= now:
                per_account[account] = per_account.get(account, 0) + 1
        if max(per_account.values(), default=0) >= c.brute_force_suspect_failures:
            return SourceVerdict(False, ts + c.brute_force_window_ms)
        return SourceVerdict(False, ts)

    @property
    def idle_ms(self) -> int:
        """How long after its last failure nothing of an IP's state matters any more."""
        return max(self.config.brute_force_window_ms, self.config.brute_force_hold_ms)

    def is_idle(self, state: BruteForceState, now_ms: int) -> bool:
        """True when nothing of this IP's state matters any more (safe to forget)."""
        return now_ms - state.last_ts > self.idle_ms
