"""The detector core: events in (in any order within the allowed lateness), signals, flags and
security alerts out, in event time. No I/O and no clock: the same input gives the same output.

Time is kept **per user**: each client's events are ordered and judged in that client's own event
time, so a client whose clock is wrong (or forged) affects only its own flags. State shared
across clients has clocks of its own that no single client can drag.

The data path, for one event::

    push(event) ── (user_id, event_id) seen? ──> counted, dropped
        │   a failed login with an IP ──> the per-IP judgement at once, in the IP's time
        │                                 (`SourceJudge`, detectors/sources.py): credential
        │                                 stuffing and account scans, brute force (per IP), a
        │                                 botnet's surge (all IPs); security alerts
        │   older than *its user's* watermark? ──> LateEvent in the outbox (runners dead-letter it)
        ▼
    the user's reorder buffer ── released once older than the user's watermark
        ▼                        (= newest event time of that user - allowed_lateness_ms, or
        ▼                        moved on by `advance_wall` / `advance_watermark` when it is quiet)
    the user's due login deadline fires first, then the user's detectors:
        click ─> RageClickDetector      login ─> FailedLoginDetector (per account; asks the judge)
        chat  ─> AbruptChatEndDetector
        ▼
    Signal ─> FlagScorer ─> Flag

The shared clock (`watermark_ms`) is the median of the watermarks of the last
`shared_clock_clients` distinct clients to send events, never moving backwards: one client dated
ten minutes ahead is one sample of 31 and cannot move it. It drives what is shared: forgetting
idle state and event ids' memory sweep, and the incident tracker downstream.

Once the shared clock is a lateness past a client's held event or login deadline, that is
processed whatever the client's own clock says (`follow_shared_clock`): what moves quiet clients
in a replay, and why every such flag reaches the incident tracker, which follows the same clock,
before the tracker moves past its time.

Runners (`streams.embedded.runner`, `streams.kafka.batch`) call `push` for each event (with the
wall time it arrived, `arrived_ms`), drain `outbox`, and call `advance_wall(now_ms, idle_ms)`
about every 100 ms: a live client's buffer and deadlines move on with the wall clock from its own
last event; a back-fill client's (dated far from the wall clock) only once all input is idle.
`flush` at the end of a finite input releases everything and fires every timer.

The Kafka runner runs one engine per partition of users. Credential stuffing is judged per IP,
across users, so each partition's engine also receives every other partition's failed logins as
*source-only* copies (`push(event, source_only=True)`): they feed the per-IP state and nothing
else, so every engine judges an IP exactly as one engine seeing everything would.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from detectors.abrupt_chat import AbruptChatEndDetector, AbruptChatState
from detectors.config import DetectionConfig
from detectors.failed_login import FailedLoginDetector, FailedLoginState
from detectors.rage_click import RageClickDetector, RageClickState
from detectors.scoring import FlagScorer, ScoreState
from detectors.sources import SourceJudge
from detectors.state import dump_state, heap_of, load_state, pop_idle
from signals.flags import Flag, SecurityAlert, Signal
from signals.wire import AnyEvent

#: Bump when the layout of the state changes, so an old checkpoint is refused, not misread.
#: 6: clocks' birth order; 7: each clock's due and quiet times, not the queues; 8: per-IP account
#: counts (`RecentAccounts`); 9: and of all an IP keeps
STATE_VERSION = 9

#: How often (shared event time) idle users are swept out of memory.
SWEEP_INTERVAL_MS = 60_000

#: Pushes between two recomputations of the shared clock (a median of a few dozen numbers).
SHARED_CLOCK_EVERY = 64
#: Pushes that move a client past the shared clock between two recomputations of it.
SHARED_CLOCK_RISE_EVERY = 8

#: A client whose newest event time is within this of the wall time it arrived is live: its time
#: moves on with the wall clock when it goes quiet. Any other is a back-fill (a replayed file, a
#: client with a wrong clock): wall time says nothing about its event time, so it moves only with
#: its own events, the shared clock, or once all input has gone idle.
LIVE_WINDOW_MS = 600_000

#: Later than any event time: "fire every deadline".
END_OF_TIME = 2**62

#: One buffered event: (ts, tiebreak, seq, event); a total order whatever the arrival.
Buffered = tuple[int, str, int, AnyEvent]


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


@dataclass(slots=True)
class UserClock:
    """One client's event time: its reorder buffer, watermark and remembered event ids."""

    newest: int  # newest event time seen from this client
    watermark: int  # every event of this client older than this was processed; older is late
    arrived_ms: int | None = None  # the runner's wall time when `newest` arrived (None: replay)
    # Where the wall clock has carried this live client's time (newest + quiet wall time -
    # lateness): what the shared clock sees of it. Its watermark goes no further than its newest
    # event (+1), so its next events are never late because it was quiet, and jumps only to fire
    # a due login deadline.
    virtual: int | None = None
    buffer: list[Buffered] = field(default_factory=list)
    # event_key(event_id) -> ts, in arrival order: 8 bytes per id instead of the id itself (a
    # platform's ids are often 36-character UUIDs, and ten minutes of them are kept per client).
    seen: dict[int, int] = field(default_factory=dict)
    born: int = 0  # creation order among the engine's clocks: the order the sweep visits them in
    # The times of this client's one entry in the engine's due and quiet queues (None: none):
    # a client is queued once at its earliest time, not once per event.
    due_at: int | None = None
    quiet_at: int | None = None


