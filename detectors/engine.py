"""The detector core: events in (in any order within the allowed lateness), signals, flags and
security alerts out, in event time. No I/O and no clock: the same input gives the same output.

The data path, for one event::

    push(event) ── duplicate event_id? ──> counted, dropped
        │         later than the watermark? ──> LateEvent in the outbox (runners dead-letter it)
        ▼
    reorder buffer (heap by event time) ── released once older than the watermark
        ▼                                  (= newest event time seen - allowed_lateness_ms)
    due timers fire first (login confirmations), then the user's detectors:
        click ─> RageClickDetector      login ─> CredentialStuffingDetector (per IP)
                                                  BruteForceDetector (per IP)
                                                  DistributedStuffingDetector (all IPs)
                                                  FailedLoginDetector (per account)
        chat  ─> AbruptChatEndDetector
        ▼
    Signal ─> FlagScorer ─> Flag

Runners (`streams.embedded.runner`, `streams.kafka.worker`) call `push` for each event and drain
`outbox`; `flush` at the end of a finite input releases everything and fires every timer.

The Kafka runner runs one engine per partition of users. Credential stuffing is judged per IP,
across users, so each partition's engine also receives every other partition's failed logins as
*source-only* copies (`push(event, source_only=True)`): they feed the per-IP state and nothing
else, so every engine judges an IP exactly as one engine seeing everything would.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from detectors.abrupt_chat import AbruptChatEndDetector, AbruptChatState
from detectors.brute_force import BruteForceDetector, BruteForceState
from detectors.config import DetectionConfig
from detectors.credential_stuffing import CredentialStuffingDetector, SourceState
from detectors.distributed_stuffing import DistributedState, DistributedStuffingDetector
from detectors.failed_login import FailedLoginDetector, FailedLoginState, SourceVerdict
from detectors.rage_click import RageClickDetector, RageClickState
from detectors.scoring import FlagScorer, ScoreState
from detectors.state import dump_state, load_state
from signals.flags import Flag, SecurityAlert, Signal
from signals.wire import AnyEvent

#: Bump when the layout of the state changes, so an old checkpoint is refused, not misread.
STATE_VERSION = 4

#: How often (event time) idle users are swept out of memory.
SWEEP_INTERVAL_MS = 60_000


@dataclass(slots=True)
class UserState:
    """Everything the detectors remember about one user; each part is created when first needed."""

    last_ts: int
    clicks: RageClickState | None = None
    logins: FailedLoginState | None = None
    chats: AbruptChatState | None = None
    score: ScoreState | None = None

    def forget_detectors(self) -> None:
        """Drop detector windows (all shorter than the idle TTL); keep the score and open flag."""
        self.clicks = self.logins = self.chats = None


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event that arrived after the watermark had passed its time: not processed, reported."""

    event: AnyEvent
    watermark_ms: int


Output = Signal | Flag | SecurityAlert | LateEvent


@dataclass(slots=True)
class EngineStats:
    """Counts since start, for summaries and metrics."""

    events: Counter[str] = field(default_factory=Counter)  # processed, by type
    source_copies: int = 0  # source-only copies processed (Kafka runner)
    source_copies_late: int = 0  # copies that came after the watermark (added out of order)
    duplicates: int = 0
    late: int = 0
    signals: Counter[str] = field(default_factory=Counter)  # by kind
    flags: Counter[str] = field(default_factory=Counter)  # new flags by severity
    escalations: Counter[str] = field(default_factory=Counter)  # re-emissions by severity
    alerts: int = 0


