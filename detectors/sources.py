"""What the failed logins of one source IP say about it, across users: credential stuffing and
account scans (`CredentialStuffingDetector`), brute force on one account (`BruteForceDetector`),
and a botnet's surge over all IPs (`DistributedStuffingDetector`). Security matters, not
outreach: this raises their alerts, and tells `FailedLoginDetector` which of a user's failures
were an attacker's (`verdict`), so that those are left out of the user's lock-out judgement.

The engine feeds it every failed login that names an IP, on arrival, whatever its user's clock
says (a failure late for its user still counts for its IP). It keeps time per IP: a failure that
comes after later ones of its IP is added out of order (`learn_late`), giving the state and
alert in-order processing would have given. An alert is held a while of its IP's time, so that
such a failure can still replace it with the in-order one.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Protocol

from detectors.brute_force import BruteForceDetector, BruteForceState
from detectors.config import DetectionConfig
from detectors.credential_stuffing import CredentialStuffingDetector, Revision, SourceState
from detectors.distributed_stuffing import DistributedState, DistributedStuffingDetector
from detectors.failed_login import SourceVerdict
from detectors.state import heap_of, pop_idle
from signals.flags import SecurityAlert
from signals.wire import AnyEvent


class SourceCounts(Protocol):
    """The counters this keeps in its owner's stats."""

    alerts_revised_too_late: int  # in-order alert found after its attack's was sent
    source_copies_late: int  # copies older than their IP's time - the lateness


