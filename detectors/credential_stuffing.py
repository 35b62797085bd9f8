"""Credential stuffing: one source failing logins for many accounts. A security matter, not
outreach: the accounts it touches are victims, and are never flagged for it."""

from __future__ import annotations

import bisect
import hashlib
import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from detectors.config import DetectionConfig
from detectors.failed_login import SourceVerdict
from signals.events import LoginEvent
from signals.flags import SecurityAlert, SecurityAlertKind


@dataclass(slots=True)
class RecentAccounts:
    """How many distinct accounts an IP failed for since a horizon that only moves forward:
    each account's newest failure, and a heap of (time, account) to forget them by. Counting
    the window's accounts again at every failure cost O(window): one IP failing 16,000 times in
    5 minutes for 10 accounts took 2 s, growing with the square of the rate.

    >>> recent = RecentAccounts()
    >>> for ts, account in [(1, "a"), (2, "b"), (3, "a"), (5, "c")]:
    ...     recent.add(ts, account)
    >>> recent.count_since(0), recent.count_since(3), recent.count_since(4)
    (3, 2, 1)
    """

    newest: dict[str, int] = field(default_factory=dict)
    heap: list[tuple[int, str]] = field(default_factory=list)

    def add(self, ts: int, account: str) -> None:
        """One failure, in any order."""
        if ts > self.newest.get(account, -1):
            self.newest[account] = ts
            heapq.heappush(self.heap, (ts, account))

    def count_since(self, horizon: int) -> int:
        """Distinct accounts with a failure at or after `horizon` (never less than the horizon
        of an earlier call: what is before it is forgotten)."""
        heap, newest = self.heap, self.newest
        while heap and heap[0][0] < horizon:
            ts, account = heapq.heappop(heap)
            if newest.get(account) == ts:
                del newest[account]
        return len(newest)


@dataclass(slots=True)
class SourceState:
    """Recent failures of one source IP: (ts, account) in event-time order."""

    failures: list[tuple[int, str]] = field(default_factory=list)
    attack_until: int = -1  # event time until which the IP counts as an attacker
    alert_first_ts: int = -1  # first failure of the attack that was alerted
    alert_ts: int = -1  # the failure that completed it (the alert's ts)
    until_before: int = -1  # attack_until before that alert (the end of any earlier attack)
    last_ts: int = 0
    unknown: list[tuple[int, str]] = field(default_factory=list)  # failures for no such account
    scan_until: int = -1  # the same four, for the account-scan rule
    scan_first_ts: int = -1
    scan_alert_ts: int = -1
    scan_until_before: int = -1
    # The accounts of `failures` and `unknown` in the rule's window, counted as they come, and
    # in all they keep (a late failure that cannot reach the rule then walks nothing).
    accounts: RecentAccounts = field(default_factory=RecentAccounts)
    unknown_accounts: RecentAccounts = field(default_factory=RecentAccounts)
    kept_accounts: RecentAccounts = field(default_factory=RecentAccounts)
    kept_unknown: RecentAccounts = field(default_factory=RecentAccounts)


@dataclass(frozen=True, slots=True)
class Revision:
    """The alert in-order processing would have raised for an attack already alerted: a failure
    came out of order and shows the attack crossed the rule earlier (same attack, another
    `alert_id`, since the id names its first failure). It replaces that alert while the engine
    still holds it (`source_alert_hold_ms`)."""

    alert: SecurityAlert