def event_key(event_id: str) -> int:
    """A client's event id as the 64-bit number it is remembered by. Two ids of one client in
    one dedup window share it with a chance of about n²/2⁶⁵ (n ids): below 1 in 10¹³ for a
    thousand."""
    digest = _blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


_blake2b = hashlib.blake2b


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event that arrived after its user's watermark had passed its time: not processed."""

    event: AnyEvent
    watermark_ms: int


Output = Signal | Flag | SecurityAlert | LateEvent


@dataclass(slots=True)
class EngineStats:
    """Counts since start, for summaries and metrics."""

    events: Counter[str] = field(default_factory=Counter)  # processed, by type
    source_copies: int = 0  # source-only copies processed (Kafka runner)
    alerts_revised_too_late: int = 0  # in-order alert found after its attack's was sent
    source_copies_late: int = 0  # copies older than their IP's time - the lateness
    duplicates: int = 0
    late: int = 0
    signals: Counter[str] = field(default_factory=Counter)  # by kind
    flags: Counter[str] = field(default_factory=Counter)  # new flags by severity
    escalations: Counter[str] = field(default_factory=Counter)  # re-emissions by severity
    alerts: int = 0


class DetectionEngine:
    """Runs the three detectors and the scorer over a stream of events, in each user's event time.

    Examples
    --------
    >>> from signals.events import ClickEvent
    >>> engine = DetectionEngine()
    >>> t0 = 1_795_255_200_000
    >>> for i in (1, 0, 3, 2, 5, 4, 7, 6):  # arrival order does not matter within the lateness
    ...     engine.push(ClickEvent(type="click", user_id="u1", ts=t0 + 100 * i, target="#pay",
    ...                            label="Pay now", page="/billing"))
    >>> engine.flush()
    >>> flags = [o for o in engine.outbox if isinstance(o, Flag)]
    >>> [(f.severity, f.reason) for f in flags]
    [('low', 'The client clicked “Pay now” 6 times in 0.5 s on /billing.')]
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
        self.chats = AbruptChatEndDetector(self.config)
        self.scorer = FlagScorer(self.config)
        self.users: dict[str, UserState] = {}
        self.clocks: dict[str, UserClock] = {}
        self.outbox: list[Output] = []
        self.stats = EngineStats()
        self.judge = SourceJudge(self.config, self.stats, self._raise)  # per-IP, across users
        self._seq = 0
        # Users with buffered events or a pending login deadline (what `advance_wall` visits).
        self._pending: set[str] = set()
        # The last `shared_clock_clients` distinct clients to move their clock (insertion order).
        self._recent: dict[str, None] = {}
        self._shared: int | None = None
        # Clients to move on with the shared clock once quiet: (event time after which to look
        # again, user_id); the live entry of a client is its clock's `quiet_at`, others are stale.
        # Rebuilt from the clocks on restore (`reindex`), like `_due`.
        self._quiet: list[tuple[int, str]] = []
        self._pushes = 0
        self._last_sweep = 0
        self._last_arrival_ms: int | None = None  # newest `arrived_ms` pushed (or the restart)
        # What waits for the shared clock, per client: (event time of its earliest held event or
        # login deadline, user_id); the live entry of a client is its clock's `due_at`.
        self._due: list[tuple[int, str]] = []
        self._born = 0  # clocks created so far (UserClock.born)
        # What lets a sweep visit only the clocks it changes, not all of them (a million clients
        # would block the service for a second each sweep): (event time of a clock's oldest
        # remembered id, user_id), entries may be stale; and the clocks that may have nothing
        # left to keep. Rebuilt from the clocks on restore (`reindex`), not part of the snapshot.
        self._expiry: list[tuple[int, str]] = []
        self._maybe_gone: set[str] = set()
        # Likewise for forgetting idle users: (a time at or before its last event, user_id),
        # one entry per user, so a sweep looks only at those that may be idle.
        self._idle_users: list[tuple[int, str]] = []
        # Users whose state or clock changed since a runner last took them (`take_changed_users`):
        # what a runner that stores state per user has to write. Not part of the snapshot.
        self.changed_users: set[str] = set()

    # -- clocks -----------------------------------------------------------------------------------
    @property
    def watermark_ms(self) -> int | None:
        """The shared clock: the median watermark of the recent clients, never backwards. What no
        single client can drag; the incident tracker and the sweeps follow it."""
        self._update_shared()
        return self._shared

    @property
    def flag_watermark_ms(self) -> int | None:
        """Where the incident tracker may move: the shared clock less one lateness, the spread
        between honest clients' watermarks. Not held back by any client's pending deadline: a
        client whose clock runs behind would hold everyone's flags. A flag that still comes after
        it is grouped at once by the tracker (counted late there), never lost."""
        shared = self.watermark_ms
        if shared is None:
            return None
        # Never more than the tracker's own allowance behind: with a wide per-client lateness
        # (a back-fill allowing an hour) the tracker would otherwise hold every flag that long.
        c = self.config
        return shared - min(c.allowed_lateness_ms, c.incident_lateness_ms)

    def user_watermark_ms(self, user_id: str) -> int | None:
        """That user's own watermark: its events older than this are late."""
        clock = self.clocks.get(user_id)
        return None if clock is None else clock.watermark

    def _update_shared(self) -> None:
        clocks = self.clocks
        marks = [
            c.watermark if c.virtual is None or c.virtual < c.watermark else c.virtual
            for u in self._recent
            if (c := clocks.get(u)) is not None
        ]
        marks.sort()
        if not marks:
            return
        median = marks[len(marks) // 2]  # the upper median: a quiet client cannot hold it
        if self._shared is None or median > self._shared:
            self._move_shared(median)

    def _move_shared(self, shared: int) -> None:
        """The shared clock reaches `shared`: what waits on it happens."""
        self._shared = shared
        if self.config.follow_shared_clock:
            self._fire_shared(shared - self._tracker_lag_ms())
        self.judge.release_alerts(shared)
        self._move_quiet(shared)
        if shared - self._last_sweep >= SWEEP_INTERVAL_MS:
            self._sweep(shared)

    def _tracker_lag_ms(self) -> int:
        c = self.config
        return min(c.allowed_lateness_ms, c.incident_lateness_ms)

    def _fire_shared(self, floor: int) -> None:
        """What each client has sent and what is due, up to `floor` (the incident tracker's next
        watermark, `flag_watermark_ms`), is processed whatever the client's own clock says:
        its buffered events before `floor` (never past its newest event: its next ones are not
        made late) and its login deadlines before `floor`. Their flags then reach the tracker
        before it moves past their time, so they are grouped in event-time order, identically
        in the service and in a replay. A deadline moves the client's time just past it (its
        events before the deadline that come later are late): for an honest client the shared
        clock is its own time give or take the lateness; a client dated behind loses part of its
        own confirmation wait, nobody else anything."""
        due = self._due
        clocks = self.clocks
        while due and due[0][0] < floor:
            at, user_id = heapq.heappop(due)
            clock = clocks.get(user_id)
            if clock is None or clock.due_at != at:
                continue  # gone, or queued again at an earlier time
            clock.due_at = None
            self.changed_users.add(user_id)
            self._advance_user(user_id, clock, min(floor, clock.newest + 1))
            state = self.users.get(user_id)
            if state is not None and state.logins is not None and state.logins.deadline is not None:
                self._fire_until(user_id, clock, floor)
                nxt = self._next_due(user_id, clock)
            else:
                nxt = clock.buffer[0][0] if clock.buffer else None
            if nxt is not None:  # at or after `floor`: what was before it was handled above
                self._schedule_due(user_id, clock, max(nxt, floor))

    def _schedule_due(self, user_id: str, clock: UserClock, at: int) -> None:
        """Something of this client waits for the shared clock to pass `at`."""
        if clock.due_at is None or at < clock.due_at:
            clock.due_at = at
            self.changed_users.add(user_id)
            heapq.heappush(self._due, (at, user_id))

    def _schedule_quiet(self, user_id: str, clock: UserClock, at: int) -> None:
        """Look at this client again once the shared clock is `user_quiet_ms` past `at`."""
        if clock.quiet_at is None or at < clock.quiet_at:
            clock.quiet_at = at
            self.changed_users.add(user_id)
            heapq.heappush(self._quiet, (at, user_id))

    def _next_due(self, user_id: str, clock: UserClock) -> int | None:
        """The earliest event time at which something of this client is waiting."""
        nxt = clock.buffer[0][0] if clock.buffer else None
        state = self.users.get(user_id)
        if state is not None and state.logins is not None and state.logins.deadline is not None:
            deadline = state.logins.deadline
            nxt = deadline if nxt is None else min(nxt, deadline)
        return nxt

    def _move_quiet(self, shared: int) -> None:
        """Clients far behind the shared clock follow it: nothing of theirs is in flight any
        more. What moves a quiet client in a replay (no wall clock); in the service the wall
        clock (`advance_wall`) has long done it, so both give the same output."""
        floor = shared - self.config.user_quiet_ms
        quiet = self._quiet
        again: list[tuple[str, UserClock, int]] = []
        while quiet and quiet[0][0] < floor:
            at, user_id = heapq.heappop(quiet)
            clock = self.clocks.get(user_id)
            if clock is None or clock.quiet_at != at:
                continue  # gone, or queued again at an earlier time
            clock.quiet_at = None
            self.changed_users.add(user_id)
            if clock.newest >= floor:
                again.append((user_id, clock, clock.newest))  # active again: look once quiet
                continue
            self._advance_user(user_id, clock, floor)
            state = self.users.get(user_id)
            if state is not None and state.logins is not None and state.logins.deadline:
                again.append((user_id, clock, state.logins.deadline))
        for user_id, clock, at in again:
            self._schedule_quiet(user_id, clock, at)

    def _note_recent(self, user_id: str) -> None:
        recent = self._recent
        if user_id in recent:
            del recent[user_id]
        recent[user_id] = None
        if len(recent) > self.config.shared_clock_clients:
            del recent[next(iter(recent))]

    # -- input ------------------------------------------------------------------------------------
    def push(
        self, event: AnyEvent, *, source_only: bool = False, arrived_ms: int | None = None
    ) -> None:
        """Accept one event; outputs it completes are appended to `outbox`.

        `source_only`: a failed login owned by another engine, seen here only for the per-IP
        credential-stuffing state (no user state, no alert, not counted as an event).
        `arrived_ms`: the runner's wall time of arrival (lets `advance_wall` move this client's
        time on when it goes quiet); None in replays."""
        ts = event.ts
        user_id = event.user_id
        lateness = self.config.allowed_lateness_ms
        clock = self.clocks.get(user_id)
        event_id = None if event.event_id is None else event_key(event.event_id)
        if event_id is not None and clock is not None and event_id in clock.seen:
            self.stats.duplicates += 1
            return
        self.changed_users.add(user_id)
        if source_only:
            self.stats.source_copies += 1
            if self._remembered(ts, None):
                self.judge.learn(event, copy=True)
            else:
                self.stats.source_copies_late += 1
            if event_id is not None:  # a repeated copy must not count twice in the IP's window
                if clock is None:
                    clock = self._new_clock(user_id, ts)
                self._remember(user_id, clock, event_id, ts)
            return
        if clock is None:
            clock = self._new_clock(user_id, ts)
        if event_id is not None:
            self._remember(user_id, clock, event_id, ts)
        if event.type == "login" and self._remembered(ts, clock.watermark):
            self.judge.learn(event, copy=False)  # the IP counts even a failure late for its user
        if ts < clock.watermark:
            self.stats.late += 1
            self.outbox.append(LateEvent(event, clock.watermark))
            return
        tiebreak = event.event_id if event.event_id is not None else event.model_dump_json()
        self._seq += 1
        buffer = clock.buffer
        if not buffer or ts < buffer[0][0]:
            self._schedule_due(user_id, clock, ts)  # a new head: when the shared clock takes it
        heapq.heappush(buffer, (ts, tiebreak, self._seq, event))
        self._pending.add(user_id)
        if arrived_ms is not None and (
            self._last_arrival_ms is None or arrived_ms > self._last_arrival_ms
        ):
            self._last_arrival_ms = arrived_ms
        if ts >= clock.newest:
            clock.newest = ts
            clock.arrived_ms = arrived_ms
            clock.virtual = None
            self._note_recent(user_id)
            self._schedule_quiet(user_id, clock, ts)
        self._advance_user(user_id, clock, clock.newest - lateness)
        self._pushes += 1
        # The median can rise only when a watermark passes it (or a client leaves the sample);
        # it is a median of dozens, so it is recomputed every few such pushes, not at each.
        shared = self._shared
        pushes = self._pushes
        if (
            shared is None
            or (clock.watermark > shared and pushes % SHARED_CLOCK_RISE_EVERY == 0)
            or pushes % SHARED_CLOCK_EVERY == 0
        ):
            self._update_shared()

    def _new_clock(self, user_id: str, ts: int) -> UserClock:
        self._born += 1
        clock = UserClock(ts, ts - self.config.allowed_lateness_ms, born=self._born)
        self.clocks[user_id] = clock
        return clock

    def _remember(self, user_id: str, clock: UserClock, key: int, ts: int) -> None:
        if not clock.seen:
            heapq.heappush(self._expiry, (ts, user_id))  # its oldest id (arrival order)
        clock.seen[key] = ts

    def _forget_ids(self, user_id: str, clock: UserClock, before: int) -> int | None:
        """Forget the client's oldest ids (arrival order) dated before `before`, and index the
        new oldest one (or note the clock may have nothing left); the newest time forgotten."""
        seen = clock.seen
        forgotten = None
        while seen:
            first = next(iter(seen))
            if seen[first] >= before:
                break
            ts = seen.pop(first)
            forgotten = ts if forgotten is None else max(forgotten, ts)
        if forgotten is not None:
            self.changed_users.add(user_id)
            if seen:
                heapq.heappush(self._expiry, (next(iter(seen.values())), user_id))
            else:
                self._maybe_gone.add(user_id)
        return forgotten

    def _remembered(self, ts: int, user_watermark: int | None) -> bool:
        """Whether an event at `ts` is recent enough that its event_id, had it come before, would
        still be remembered (forgotten a dedup window behind its client's time, or behind the
        shared clock in a sweep). An older one may be a repeat: the per-IP state must not count
        it (its user reports it late)."""
        behind = self._shared if user_watermark is None else user_watermark
        if self._shared is not None and behind is not None:
            behind = max(behind, self._shared)
        return behind is None or ts >= behind - self.config.dedup_window_ms

    def advance_wall(self, now_ms: int, idle_ms: int | None = None) -> None:
        """Runner housekeeping (about every 100 ms). A *live* client (its newest event dated
        within `LIVE_WINDOW_MS` of the wall time it arrived) moves on with the wall clock from its
        own newest event (`newest + (now - arrived) - lateness`): its buffer is released once the
        lateness has passed and its login deadline fires when due, in its own time. Its watermark
        goes no further than its newest event otherwise, so the events of its next batch (a
        collector posts every 2 s) are never late because it was quiet.

        A *back-fill* client (dated further from the wall clock) is not moved by wall time: a file
        posted faster than real time would have its events made late, and the replay of the same
        file (no wall clock) would differ. Its buffer is released only once no event at all has
        arrived for `idle_ms` (the input went idle; a restart is not idleness): then, as a replay
        at the end of its input, all it sent is processed and its login deadlines fire. Clients
        pushed without `arrived_ms` never move here."""
        lateness = self.config.allowed_lateness_ms
        last = self._last_arrival_ms
        idle = idle_ms is not None and last is not None and now_ms - last >= idle_ms
        for user_id in sorted(self._pending | self._recent.keys()):
            clock = self.clocks.get(user_id)
            if clock is None or clock.arrived_ms is None:
                continue
            if abs(clock.arrived_ms - clock.newest) < LIVE_WINDOW_MS:
                virtual = clock.newest + max(0, now_ms - clock.arrived_ms) - lateness
                if clock.virtual is None or virtual > clock.virtual:
                    # Not a change to write (changed_users): it is a function of the wall clock,
                    # recomputed at the next call after a restore. A live client that sent
                    # nothing would otherwise be rewritten at every Kafka state write.
                    clock.virtual = virtual
                self._advance_user(user_id, clock, min(virtual, clock.newest + 1))
                self._fire_until(user_id, clock, virtual)
            elif idle:  # as a replay's end of input: everything released, every deadline fired
                self._advance_user(user_id, clock, clock.newest + 1)
                self._fire_until(user_id, clock, END_OF_TIME)
        if idle:
            self.judge.release_alerts(None)
        self._update_shared()

    @property
    def last_arrival_ms(self) -> int | None:
        """The newest wall time an event arrived at (`push(arrived_ms=...)`), or the restart."""
        return self._last_arrival_ms

    def is_backfill(self, user_id: str) -> bool:
        """Whether that client's newest event is dated `LIVE_WINDOW_MS` or more from its arrival."""
        clock = self.clocks.get(user_id)
        return (
            clock is not None
            and clock.arrived_ms is not None
            and abs(clock.arrived_ms - clock.newest) >= LIVE_WINDOW_MS
        )

    def backfill_newest_ms(self) -> int | None:
        """The newest event time of the back-fill clients (see `advance_wall`), for a runner that
        moves the incident tracker on once all input has gone idle: always in the past, so no
        client can drag the tracker ahead of the live ones this way."""
        newest = None
        for clock in self.clocks.values():
            if clock.arrived_ms is not None and abs(clock.arrived_ms - clock.newest) >= (
                LIVE_WINDOW_MS
            ):
                newest = clock.newest if newest is None else max(newest, clock.newest)
        return newest

    def _fire_until(self, user_id: str, clock: UserClock, until: int) -> None:
        """Fire the user's login deadlines due before `until` (its time), moving its watermark
        just past each: events before a deadline that arrive after it fired are late."""
        state = self.users.get(user_id)
        while state is not None and state.logins is not None:
            deadline = state.logins.deadline
            if deadline is None or deadline >= until or deadline + 1 <= clock.watermark:
                return
            self._advance_user(user_id, clock, deadline + 1)

    def rebase_arrivals(self, now_ms: int) -> None:
        """After a restart: every client resumes as if its newest event had arrived now (the
        time the runner was down is not time the client was quiet)."""
        for user_id, clock in self.clocks.items():
            if clock.arrived_ms is not None:
                self.changed_users.add(user_id)
                if abs(clock.arrived_ms - clock.newest) < LIVE_WINDOW_MS:  # a back-fill stays one
                    clock.arrived_ms = now_ms
                clock.virtual = None
        if self._last_arrival_ms is not None:
            self._last_arrival_ms = now_ms

    def advance_watermark(self, ts: int) -> None:
        """Move event time on to `ts` - lateness without an event (a quiet partition of the
        Kafka runner, a back-fill that ended, tests); never backwards. Every client's events
        before it are processed and its login deadlines before it fire; as with the wall clock
        (`advance_wall`), a client's own watermark goes no further than its newest event
        otherwise, so its next events are not late for its having been quiet, and a client
        with nothing held is not touched (its state is not rewritten by an idle partition)."""
        watermark = ts - self.config.allowed_lateness_ms
        for user_id in sorted(self._pending):
            clock = self.clocks.get(user_id)
            if clock is None:
                continue
            self._advance_user(user_id, clock, min(watermark, clock.newest + 1))
            self._fire_until(user_id, clock, watermark)
        if self._shared is None or watermark > self._shared:
            self._move_shared(watermark)
        self._update_shared()

    def flush(self) -> None:
        """End of input: process everything buffered (in event-time order across users) and fire
        every pending timer."""
        merged: list[tuple[int, str, str, int, AnyEvent]] = []
        self.changed_users.update(self.clocks)
        for user_id, clock in self.clocks.items():
            merged += [(ts, user_id, tb, seq, e) for ts, tb, seq, e in clock.buffer]
            clock.buffer = []
            if clock.newest + 1 > clock.watermark:
                clock.watermark = clock.newest + 1
        merged.sort()
        for ts, user_id, _, _, event in merged:
            self._fire_due(user_id, ts)
            self._process(event)
        due = sorted(
            (s.logins.deadline, u)
            for u, s in self.users.items()
            if s.logins is not None and s.logins.deadline is not None
        )
        while due:
            deadline, user_id = heapq.heappop(due)
            self._fire_due(user_id, deadline + 1)
            state = self.users.get(user_id)
            if state is not None and state.logins is not None and state.logins.deadline is not None:
                heapq.heappush(due, (state.logins.deadline, user_id))  # postponed
        self._pending.clear()
        self.judge.release_alerts(None)
        self._update_shared()

    # -- processing -------------------------------------------------------------------------------
    def _advance_user(self, user_id: str, clock: UserClock, watermark: int) -> None:
        """The client's event time reaches `watermark`: release its older events, fire its due
        deadline, forget its event ids older than the dedup window."""
        if watermark <= clock.watermark:
            return
        clock.watermark = watermark
        self.changed_users.add(user_id)
        buffer = clock.buffer
        users = self.users
        while buffer and buffer[0][0] < watermark:
            event = heapq.heappop(buffer)[3]
            state = users.get(user_id)
            if state is not None and state.logins is not None and state.logins.deadline is not None:
                self._fire_due(user_id, event.ts)
            self._process(event)
        state = users.get(user_id)
        if state is not None and state.logins is not None and state.logins.deadline is not None:
            self._fire_due(user_id, watermark)
        seen = clock.seen
        forget_before = watermark - self.config.dedup_window_ms
        if seen and next(iter(seen.values())) < forget_before:
            self._forget_ids(user_id, clock, forget_before)
        if not buffer:
            state = users.get(user_id)
            if state is None or state.logins is None or state.logins.deadline is None:
                # Nothing waits: the watermark is past its newest event, so a visit of the
                # shared clock would change nothing (and its record need not say when).
                self._pending.discard(user_id)
                clock.due_at = None

    def _fire_due(self, user_id: str, before_ts: int) -> None:
        """Fire the user's login deadline if it is before `before_ts` (in that user's time)."""
        state = self.users.get(user_id)
        while state is not None and state.logins is not None:
            deadline = state.logins.deadline
            if deadline is None or deadline >= before_ts:
                return
            self.changed_users.add(user_id)
            signal = self.logins.advance(state.logins, deadline + 1, self.judge.verdict)
            if signal is not None:
                self._signal(state, user_id, signal)
            elif state.logins.deadline is not None and state.logins.deadline != deadline:
                self._schedule_due(user_id, self.clocks[user_id], state.logins.deadline)
            # else postponed while its source is undecided: loop, the new deadline may be due

    def _process(self, event: AnyEvent) -> None:
        """One event of a user, in that user's time order (its user is in `changed_users`)."""
        ts = event.ts
        user_id = event.user_id
        state = self.users.get(user_id)
        if state is None:
            state = self.users[user_id] = UserState(ts)
            # A user's events come in its time order: ts stays at or before its last event.
            heapq.heappush(self._idle_users, (ts, user_id))
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
            if state.logins is None:
                state.logins = FailedLoginState()
            before = state.logins.deadline
            self.logins.learn_one(state.logins, event)
            deadline = state.logins.deadline
            if deadline is not None:
                self._pending.add(user_id)
                if deadline != before:
                    self._schedule_due(user_id, self.clocks[user_id], deadline)
        else:
            if state.chats is None:
                state.chats = AbruptChatState()
            signal = self.chats.learn_one(state.chats, event)
        if signal is not None:
            self._signal(state, user_id, signal)

    def _raise(self, alert: SecurityAlert | None) -> None:
        if alert is None or (self._alerts_for is not None and not self._alerts_for(alert.ip)):
            return
        self.stats.alerts += 1
        self.outbox.append(alert)

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
    def _sweep(self, now: int) -> None:
        """Forget users idle past the TTL in the shared clock (keeping open flags until their
        cooldown ends), their clocks once nothing of theirs is pending, and idle IPs."""
        self._last_sweep = now
        c = self.config
        idle_users = pop_idle(self._idle_users, self.users, now - c.user_idle_ttl_ms)
        for user_id in idle_users:
            self.changed_users.add(user_id)
            state = self.users[user_id]
            score = state.score
            if score is not None and score.has_open_flag(now, c.flag_cooldown_ms):
                state.forget_detectors()
                score.signals = []
                heapq.heappush(self._idle_users, (state.last_ts, user_id))  # seen again next sweep
            else:
                del self.users[user_id]
                self._maybe_gone.add(user_id)
        # Event ids are forgotten in the client's own time (`_advance_user`); a quiet client's
        # time is moved here so that its ids go too (a client whose clock runs more than the
        # dedup window behind sees its own events late: only its own flags can suffer).
        # So a client's time never lags the shared clock by more than the dedup window: its ids
        # are forgotten then, and a retry that old must be late (reported), not counted twice.
        # Only the clocks whose oldest id is that old, in the order they were created.
        ids_before = now - c.dedup_window_ms
        clocks = self.clocks
        expiry = self._expiry
        due: set[str] = set()
        while expiry and expiry[0][0] < ids_before:
            ts, user_id = heapq.heappop(expiry)
            clock = clocks.get(user_id)
            if clock is not None and clock.seen and next(iter(clock.seen.values())) == ts:
                due.add(user_id)  # else stale: a newer entry stands for its oldest id
        for user_id in sorted(due, key=lambda u: clocks[u].born):
            clock = clocks[user_id]
            forgotten = self._forget_ids(user_id, clock, ids_before)
            if forgotten is not None:
                self._advance_user(user_id, clock, forgotten + 1)
        for user_id in self._maybe_gone:
            clock = clocks.get(user_id)
            if clock is None or clock.seen or clock.buffer or user_id in self.users:
                continue
            self._pending.discard(user_id)
            self.changed_users.add(user_id)
            del clocks[user_id]
        self._maybe_gone = set()
        self.judge.forget_idle(now)

    # -- checkpoints ------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """All state (users, clocks with their buffers and event ids, IPs, the surge) as bytes."""
        parts = (
            self.users,
            self.clocks,
            self.judge.sources,
            self.judge.brute_sources,
            self.judge.surge,
            self.judge.held_alerts,
            self._seq,
            self._pending,
            self._recent,
            self._shared,
            self._pushes,
            self._last_sweep,
            self._last_arrival_ms,
            self._born,
        )
        return dump_state(STATE_VERSION, parts)

    def restore(self, blob: bytes) -> None:
        """Load a `snapshot` taken by the same STATE_VERSION (refuses any other)."""
        (
            self.users,
            self.clocks,
            self.judge.sources,
            self.judge.brute_sources,
            self.judge.surge,
            self.judge.held_alerts,
            self._seq,
            self._pending,
            self._recent,
            self._shared,
            self._pushes,
            self._last_sweep,
            self._last_arrival_ms,
            self._born,
        ) = load_state(blob, STATE_VERSION, "engine state")
        self.changed_users = set()
        self.judge.changed_ips = set()
        self.reindex()

    def reindex(self) -> None:
        """Rebuild what is derived from the clocks, after `restore` or after a runner replaced
        `clocks` (the Kafka runner loads them from per-user records)."""
        clocks = self.clocks.items()
        self._due = heap_of((c.due_at, u) for u, c in clocks if c.due_at is not None)
        self._quiet = heap_of((c.quiet_at, u) for u, c in clocks if c.quiet_at is not None)
        self._expiry = heap_of((next(iter(c.seen.values())), u) for u, c in clocks if c.seen)
        self._maybe_gone = set(self.clocks)
        self._idle_users = heap_of((s.last_ts, u) for u, s in self.users.items())
        self.judge.reindex()
        self._born = max([self._born, *(c.born for c in self.clocks.values())])

    def take_changed_users(self) -> set[str]:
        """The users whose state or clock changed since the last call (or the restore)."""
        changed, self.changed_users = self.changed_users, set()
        return changed

    def drain(self) -> list[Output]:
        """Take everything in the outbox."""
        out, self.outbox = self.outbox, []
        return out