class SourceJudge:
    """Per-IP state of failed logins, their security alerts, and the verdict on each failure.

    `emit(alert)` is called for each alert once it is final (after its hold); `stats` receives
    its counters (the engine passes its `EngineStats`).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from signals.events import LoginEvent
    >>> alerts = []
    >>> judge = SourceJudge(
    ...     DetectionConfig(),
    ...     SimpleNamespace(alerts_revised_too_late=0, source_copies_late=0),
    ...     lambda alert: alerts.append(alert) if alert else None,
    ... )
    >>> t0 = 1_795_255_200_000
    >>> for i in range(15):  # one IP, fifteen accounts, a second apart
    ...     judge.learn(LoginEvent(type="login", user_id=f"victim-{i}", ts=t0 + 1000 * i,
    ...                            outcome="failure", ip="203.0.113.9"), copy=False)
    >>> judge.verdict("203.0.113.9", t0 + 3000, now_ms=t0 + 20_000).attack  # a victim's failure
    True
    >>> alerts  # held a while of the IP's time, in case a failure comes out of order
    []
    >>> judge.release_alerts(t0 + 14_000 + 60_000)
    >>> [(a.kind, a.distinct_accounts) for a in alerts]
    [('credential_stuffing', 15)]
    """

    def __init__(
        self,
        config: DetectionConfig,
        stats: SourceCounts,
        emit: Callable[[SecurityAlert | None], None],
    ) -> None:
        self.config = config
        self._stats = stats
        self._emit = emit
        self.stuffing = CredentialStuffingDetector(config)
        self.brute = BruteForceDetector(config)
        self.distributed = DistributedStuffingDetector(config)
        self.sources: dict[str, SourceState] = {}
        self.brute_sources: dict[str, BruteForceState] = {}
        self.surge = DistributedState()  # the platform's credential failures, for botnets
        # Per-IP alerts held for a while of their IP's time, by (ip, kind), with whether
        # credential stuffing already explained them (brute force): a failure that comes out of
        # order (another client's batch, a Kafka copy from a partition running behind) may still
        # show the attack crossed its rule earlier, and the alert in-order processing would have
        # raised is the one given. Brute force is held brute_force_window_ms, credential
        # stuffing and account scans source_alert_hold_ms.
        self.held_alerts: dict[tuple[str, str], tuple[SecurityAlert, bool]] = {}
        # (a time at or before its last failure, ip), one entry per IP, so that forgetting idle
        # IPs looks only at those that may be idle. Rebuilt on restore (`reindex`).
        self._idle_ips: list[tuple[int, str]] = []
        self._idle_brute_ips: list[tuple[int, str]] = []
        # IPs whose per-IP state changed since a runner last took them (`take_changed_ips`):
        # what a runner that stores state per IP has to write. Not part of the snapshot.
        self.changed_ips: set[str] = set()

    def learn(self, event: AnyEvent, *, copy: bool) -> None:
        """A failed login with an IP, into the per-IP detectors on arrival, in the IP's own time:
        in order when it is the IP's newest, else added out of order (`learn_late`), which gives
        the state and alert in-order processing would have given. The platform-wide surge takes
        it in its place too (arrival order across clients differs from event time)."""
        if event.type != "login" or event.outcome != "failure" or event.ip is None:
            return
        ip, ts = event.ip, event.ts
        self.changed_ips.add(ip)
        source = self.sources.get(ip)
        if source is None:
            source = self.sources[ip] = SourceState()
            heapq.heappush(self._idle_ips, (ts, ip))
        brute_source = self.brute_sources.get(ip)
        if brute_source is None:
            brute_source = self.brute_sources[ip] = BruteForceState()
            heapq.heappush(self._idle_brute_ips, (ts, ip))
        if not source.failures or ts >= source.last_ts:
            self._hold(self.stuffing.learn_one(source, event))
        else:
            if copy and ts < source.last_ts - self.config.allowed_lateness_ms:
                self._stats.source_copies_late += 1
            self._hold(self.stuffing.learn_late(source, event))
        held = self.held_alerts.get((ip, "brute_force"))
        if not brute_source.failures or ts >= brute_source.last_ts:
            brute = self.brute.learn_one(brute_source, event)
        else:
            first_before = brute_source.alert_first_ts
            brute = self.brute.learn_late(brute_source, event)
            if brute is None and held is not None and brute_source.alert_first_ts < first_before:
                brute = self.brute.in_order_alert(brute_source, ip)  # the same attack, earlier
        if brute is not None:
            if held is not None and brute.first_ts > held[0].first_ts:
                self._release_alert((ip, "brute_force"))  # a new attack: the held one is final
            # One alert per attack: when the IP is a credential stuffer, stuffing says it.
            explained = self.stuffing.is_attack(source, brute.ts)
            self.held_alerts[(ip, "brute_force")] = (brute, explained)
        self.release_alerts(brute_source.last_ts, ip)
        surge = self.surge
        if surge.window and ts < surge.window[-1][0]:
            self._emit(self.distributed.learn_late(surge, event))
        else:
            self._emit(self.distributed.learn_one(surge, event))

    def _hold(self, out: SecurityAlert | Revision | None) -> None:
        """A credential-stuffing or account-scan alert waits `source_alert_hold_ms` of its IP's
        time; a `Revision` replaces the held alert of its attack (one already released stays
        as it was: counted, not sent twice)."""
        if out is None:
            return
        if isinstance(out, Revision):
            key = (out.alert.ip, out.alert.kind)
            if key in self.held_alerts:
                self.held_alerts[key] = (out.alert, False)
            else:
                self._stats.alerts_revised_too_late += 1
            return
        key = (out.ip, out.kind)
        if key in self.held_alerts:
            self._release_alert(key)  # a new attack: the held one is final
        self.held_alerts[key] = (out, False)

    def _release_alert(self, key: tuple[str, str]) -> None:
        alert, explained = self.held_alerts.pop(key)
        if not explained:
            self._emit(alert)

    def release_alerts(self, now_ms: int | None, ip: str | None = None) -> None:
        """Raise the held alerts whose IP's time (`ip`'s, or the shared clock for all) is their
        hold past them; every one when `now_ms` is None."""
        held = self.held_alerts
        if not held:
            return
        c = self.config
        for key in sorted(k for k in held if ip is None or k[0] == ip):
            alert = held[key][0]
            hold = c.brute_force_window_ms if key[1] == "brute_force" else c.source_alert_hold_ms
            if now_ms is None or now_ms - alert.ts >= hold:
                self._release_alert(key)

    def verdict(self, ip: str, ts: int, now_ms: int) -> SourceVerdict:
        """The IP's failure at `ts`, as known at `now_ms`: an attack if any per-IP detector says
        so; otherwise final once every one of them has decided."""
        source = self.sources.get(ip)
        brute = self.brute_sources.get(ip)
        # An attacker first, before the suspect checks, which walk the IP's failures: a flood
        # from one IP asks this for every attempt of every account it hits.
        if (source is not None and self.stuffing.is_attack(source, ts)) or (
            brute is not None and self.brute.is_attack(brute, ts)
        ):
            return SourceVerdict(True, ts)
        verdicts = []
        if source is not None:
            verdicts.append(self.stuffing.verdict(source, ts, now_ms))
        if brute is not None:
            verdicts.append(self.brute.verdict(brute, ts, now_ms))
        if source is not None and self.distributed.is_attack(self.surge, ts):
            # During a botnet's surge an IP failing for several accounts is one of its sources.
            window = self.config.stuffing_window_ms
            if len({a for t, a in source.failures if ts - window <= t <= now_ms}) >= 2:
                return SourceVerdict(True, ts)
        return SourceVerdict(False, max((v.decided_at for v in verdicts), default=ts))

    def forget_idle(self, now: int) -> None:
        """Forget the IPs whose state no longer matters at `now` (the shared clock)."""
        for ip in pop_idle(self._idle_ips, self.sources, now - self.stuffing.idle_ms):
            del self.sources[ip]
            self.changed_ips.add(ip)
        for ip in pop_idle(self._idle_brute_ips, self.brute_sources, now - self.brute.idle_ms):
            del self.brute_sources[ip]
            self.changed_ips.add(ip)

    def take_changed_ips(self) -> set[str]:
        """The IPs whose state changed (or was forgotten) since the last call."""
        changed, self.changed_ips = self.changed_ips, set()
        return changed

    def reindex(self) -> None:
        """Rebuild the idle indexes after the state was restored."""
        self._idle_ips = heap_of((s.last_ts, ip) for ip, s in self.sources.items())
        self._idle_brute_ips = heap_of((b.last_ts, ip) for ip, b in self.brute_sources.items())