class CredentialStuffingDetector:
    """Finds a source IP failing logins for `stuffing_min_accounts` (15) distinct accounts within
    `stuffing_window_ms` (5 min), the pattern Azure Sentinel calls password spraying.

    It raises one `SecurityAlert` per attack (again only after the IP has been quiet for
    `stuffing_hold_ms`), and marks the IP as an attacker until `stuffing_hold_ms` after its last
    failure; `FailedLoginDetector` then leaves that IP's failures out of its counts.

    It also finds an IP failing for `stuffing_min_unknown_accounts` (5) distinct accounts that do
    not exist (reasons in `login_nonexistent_account_reasons`) within that window: a scanner
    walking a list of names (`admin`, `oracle`, `test`, ...) slowly enough to stay under 15
    accounts in 5 minutes, while a person mistypes their own name once or twice. It raises an
    `account_scan` alert and marks the IP in the same way (a real scanner tried 8 names, 7 of
    them unknown, in 4 minutes while retrying `root` at a person's pace).

    Where it fails: attacks spread over many IPs (botnets) pass below the per-IP thresholds; a
    large office behind one NAT address with 15 people mistyping within 5 minutes, or 5 people
    typing user names that do not exist, would be marked.

    Cost: O(log failures in the window) per failure in event-time order (its accounts are
    counted as they come, `RecentAccounts`), O(failures in the window and the hold after it) for
    one that comes out of order and when an alert is raised; state is kept per IP, not per user.
    One IP failing 64,000 times in an hour: 0.8 s of engine time in all.

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
        # Failures are kept a hold longer than the window: a late one can then still be judged
        # against every failure in-order processing would have seen with it.
        self._kept_ms = self.config.stuffing_window_ms + self.config.source_alert_hold_ms

    def learn_one(self, state: SourceState, event: LoginEvent) -> SecurityAlert | None:
        """Add one failed login with an IP (in event-time order); an alert on a new attack."""
        c = self.config
        ts = event.ts
        state.last_ts = ts
        failures = state.failures
        _forget_before(failures, ts - self._kept_ms)
        failures.append((ts, event.user_id))
        state.accounts.add(ts, event.user_id)
        state.kept_accounts.add(ts, event.user_id)
        state.kept_accounts.count_since(ts - self._kept_ms)
        scan = self._learn_scan(state, event)
        if state.attack_until >= ts:
            state.attack_until = ts + c.stuffing_hold_ms  # the attack goes on
            return None
        accounts = state.accounts.count_since(ts - c.stuffing_window_ms)
        if accounts < c.stuffing_min_accounts:
            return scan
        window = _in_window(failures, ts - c.stuffing_window_ms)
        state.until_before, state.attack_until = state.attack_until, ts + c.stuffing_hold_ms
        first = window[0][0]
        state.alert_first_ts, state.alert_ts = first, ts
        return self._alert(event.ip or "", ts, accounts, len(window), first)

    def _learn_scan(self, state: SourceState, event: LoginEvent) -> SecurityAlert | None:
        """The account-scan rule for one failure in event-time order (see the class)."""
        c = self.config
        ts = event.ts
        unknown = state.unknown
        horizon = ts - c.stuffing_window_ms
        _forget_before(unknown, ts - self._kept_ms)
        state.kept_unknown.count_since(ts - self._kept_ms)
        if event.reason not in c.login_nonexistent_account_reasons:
            if state.scan_until >= ts:
                state.scan_until = ts + c.stuffing_hold_ms  # the scan goes on
            return None
        unknown.append((ts, event.user_id))
        state.unknown_accounts.add(ts, event.user_id)
        state.kept_unknown.add(ts, event.user_id)
        if state.scan_until >= ts:
            state.scan_until = ts + c.stuffing_hold_ms
            return None
        names = state.unknown_accounts.count_since(horizon)
        if names < c.stuffing_min_unknown_accounts:
            return None
        window = _in_window(unknown, horizon)
        state.scan_until_before, state.scan_until = state.scan_until, ts + c.stuffing_hold_ms
        # The alert starts at the IP's first failure in the window, whatever its reason.
        first = state.scan_first_ts = _in_window(state.failures, horizon)[0][0]
        state.scan_alert_ts = ts
        if self._stuffing(state, ts):
            return None  # one alert per attack: credential stuffing has said it
        return self._alert(event.ip or "", ts, names, len(window), first, "account_scan")

    def _alert(
        self,
        ip: str,
        ts: int,
        accounts: int,
        failures: int,
        first_ts: int,
        kind: SecurityAlertKind = "credential_stuffing",
    ) -> SecurityAlert:
        key = f"{ip}|{first_ts}" if kind == "credential_stuffing" else f"{kind}|{ip}|{first_ts}"
        digest = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
        return SecurityAlert(
            alert_id=f"sec_{digest}",
            kind=kind,
            ts=ts,
            ip=ip,
            distinct_accounts=accounts,
            failures=failures,
            window_ms=self.config.stuffing_window_ms,
            first_ts=first_ts,
        )

    def learn_late(self, state: SourceState, event: LoginEvent) -> SecurityAlert | Revision | None:
        """Add a failure that arrives after later ones of the same IP: a client's batch that
        came after another's, or in the Kafka runner a copy from a partition that runs behind.
        If it completes an attack this state had missed, the IP is marked from the attack's
        first failure (so its victims are left out) and the alert is raised as in-order
        processing would have raised it: same alert_id, ts and counts. If it shows an attack
        already alerted crossed the rule earlier, the in-order alert comes as a `Revision`.
        Several partitions may raise the same alert; it is idempotent by alert_id."""
        bisect.insort(state.failures, (event.ts, event.user_id))
        state.accounts.add(event.ts, event.user_id)
        state.kept_accounts.add(event.ts, event.user_id)
        state.last_ts = max(state.last_ts, event.ts)
        stuffing = self._stuffing_late(state, event)
        scan = self._scan_late(state, event)
        return stuffing or scan

    def _stuffing_late(
        self, state: SourceState, event: LoginEvent
    ) -> SecurityAlert | Revision | None:
        failures = state.failures
        if len(state.kept_accounts.newest) < self.config.stuffing_min_accounts:
            return None  # no window of what is kept reaches the rule
        if 0 <= state.alert_first_ts <= state.alert_ts <= event.ts and (
            failures[-1][0] <= state.attack_until
        ):
            return None  # inside the attack already alerted, to its newest failure: the same
        return self._stuffing_walk(state, event)

    def _stuffing_walk(
        self, state: SourceState, event: LoginEvent
    ) -> SecurityAlert | Revision | None:
        """Every window of the IP's failures that ends at or after the late one, in turn: the
        first that crosses the rule and is not the attack already alerted. O(failures kept);
        `_stuffing_late` calls it only when a window may cross."""
        c = self.config
        failures = state.failures
        for start, end, end_ts, accounts in _windows(failures, c.stuffing_window_ms):
            if accounts < c.stuffing_min_accounts or end_ts < event.ts:
                continue  # below the rule, or a crossing already judged without this failure
            first = failures[start][0]
            if state.until_before < end_ts < state.alert_ts:
                # In order, the alerted attack would have been alerted here.
                state.alert_first_ts, state.alert_ts = first, end_ts
                alert = self._alert(event.ip or "", end_ts, accounts, end - start + 1, first)
                return Revision(alert)
            if self.is_attack(state, end_ts):
                continue
            later = (t for t, _ in failures[end + 1 :])  # the attack went on
            state.until_before = state.attack_until
            state.attack_until = max(state.attack_until, _held_until(end_ts, later, c))
            state.alert_first_ts, state.alert_ts = first, end_ts
            return self._alert(event.ip or "", end_ts, accounts, end - start + 1, first)
        return None

    def _scan_late(self, state: SourceState, event: LoginEvent) -> SecurityAlert | Revision | None:
        """The account-scan rule for a failure that arrives after later ones (as above)."""
        c = self.config
        if event.reason not in c.login_nonexistent_account_reasons:
            return None
        unknown = state.unknown
        bisect.insort(unknown, (event.ts, event.user_id))
        state.unknown_accounts.add(event.ts, event.user_id)
        state.kept_unknown.add(event.ts, event.user_id)
        if len(state.kept_unknown.newest) < c.stuffing_min_unknown_accounts:
            return None  # no window of what is kept reaches the rule
        if 0 <= state.scan_first_ts <= state.scan_alert_ts <= event.ts and (
            unknown[-1][0] <= state.scan_until
        ):
            return None  # inside the scan already alerted, to its newest failure: the same
        return self._scan_walk(state, event)

    def _scan_walk(self, state: SourceState, event: LoginEvent) -> SecurityAlert | Revision | None:
        """As `_stuffing_walk`, for the account-scan rule."""
        c = self.config
        unknown = state.unknown
        for start, end, end_ts, names in _windows(unknown, c.stuffing_window_ms):
            if names < c.stuffing_min_unknown_accounts or end_ts < event.ts:
                continue
            horizon = end_ts - c.stuffing_window_ms
            first = next(t for t, _ in state.failures if t >= horizon)
            if state.scan_until_before < end_ts < state.scan_alert_ts:
                state.scan_first_ts, state.scan_alert_ts = first, end_ts
                if self._stuffing(state, end_ts):
                    return None  # one alert per attack: credential stuffing has said it
                return Revision(
                    self._alert(
                        event.ip or "", end_ts, names, end - start + 1, first, "account_scan"
                    )
                )
            if self._scanning(state, end_ts):
                continue
            later = (t for t, _ in state.failures if t > end_ts)  # the scan went on
            state.scan_until_before = state.scan_until
            state.scan_until = max(state.scan_until, _held_until(end_ts, later, c))
            state.scan_first_ts, state.scan_alert_ts = first, end_ts
            if self._stuffing(state, end_ts):
                return None
            return self._alert(
                event.ip or "", end_ts, names, end - start + 1, first, "account_scan"
            )
        return None

    def is_attack(self, state: SourceState, ts: int) -> bool:
        """Whether the IP counted as an attacker (either rule) at event time `ts`."""
        return self._stuffing(state, ts) or self._scanning(state, ts)

    @staticmethod
    def _stuffing(state: SourceState, ts: int) -> bool:
        return state.attack_until >= ts and state.alert_first_ts <= ts

    @staticmethod
    def _scanning(state: SourceState, ts: int) -> bool:
        return state.scan_until >= ts and 0 <= state.scan_first_ts <= ts

    def verdict(self, state: SourceState, ts: int, now_ms: int | None = None) -> SourceVerdict:
        """Whether this IP's failure at `ts` is an attacker's, as known at `now_ms` (default
        `ts`), and from when that is final. An IP that failed for `stuffing_suspect_accounts`
        accounts around `ts` but is no attacker (yet) is undecided until the stuffing window from
        `ts` has passed: an attack that reaches `stuffing_min_accounts` later than that starts
        after `ts` and does not cover it."""
        window = self.config.stuffing_window_ms
        now = ts if now_ms is None else now_ms
        if self.is_attack(state, ts):
            return SourceVerdict(True, ts)
        if now >= ts + window:
            return SourceVerdict(False, ts)
        accounts = {account for t, account in state.failures if ts - window <= t <= now}
        if len(accounts) >= self.config.stuffing_suspect_accounts:
            return SourceVerdict(False, ts + window)
        return SourceVerdict(False, ts)

    @property
    def idle_ms(self) -> int:
        """How long after its last failure nothing of an IP's state matters any more."""
        return max(self.config.stuffing_window_ms, self.config.stuffing_hold_ms)

    def is_idle(self, state: SourceState, now_ms: int) -> bool:
        """True when nothing of this IP's state matters any more (safe to forget)."""
        return now_ms - state.last_ts > self.idle_ms


