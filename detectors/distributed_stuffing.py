"""Distributed credential stuffing: a botnet, hundreds of sources each failing for one or two
accounts, together a surge of failures for many accounts. A security matter, not outreach, and
not an outage either."""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter, deque
from dataclasses import dataclass, field

from detectors.config import DetectionConfig
from signals.events import LoginEvent
from signals.flags import SecurityAlert


@dataclass(slots=True)
class DistributedState:
    """All credential failures of the platform within the window, and the usual level."""

    window: deque[tuple[int, str, str]] = field(default_factory=deque)  # (ts, account, ip)
    accounts: Counter[str] = field(default_factory=Counter)  # failures per account in the window
    ips: Counter[str] = field(default_factory=Counter)  # failures per IP in the window
    started_ts: int | None = None  # first failure seen: the baseline is known one window later
    bucket_end: int | None = None
    baseline: float | None = None  # EWMA of distinct accounts per window, sampled per bucket
    attack_first_ts: int = -1  # first failure in the window when the attack was recognised
    attack_until: int = -1  # event time until which the surge counts as an attack


class DistributedStuffingDetector:
    """Finds a surge of credential failures (reasons in `distributed_stuffing_reasons` or
    `login_nonexistent_account_reasons`) that no single source explains: within
    `distributed_stuffing_window_ms` (10 min), at least `distributed_stuffing_min_accounts` (100)
    distinct accounts from at least `distributed_stuffing_min_ips` (20) distinct IPs, at least
    `distributed_stuffing_surge_factor` (5) times the usual number of failing accounts per window,
    with at most `distributed_stuffing_max_failures_per_account` (2.0) failures per account on
    average: an attacker tries an account once or twice and moves on, people retry.

    How it differs from a login outage: an outage fails with the service's reasons
    (`service_unavailable`, `timeout`: not credential reasons), and even an outage that says
    `bad_password` (a broken password check) leaves people retrying their one account 3 to 8
    times from their own IP, so failures per account stay well above 2.

    It raises one `SecurityAlert` of kind `distributed_stuffing` (`ip` empty, `distinct_ips`
    set) per surge. While the surge lasts, and `distributed_stuffing_hold_ms` (10 min) after,
    failures from an IP that failed for two or more accounts never count towards outreach.

    Where it fails: the first window of a stream only sets the usual level (no alert for 10 min);
    a botnet slower than 5 times the usual rate of failing accounts, or whose every IP tries one
    account once, passes unseen (each victim then has a failure or two: no flag either); a
    platform without credential reasons on its failures is never judged.

    Cost: O(1) amortised per failure; memory is the window's failures.

    Examples
    --------
    >>> from signals.events import LoginEvent
    >>> detector = DistributedStuffingDetector()
    >>> state = DistributedState()
    >>> t0 = 1_795_255_200_000
    >>> ordinary = [LoginEvent(type="login", user_id=f"typo-{i}", ts=t0 + 60_000 * i,
    ...                        outcome="failure", reason="bad_password", ip=f"100.64.0.{i}")
    ...             for i in range(20)]  # one typo a minute for 20 minutes: the usual level
    >>> botnet = [LoginEvent(type="login", user_id=f"victim-{i}", ts=t0 + 1_200_000 + 1_000 * i,
    ...                      outcome="failure", reason="invalid_user", ip=f"198.18.{i % 250}.9")
    ...           for i in range(150)]
    >>> alerts = [detector.learn_one(state, e) for e in ordinary + botnet]
    >>> [(a.kind, a.distinct_accounts, a.distinct_ips) for a in alerts if a is not None]
    [('distributed_stuffing', 100, 100)]
    >>> detector.is_attack(state, t0 + 1_200_000 + 150_000)
    True
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config or DetectionConfig()
        c = self.config
        self._reasons = frozenset(c.distributed_stuffing_reasons) | frozenset(
            c.login_nonexistent_account_reasons
        )
        self._decay = 0.5 ** (
            c.distributed_stuffing_bucket_ms / c.distributed_stuffing_half_life_ms
        )

    def counts(self, event: LoginEvent) -> bool:
        """Whether this failure is a credential failure this detector counts."""
        return event.reason in self._reasons

    def learn_one(self, state: DistributedState, event: LoginEvent) -> SecurityAlert | None:
        """Add one failed login with an IP (in event-time order); an alert on a new surge."""
        if not self.counts(event) or event.ip is None:
            return None
        c = self.config
        ts = event.ts
        if state.started_ts is None:
            state.started_ts = ts
            state.bucket_end = ts + c.distributed_stuffing_bucket_ms
        self._sample(state, ts)
        self._evict(state, ts)
        state.window.append((ts, event.user_id, event.ip))
        state.accounts[event.user_id] += 1
        state.ips[event.ip] += 1
        return self._judge(state, ts)

    def learn_late(self, state: DistributedState, event: LoginEvent) -> SecurityAlert | None:
        """Add a failure older than the newest one learnt (failures of different clients arrive
        in an order that differs from event time by up to their allowed lateness): it takes its
        place in the window and the surge is judged again at the newest failure's time. The
        baseline's buckets behind the newest failure are not sampled again."""
        if not self.counts(event) or event.ip is None:
            return None
        window = state.window
        if not window or event.ts >= window[-1][0]:
            return self.learn_one(state, event)
        newest = window[-1][0]
        if event.ts < newest - self.config.distributed_stuffing_window_ms:
            return None  # already out of the window in order too
        # After every failure at or before its time: in the Kafka runner a copy from another
        # worker's partition is up to the skew allowance late, hundreds of failures on a busy
        # platform, so the place is found by halving, not by stepping back from the end.
        i = bisect.bisect_right(window, event.ts, key=_ts)
        window.insert(i, (event.ts, event.user_id, event.ip))
        state.accounts[event.user_id] += 1
        state.ips[event.ip] += 1
        return self._judge(state, newest)

    def _judge(self, state: DistributedState, ts: int) -> SecurityAlert | None:
        """At event time `ts`, after a failure was added: an alert if a new surge is on."""
        c = self.config
        if not self._surging(state):
            return None
        ongoing = state.attack_until >= ts
        state.attack_until = ts + c.distributed_stuffing_hold_ms
        if ongoing:
            return None
        first_ts = state.window[0][0]
        state.attack_first_ts = first_ts
        digest = hashlib.blake2b(f"distributed_stuffing|{first_ts}".encode(), digest_size=10)
        return SecurityAlert(
            alert_id=f"sec_{digest.hexdigest()}",
            kind="distributed_stuffing",
            ts=ts,
            ip="",
            distinct_accounts=len(state.accounts),
            failures=len(state.window),
            window_ms=c.distributed_stuffing_window_ms,
            first_ts=first_ts,
            distinct_ips=len(state.ips),
        )

    def _surging(self, state: DistributedState) -> bool:
        c = self.config
        accounts = len(state.accounts)
        if state.baseline is None or accounts < c.distributed_stuffing_min_accounts:
            return False
        if len(state.ips) < c.distributed_stuffing_min_ips:
            return False
        if len(state.window) > c.distributed_stuffing_max_failures_per_account * accounts:
            return False
        return accounts >= c.distributed_stuffing_surge_factor * state.baseline

    def _evict(self, state: DistributedState, ts: int) -> None:
        horizon = ts - self.config.distributed_stuffing_window_ms
        window = state.window
        while window and window[0][0] < horizon:
            _, account, ip = window.popleft()
            state.accounts[account] -= 1
            if not state.accounts[account]:
                del state.accounts[account]
            state.ips[ip] -= 1
            if not state.ips[ip]:
                del state.ips[ip]

    def _sample(self, state: DistributedState, ts: int) -> None:
        """At each bucket end before `ts`, fold the window's distinct accounts into the
        baseline (frozen while a surge is on, so an attack does not become the usual level)."""
        c = self.config
        assert state.bucket_end is not None and state.started_ts is not None
        while state.bucket_end <= ts:
            end = state.bucket_end
            self._evict(state, end)
            if end - state.started_ts >= c.distributed_stuffing_window_ms:
                level = float(len(state.accounts))
                if state.baseline is None:
                    state.baseline = level
                elif state.attack_until < end:
                    state.baseline = self._decay * state.baseline + (1 - self._decay) * level
            if not state.window and state.baseline is not None:
                # Quiet: skip the empty buckets at once (the level is 0 in each of them).
                empty = max(0, (ts - end) // c.distributed_stuffing_bucket_ms)
                if state.attack_until < end:
                    state.baseline *= self._decay**empty
                end += empty * c.distributed_stuffing_bucket_ms
            state.bucket_end = end + c.distributed_stuffing_bucket_ms

    def is_attack(self, state: DistributedState, ts: int) -> bool:
        """Whether a distributed attack was on at event time `ts`."""
        return 0 <= state.attack_first_ts <= ts <= state.attack_until


def _ts(entry: tuple[int, str, str]) -> int:
    return entry[0]