class DetectionEngine:
    """Runs the three detectors and the scorer over a stream of events, in event time.

    Examples
    --------
    >>> from signals.events import ClickEvent
    >>> engine = DetectionEngine()
    >>> t0 = 1_795_255_200_000
    >>> for i in reversed(range(8)):  # arrival order does not matter within the lateness
    ...     engine.push(ClickEvent(type="click", user_id="u1", ts=t0 + 250 * i, target="#pay",
    ...                            label="Pay now", page="/billing"))
    >>> engine.flush()
    >>> flags = [o for o in engine.outbox if isinstance(o, Flag)]
    >>> [(f.severity, f.reason) for f in flags]
    [('low', 'The client clicked “Pay now” 6 times in 1.2 s on /billing.')]
    """

    def __init__(
        self,
        config: DetectionConfig | None = None,
        *,
        alerts_for: Callable[[str], bool] | None = None,
    ) -> None:
        """`alerts_for(ip)`: whether this engine raises the security alerts of that IP. With one
        engine per Kafka partition every engine judges every IP (from the copies), and exactly
        one of them, the IP's own partition, raises its alerts."""
        self.config = config or DetectionConfig()
        self._alerts_for = alerts_for
        self.rage = RageClickDetector(self.config)
        self.logins = FailedLoginDetector(self.config)
        self.stuffing = CredentialStuffingDetector(self.config)
        self.brute = BruteForceDetector(self.config)
        self.distributed = DistributedStuffingDetector(self.config)
        self.chats = AbruptChatEndDetector(self.config)
        self.scorer = FlagScorer(self.config)
        self.users: dict[str, UserState] = {}
        self.sources: dict[str, SourceState] = {}
        self.brute_sources: dict[str, BruteForceState] = {}
        self.surge = DistributedState()  # the platform's credential failures, for botnets
        self.outbox: list[Output] = []
        self.stats = EngineStats()
        # (ts, user_id, tiebreak, seq, source_only, event): a total order, whatever the arrival.
        self._buffer: list[tuple[int, str, str, int, bool, AnyEvent]] = []
        self._seq = 0
        self._timers: list[tuple[int, str]] = []
        self._seen: set[str] = set()
        self._seen_order: deque[tuple[int, str]] = deque()  # (ts, event_id) in arrival order
        self._max_ts: int | None = None
        self._last_sweep = 0

    # -- input ------------------------------------------------------------------------------------
    @property
    def watermark_ms(self) -> int | None:
        """Events older than this are late; everything older has been processed."""
        if self._max_ts is None:
            return None
        return self._max_ts - self.config.allowed_lateness_ms

    def push(self, event: AnyEvent, *, source_only: bool = False) -> None:
        """Accept one event; outputs it completes are appended to `outbox`.

        `source_only`: a failed login owned by another engine, seen here only for the per-IP
        credential-stuffing state (no user state, no alert, not counted as an event)."""
        ts = event.ts
        event_id = event.event_id
        if event_id is not None:
            if event_id in self._seen:
                self.stats.duplicates += 1
                return
            self._seen.add(event_id)
            self._seen_order.append((ts, event_id))
        max_ts = self._max_ts
        if max_ts is not None and ts < max_ts - self.config.allowed_lateness_ms:
            if source_only:  # the owning engine reports the event itself; the IP still counts it
                self.stats.source_copies_late += 1
                self._learn_source_late(event)
            else:
                self.stats.late += 1
                self.outbox.append(LateEvent(event, max_ts - self.config.allowed_lateness_ms))
            return
        tiebreak = event_id if event_id is not None else event.model_dump_json()
        self._seq += 1
        heapq.heappush(self._buffer, (ts, event.user_id, tiebreak, self._seq, source_only, event))
        # Copies come from other partitions, which may run ahead: only a partition's own events
        # move its event time, or a copy could make the partition's own events late.
        if not source_only and (max_ts is None or ts > max_ts):
            self._max_ts = max_ts = ts
            self._release(max_ts - self.config.allowed_lateness_ms)

    def advance_watermark(self, ts: int) -> None:
        """Move event time forward without an event (input went quiet); never backwards."""
        if self._max_ts is None or ts > self._max_ts:
            self._max_ts = ts
            watermark = ts - self.config.allowed_lateness_ms
            self._release(watermark)
            self._fire_timers(watermark)

    def flush(self) -> None:
        """End of input: process everything buffered and fire every pending timer."""
        self._release(None)
        self._fire_timers(None)

    # -- processing -------------------------------------------------------------------------------
    def _release(self, watermark: int | None) -> None:
        buffer = self._buffer
        while buffer and (watermark is None or buffer[0][0] < watermark):
            _, _, _, _, source_only, event = heapq.heappop(buffer)
            if source_only:
                self._observe_source(event)
            else:
                self._process(event)
        if watermark is not None and self._seen_order:
            self._forget_event_ids(watermark - self.config.dedup_window_ms)

    def _reach(self, ts: int) -> None:
        """Event time reaches `ts`: timers due before it fire, and the sweep runs when due."""
        if self._timers and self._timers[0][0] < ts:
            self._fire_timers(ts)
        if ts - self._last_sweep >= SWEEP_INTERVAL_MS:
            self._sweep(ts)

    def _process(self, event: AnyEvent) -> None:
        ts = event.ts
        self._reach(ts)
        user_id = event.user_id
        state = self.users.get(user_id)
        if state is None:
            state = self.users[user_id] = UserState(ts)
        elif ts - state.last_ts > self.config.user_idle_ttl_ms:
            # As if the sweep had already removed it: output must not depend on sweep timing.
            state.forget_detectors()
        state.last_ts = ts
        self.stats.events[event.type] += 1
        signal: Signal | None = None
        if event.type == "click":
            if state.clicks is None:
                state.clicks = RageClickState()
            signal = self.rage.learn_one(state.clicks, event)
        elif event.type == "login":
            self._login(state, event)
        else:
            if state.chats is None:
                state.chats = AbruptChatState()
            signal = self.chats.learn_one(state.chats, event)
        if signal is not None:
            self._signal(state, user_id, signal)

    def _observe_source(self, event: AnyEvent) -> None:
        """A source-only copy: timers and the sweep see its time, the per-IP state its failure."""
        self._reach(event.ts)
        self.stats.source_copies += 1
        self._learn_source(event)

    def _source(self, event: AnyEvent) -> SourceState | None:
        """The per-IP state a failed login with an IP counts in (None for any other event)."""
        if event.type != "login" or event.outcome != "failure" or event.ip is None:
            return None
        source = self.sources.get(event.ip)
        if source is None:
            source = self.sources[event.ip] = SourceState()
        return source

    def _brute_source(self, ip: str) -> BruteForceState:
        source = self.brute_sources.get(ip)
        if source is None:
            source = self.brute_sources[ip] = BruteForceState()
        return source

    def _learn_source(self, event: AnyEvent) -> None:
        """A failed login with an IP feeds every per-IP detector; alerts go to the outbox."""
        source = self._source(event)
        if source is None:
            return
        assert event.type == "login" and event.ip is not None
        self._raise(self.stuffing.learn_one(source, event))
        brute = self.brute.learn_one(self._brute_source(event.ip), event)
        if not self.stuffing.is_attack(source, event.ts):  # one alert per attack: stuffing says it
            self._raise(brute)
        self._raise(self.distributed.learn_one(self.surge, event))

    def _learn_source_late(self, event: AnyEvent) -> None:
        """A copy behind the partition's event time: the per-IP detectors take it out of order;
        the platform-wide surge is judged in order only (it does not see late copies)."""
        source = self._source(event)
        if source is None:
            return
        assert event.type == "login" and event.ip is not None
        self._raise(self.stuffing.learn_late(source, event))
        brute = self.brute.learn_late(self._brute_source(event.ip), event)
        if brute is None or not self.stuffing.is_attack(source, brute.ts):
            self._raise(brute)

    def _raise(self, alert: SecurityAlert | None) -> None:
        if alert is None or (self._alerts_for is not None and not self._alerts_for(alert.ip)):
            return
        self.stats.alerts += 1
        self.outbox.append(alert)

    def _login(self, state: UserState, event: AnyEvent) -> None:
        assert event.type == "login"
        self._learn_source(event)
        if state.logins is None:
            state.logins = FailedLoginState()
        before = state.logins.deadline
        self.logins.learn_one(state.logins, event)
        deadline = state.logins.deadline
        if deadline is not None and deadline != before:
            heapq.heappush(self._timers, (deadline, event.user_id))

    def _source_verdict(self, ip: str, ts: int, now_ms: int) -> SourceVerdict:
        """The IP's failure at `ts`, as known at `now_ms`: an attack if any per-IP detector says
        so; otherwise final once every one of them has decided."""
        verdicts = []
        source = self.sources.get(ip)
        if source is not None:
            verdicts.append(self.stuffing.verdict(source, ts, now_ms))
        brute = self.brute_sources.get(ip)
        if brute is not None:
            verdicts.append(self.brute.verdict(brute, ts, now_ms))
        if any(v.attack for v in verdicts):
            return SourceVerdict(True, ts)
        if source is not None and self.distributed.is_attack(self.surge, ts):
            # During a botnet's surge an IP failing for several accounts is one of its sources.
            window = self.config.stuffing_window_ms
            if len({a for t, a in source.failures if ts - window <= t <= now_ms}) >= 2:
                return SourceVerdict(True, ts)
        return SourceVerdict(False, max((v.decided_at for v in verdicts), default=ts))

    def _fire_timers(self, before_ts: int | None) -> None:
        timers = self._timers
        while timers and (before_ts is None or timers[0][0] < before_ts):
            deadline, user_id = heapq.heappop(timers)
            state = self.users.get(user_id)
            if state is None or state.logins is None or state.logins.deadline != deadline:
                continue  # the deadline moved or was cleared since
            signal = self.logins.advance(state.logins, deadline + 1, self._source_verdict)
            if signal is not None:
                self._signal(state, user_id, signal)
            elif state.logins.deadline is not None:  # postponed while its source is undecided
                heapq.heappush(timers, (state.logins.deadline, user_id))

    def _signal(self, state: UserState, user_id: str, signal: Signal) -> None:
        self.stats.signals[signal.kind] += 1
        self.outbox.append(signal)
        if state.score is None:
            state.score = ScoreState()
        flag = self.scorer.add(state.score, user_id, signal)
        if flag is not None:
            if flag.update == 0:
                self.stats.flags[flag.severity] += 1
            else:
                self.stats.escalations[flag.severity] += 1
            self.outbox.append(flag)

    # -- memory -----------------------------------------------------------------------------------
    def _forget_event_ids(self, cutoff: int) -> None:
        order = self._seen_order
        while order and order[0][0] < cutoff:
            self._seen.discard(order.popleft()[1])

    def _sweep(self, now: int) -> None:
        """Forget users idle past the TTL (keeping open flags until their cooldown ends)."""
        self._last_sweep = now
        c = self.config
        idle_before = now - c.user_idle_ttl_ms
        for user_id in [u for u, s in self.users.items() if s.last_ts < idle_before]:
            state = self.users[user_id]
            score = state.score
            if score is not None and score.has_open_flag(now, c.flag_cooldown_ms):
                state.forget_detectors()
                score.signals = []
            else:
                del self.users[user_id]
        for ip in [ip for ip, s in self.sources.items() if self.stuffing.is_idle(s, now)]:
            del self.sources[ip]
        for ip in [ip for ip, b in self.brute_sources.items() if self.brute.is_idle(b, now)]:
            del self.brute_sources[ip]

    # -- checkpoints ------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """All state (users, IPs, buffered events, timers, remembered event ids) as bytes."""
        parts = (
            self.users,
            self.sources,
            self.brute_sources,
            self.surge,
            self._buffer,
            self._seq,
            self._timers,
            self._seen_order,
            self._max_ts,
            self._last_sweep,
        )
        return dump_state(STATE_VERSION, parts)

    def restore(self, blob: bytes) -> None:
        """Load a `snapshot` taken by the same STATE_VERSION (refuses any other)."""
        (
            self.users,
            self.sources,
            self.brute_sources,
            self.surge,
            self._buffer,
            self._seq,
            self._timers,
            self._seen_order,
            self._max_ts,
            self._last_sweep,
        ) = load_state(blob, STATE_VERSION, "engine state")
        self._seen = {event_id for _, event_id in self._seen_order}

    def drain(self) -> list[Output]:
        """Take everything in the outbox."""
        out, self.outbox = self.outbox, []
        return out