def _forget_before(entries: list[tuple[int, str]], horizon: int) -> None:
    if entries and entries[0][0] < horizon:
        del entries[: bisect.bisect_left(entries, (horizon, ""))]


def _in_window(entries: list[tuple[int, str]], horizon: int) -> list[tuple[int, str]]:
    """The entries (in ts order) at or after `horizon`."""
    return entries[bisect.bisect_left(entries, (horizon, "")) :]


def _windows(entries: list[tuple[int, str]], window_ms: int) -> Iterator[tuple[int, int, int, int]]:
    """For each (ts, account) of `entries` (in ts order) as the end of a window of `window_ms`:
    (index of the window's first entry, index of its end, end ts, distinct accounts in it)."""
    accounts: Counter[str] = Counter()
    start = 0
    for end, (end_ts, account) in enumerate(entries):
        accounts[account] += 1
        while entries[start][0] < end_ts - window_ms:
            gone = entries[start][1]
            accounts[gone] -= 1
            if not accounts[gone]:
                del accounts[gone]
            start += 1
        yield start, end, end_ts, len(accounts)


def _held_until(end_ts: int, later: Iterable[int], config: DetectionConfig) -> int:
    """Until when an attack that crossed at `end_ts` stays marked, given the IP's later failures
    (in ts order): each one within the hold extends it."""
    until = end_ts + config.stuffing_hold_ms
    for ts in later:
        if ts <= until:
            until = ts + config.stuffing_hold_ms
    return until
