"""Incidents: when many clients are frustrated by one cause at once, group their flags.

A billing error, a failing login service or a dead chat queue makes the detectors flag hundreds of
clients within minutes, each correctly. Sent one by one to the support queue they bury the agents
and hide the cause. `IncidentTracker` sits after the `DetectionEngine` (a separate stage: the
Kafka runner feeds one tracker from several engines), counts flags per *cause key* in event time,
opens an `Incident` when a cause surges, and attaches the flags it explains (`incident_id` on the
flag) so the queue shows one incident item instead of one outreach item per client.

Cause keys (`cause_key`), from the signal that triggered a flag emission (its last full-strength
signal; for a flag of weak signals only, its first: see `cause_signal`)::

    rage_click:<page>|<target, else label>      rage_click:/billing|#pay
    failed_logins:<reason of the last failure>  failed_logins:service_unavailable
    abrupt_chat_end:<channel>                   abrupt_chat_end:support

A part that is not given is "-" (all target- and label-less rage clicks of a page share a key).
Like the detectors, the tracker is pure: no I/O, no clock, same input -> same output.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from collections import Counter, deque
from dataclasses import dataclass, field

from detectors.config import DetectionConfig
from detectors.engine import DetectionEngine
from detectors.state import dump_state, load_state
from signals.flags import (
    SEVERITIES,
    AbruptChatEvidence,
    FailedLoginEvidence,
    Flag,
    RageClickEvidence,
    Signal,
    SignalKind,
)
from signals.incidents import Incident, IncidentStatus

#: Bump when the layout of the state changes, so an old checkpoint is refused, not misread.
STATE_VERSION = 2

#: How often (event time) idle causes and old attachments are swept out of memory.
SWEEP_INTERVAL_MS = 3_600_000

_RANK = {s: i for i, s in enumerate(SEVERITIES)}

TrackerOutput = Flag | Incident


def _part(value: str | None) -> str:
    value = (value or "").strip()
    return value or "-"


def cause_key(signal: Signal) -> str:
    """What a signal points at: its kind plus the control, the failure reason or the chat channel.

    >>> from signals.flags import FailedLoginEvidence, Signal
    >>> cause_key(Signal(kind="failed_logins", ts=0, strength=1.0, evidence=FailedLoginEvidence(
    ...     failures=5, span_ms=60_000, distinct_ips=1, distinct_devices=1,
    ...     last_reason="service_unavailable", waited_for_success_ms=60_000)))
    'failed_logins:service_unavailable'
    """
    e = signal.evidence
    if isinstance(e, RageClickEvidence):
        return f"rage_click:{_part(e.page)}|{_part(e.target or e.label)}"
    if isinstance(e, FailedLoginEvidence):
        return f"failed_logins:{_part(e.last_reason)}"
    if isinstance(e, AbruptChatEvidence):
        return f"abrupt_chat_end:{_part(e.channel)}"
    raise TypeError(f"unknown evidence {type(e).__name__}")


def cause_signal(flag: Flag) -> Signal:
    """The signal a flag emission is grouped by: the last full-strength one (the one that
    triggered it, or the last that could flag alone); for a flag of weak signals only, the first
    (the episode began with it, the later ones corroborated it)."""
    for signal in reversed(flag.signals):
        if signal.strength >= 1.0:
            return signal
    return flag.signals[0]


def flag_cause(flag: Flag) -> str:
    """The cause key of a flag emission: that of its `cause_signal`."""
    return cause_key(cause_signal(flag))


def flag_watermark(engine: DetectionEngine) -> int | None:
    """Event time below which `engine` will (all but) emit no more flags: what to pass to
    `IncidentTracker.advance_watermark` after draining it (the engine's `flag_watermark_ms`, in
    the shared clock that no single client can drag)."""
    return engine.flag_watermark_ms


def incident_id(cause: str, opened_ts: int) -> str:
    digest = hashlib.blake2b(f"{cause}|{opened_ts}".encode(), digest_size=10).hexdigest()
    return f"inc_{digest}"


@dataclass(slots=True)
class IncidentState:
    """An open incident while it lasts."""

    incident_id: str
    cause: str
    kind: SignalKind
    opened_ts: int
    first_seen_ts: int
    last_seen_ts: int
    baseline: float  # distinct clients per window, frozen at opening
    peak: int  # most distinct clients in one window
    detail: str | None  # a control's label, for the evidence sentence
    users: set[str] = field(default_factory=set)  # attached
    individual: set[str] = field(default_factory=set)  # kept in individual outreach
    update: int = 0
    quiet_since: int | None = None
    emitted: tuple[int, int, int, int] = (0, 0, 0, 0)  # what the last emission showed


@dataclass(slots=True)
class CauseState:
    """Flags of one cause within the window, and the cause's baseline."""

    rolled_to: int  # last bucket boundary the baseline has seen
    last_ts: int  # newest flag of the cause
    window: list[tuple[int, str, str]] = field(default_factory=list)  # (ts, user, flag_id)
    start: int = 0  # entries before this index have left the window
    users: Counter[str] = field(default_factory=Counter)  # distinct clients in the window
    baseline: float = 0.0
    incident: IncidentState | None = None
    detail: str | None = None
    closed: IncidentState | None = None  # the cause's last closed incident, for late victims
    closed_ts: int = 0


@dataclass(frozen=True, slots=True)
class Attachment:
    incident_id: str
    cause: str
    last_ts: int  # of the flag's latest emission


@dataclass(slots=True)
class TrackerStats:
    """Counts since start, for summaries and metrics."""

    flags: int = 0  # flag emissions pushed
    duplicates: int = 0  # an emission (flag_id, update) seen before: dropped
    late: int = 0  # came after the tracker had moved past their time: grouped, order not exact
    individual: int = 0  # emissions passed on for individual outreach
    attached: int = 0  # emissions passed on with an incident_id (re-emissions included)
    reemitted: int = 0  # earlier flags re-emitted with an incident_id when an incident opened
    opened: Counter[str] = field(default_factory=Counter)  # incidents opened, by kind
    closed: Counter[str] = field(default_factory=Counter)  # incidents closed, by kind


class IncidentTracker:
    """Groups flags by cause in event time; opens, grows and closes incidents.

    **Surge.** Per cause key, the distinct clients flagged within `incident_window_ms` (5 min) are
    counted at every flag. The *baseline* is an exponentially weighted mean of that count, sampled
    at the end of every `incident_bucket_ms` (1 min) with a half-life of
    `incident_baseline_half_life_ms` (1 h). A new cause starts at 0 on a small platform; at a
    large one a fresh tracker must not take a busy cause for a surge from zero, so a new cause
    starts at `incident_prior_per_1000_active` (1) clients per 1000 active clients
    (`observe_active`), decayed by the time the tracker has watched without seeing it (so a
    cause first seen hours after the start, an outage's new failure reason, starts near 0 and its
    surge is news). An incident opens at the flag
    that brings the count to `incident_min_users` (25) *and* to `incident_surge_factor` (5) times
    the baseline. The baseline is frozen while the incident is open, so the incident never
    becomes the new normal; a slow rise carries the baseline with it and opens nothing.

    **Attachment.** Flags whose cause has an open incident are emitted with its `incident_id`.
    Because the first ~25 clients are flagged before a surge can be recognised, opening an
    incident re-emits the earlier flags of that cause within the window (their latest emission,
    same `flag_id` and `update`) with the `incident_id` set. A flag stays in individual outreach,
    unattached, when its evidence is stronger than the incident explains: a severity of
    `incident_individual_severity` (high) or more, or any full signal of another cause (a client
    who also left a chat unanswered is more than a victim of the login outage; a weak one, which
    never flags alone, is not). A flag once attached
    stays attached (its later emissions too, even after the incident closed) while its evidence
    stays within the cause; a later emission with stronger evidence is emitted with
    `incident_id=None`, which takes it back to individual outreach. A flag raised after the
    incident closed, by evidence from while it was open (a weak lock-out during the outage,
    corroborated later), joins the closed incident (re-emitted closed, with its counts). Whether
    an agent already claimed a flag is the queue's business, not the tracker's (the store keeps
    claimed flags with their agent).

    **Closing (hysteresis).** At every bucket end the window count of an open incident's cause is
    compared with max(`incident_close_users` (5), `incident_close_factor` (2) × baseline); once it
    has stayed at or below that for `incident_close_quiet_ms` (5 min), the incident closes. It
    opens at 25 and closes at 5, so it does not flap.

    **Output.** Every pushed flag comes out once (a pass-through, unchanged but for its
    `incident_id`), plus re-emissions of attached flags and `Incident` records: at opening
    (`update` 0), at a bucket end when its counts changed (at most one per bucket), and at
    closing. Duplicates (a `flag_id` and `update` already seen) are dropped.

    **Event time.** Flags may arrive out of order by up to `incident_lateness_ms`: they are held
    in a reorder buffer and processed in (ts, flag_id, update) order once the newest flag is that
    far past them, or once `advance_watermark` says no older flag will come; so the output is the
    same whatever the arrival order within the lateness. A flag later than that is still grouped
    at once (never held back or lost) and counted as `late`, but without the ordering guarantee.

    **Cost and memory.** O(log n) per flag for the buffer, O(window) per incident opening; state
    per cause is its window of flags and a few numbers. Causes idle for `incident_cause_ttl_ms`
    (6 h) without an open incident are forgotten, attachments `flag_cooldown_ms` (24 h) after the
    flag's last emission, both in a way that never changes the output.

    **Limits.** The tracker sees flags, not signals: a client whose open flag is not re-emitted
    (same kind, no severity rise within the renewal hour) is not counted again. Without
    `observe_active` (the Kafka queue sink) a new cause starts at 0, so until a busy cause has
    history only `incident_min_users` guards it; a fresh tracker started in the middle of an
    outage at a large platform may take the outage for the usual level.

    Parameters
    ----------
    config
        The `incident_*` thresholds of `DetectionConfig` (and `flag_cooldown_ms`).

    Examples
    --------
    Thirty clients locked out by a failing login service within two minutes, one unrelated
    rage click in the middle:

    >>> from signals.flags import FailedLoginEvidence, RageClickEvidence, Signal
    >>> def lockout(user, ts):
    ...     s = Signal(kind="failed_logins", ts=ts, strength=1.0, evidence=FailedLoginEvidence(
    ...         failures=5, span_ms=40_000, distinct_ips=1, distinct_devices=1,
    ...         last_reason="service_unavailable", waited_for_success_ms=60_000))
    ...     return Flag(flag_id=f"flg_{user}", user_id=user, ts=ts, severity="low", score=1.0,
    ...                 signals=(s,), reason="locked out", opened_ts=ts, update=0)
    >>> t0 = 1_795_255_200_000
    >>> tracker = IncidentTracker()
    >>> for i in range(30):
    ...     tracker.push(lockout(f"u{i:02d}", t0 + 4_000 * i))
    >>> rage = Signal(kind="rage_click", ts=t0 + 50_000, strength=1.0, evidence=RageClickEvidence(
    ...     rule="burst", clicks=7, bursts=1, span_ms=1_500, max_gap_ms=300, target="#pay"))
    >>> tracker.push(Flag(flag_id="flg_r", user_id="r", ts=t0 + 50_000, severity="low", score=1.0,
    ...                   signals=(rage,), reason="rage", opened_ts=t0 + 50_000, update=0))
    >>> tracker.flush()
    >>> out = tracker.drain()
    >>> [(i.cause, i.update, i.affected_users) for i in out if isinstance(i, Incident)]
    [('failed_logins:service_unavailable', 0, 25), ('failed_logins:service_unavailable', 1, 30)]

    The 24 clients flagged before the 25th were first passed on for outreach, then re-emitted
    with the incident's id; the rage click stays an individual flag:

    >>> final = {o.flag_id: o.incident_id for o in out if isinstance(o, Flag)}
    >>> sum(v is not None for v in final.values()), final["flg_r"]
    (30, None)
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config or DetectionConfig()
        c = self.config
        self._keep = 0.5 ** (c.incident_bucket_ms / c.incident_baseline_half_life_ms)
        self.causes: dict[str, CauseState] = {}
        self.open: dict[str, IncidentState] = {}  # by cause
        self.attached: dict[str, Attachment] = {}  # by flag_id
        self.outbox: list[TrackerOutput] = []
        self.stats = TrackerStats()
        self._buffer: list[tuple[int, str, int, int, Flag]] = []
        self._seq = 0
        self._max_ts: int | None = None  # newest flag pushed
        self._released: int | None = None  # every flag older than this has been processed
        self._boundary: int | None = None  # last bucket end judged
        self._started: int | None = None  # first bucket end: since when the tracker has watched
        self._active = 0  # clients the engine holds state for, as last observed
        self._recent: dict[str, Flag] = {}  # latest emission per flag_id, within the window
        self._recent_order: deque[tuple[int, str]] = deque()
        self._last_sweep = 0

    # -- input ------------------------------------------------------------------------------------
    @property
    def watermark_ms(self) -> int | None:
        """Every flag older than this has been processed; an older one arriving now is late."""
        return self._released

    def push(self, flag: Flag) -> None:
        """Accept one flag emission; what it completes is appended to `outbox`."""
        self.stats.flags += 1
        ts = flag.ts
        if self._released is not None and ts < self._released:
            self.stats.late += 1
            self._process(flag)  # grouped at once: never held back or lost
            return
        self._seq += 1
        heapq.heappush(self._buffer, (ts, flag.flag_id, flag.update, self._seq, flag))
        if self._max_ts is None or ts > self._max_ts:
            self._max_ts = ts
            self._release(ts - self.config.incident_lateness_ms)

    def advance_watermark(self, ts_ms: int) -> None:
        """Upstream event time reached `ts_ms`: no flag older than it will be pushed any more (pass
        the engine's `watermark_ms`). Releases buffered flags and judges the buckets that ended.
        Never backwards."""
        if self._released is None or ts_ms > self._released:
            self._release(ts_ms)

    def flush(self) -> None:
        """End of input: process every buffered flag and judge the buckets up to the newest time
        seen. Open incidents stay open (the input ended, the cause did not)."""
        newest = max(self._max_ts or 0, self._released or 0)
        self._release(None)
        if newest:
            self._release(newest)
        for incident in list(self.open.values()):
            self._emit_incident_if_changed(incident, max(newest, incident.last_seen_ts))

    def drain(self) -> list[TrackerOutput]:
        """Take everything in the outbox."""
        out, self.outbox = self.outbox, []
        return out

    # -- views ------------------------------------------------------------------------------------
    def open_incidents(self) -> list[Incident]:
        """The open incidents as they stand (not emitted; for pages and gauges)."""
        return [self._record(i, i.last_seen_ts, "open") for i in self.open.values()]

    def open_counts(self) -> Counter[str]:
        """Open incidents by kind."""
        return Counter(i.kind for i in self.open.values())

    # -- processing -------------------------------------------------------------------------------
    def _release(self, upto: int | None) -> None:
        buffer = self._buffer
        while buffer and (upto is None or buffer[0][0] < upto):
            self._process(heapq.heappop(buffer)[4])
        if upto is not None and (self._released is None or upto > self._released):
            self._released = upto
            self._boundaries(upto)

    def _boundaries(self, upto: int) -> None:
        """Judge every bucket end up to `upto` (all flags before them have been processed)."""
        bucket = self.config.incident_bucket_ms
        target = upto - upto % bucket
        if self._boundary is None or target <= self._boundary:
            if self._boundary is None:
                self._boundary = self._started = target
            return
        if self.open:  # without an open incident a bucket end changes nothing: causes roll lazily
            b = self._boundary + bucket
            while b <= target:
                for incident in list(self.open.values()):
                    self._judge(incident, b)
                b += bucket
        self._boundary = target
        self._forget_recent(target - self.config.incident_window_ms)
        if target - self._last_sweep >= SWEEP_INTERVAL_MS:
            self._sweep(target)

    def _process(self, flag: Flag) -> None:
        ts = flag.ts
        self._boundaries(ts)
        previous = self._recent.get(flag.flag_id)
        if previous is not None and previous.update >= flag.update:
            self.stats.duplicates += 1
            return
        self._recent[flag.flag_id] = flag
        self._recent_order.append((ts, flag.flag_id))
        cause = flag_cause(flag)
        state = self._cause(cause, ts)
        self._roll(state, ts - ts % self.config.incident_bucket_ms)
        self._add(state, flag)
        incident = state.incident
        link = self.attached.get(flag.flag_id)
        if link is not None and ts - link.last_ts > self.config.flag_cooldown_ms:
            link = None  # as if swept: the outcome must not depend on sweep timing
        if link is not None and (incident is None or link.incident_id != incident.incident_id):
            if self._explained(flag, link.cause):  # stays with the incident it joined
                self.attached[flag.flag_id] = Attachment(link.incident_id, link.cause, ts)
                self._emit(flag, link.incident_id)
                return
            del self.attached[flag.flag_id]
        if incident is not None:
            self._join(incident, flag)
        elif self._surging(state):
            self._open(state, flag)
        elif self._late_victim(state, flag):
            self._join_closed(state, flag)
        else:
            self._emit(flag, None)

    def _cause(self, cause: str, ts: int) -> CauseState:
        state = self.causes.get(cause)
        ttl = self.config.incident_cause_ttl_ms
        if state is not None and state.incident is None and ts - state.last_ts > ttl:
            state = None  # as if the sweep had removed it
        if state is None:
            bucket = self.config.incident_bucket_ms
            state = self.causes[cause] = CauseState(rolled_to=ts - ts % bucket, last_ts=ts)
        return state

    def baseline(self, state: CauseState) -> float:
        """The cause's baseline as judged: its learnt mean plus what the tracker assumes about
        the time before it started watching, `incident_prior_per_1000_active` per 1000 clients
        active now, weighted as the learnt mean weighs that time (halved every half-life the
        tracker has watched). So at a platform of 30 000 active clients a fresh tracker does not
        take a busy cause for a surge from zero, and a cause first seen hours after the start (an
        outage's new failure reason) is judged against nearly 0: its surge is news."""
        per_1000 = self.config.incident_prior_per_1000_active
        thousands = self._active // 1000  # whole thousands: small streams keep a zero prior
        started = self._started
        if per_1000 <= 0 or thousands == 0 or started is None:
            return state.baseline
        watched = max(0, (state.rolled_to - started) // self.config.incident_bucket_ms)
        weight: float = self._keep**watched
        return state.baseline + per_1000 * thousands * weight

    def observe_active(self, active_clients: int) -> None:
        """How many clients are active now (the engine's users in memory), for `baseline`.
        Runners without an engine at hand (the Kafka queue sink) do not call it: causes then
        start from 0."""
        self._active = max(0, active_clients)

    def _evict(self, state: CauseState, before: int) -> None:
        """Drop window entries at or before `before`."""
        window = state.window
        i = state.start
        while i < len(window) and window[i][0] <= before:
            user = window[i][1]
            n = state.users[user] - 1
            if n:
                state.users[user] = n
            else:
                del state.users[user]
            i += 1
        if i > 64 and i * 2 > len(window):
            del window[:i]
            i = 0
        state.start = i

    def _roll(self, state: CauseState, boundary: int) -> None:
        """Sample the window count into the baseline at each bucket end up to `boundary`."""
        c = self.config
        bucket, span = c.incident_bucket_ms, c.incident_window_ms
        b = state.rolled_to + bucket
        while b <= boundary:
            self._evict(state, b - span)
            if state.incident is None:
                x = len(state.users)
                if x == 0:  # an empty window samples 0 until the next flag: in one step
                    n = (boundary - b) // bucket + 1
                    state.baseline *= self._keep**n
                    b += n * bucket
                    break
                state.baseline = x + (state.baseline - x) * self._keep
            b += bucket
        state.rolled_to = max(state.rolled_to, b - bucket)

    def _add(self, state: CauseState, flag: Flag) -> None:
        ts = flag.ts
        entry = (ts, flag.user_id, flag.flag_id)
        window = state.window
        if window and window[-1][0] > ts:  # a late flag: keep the window in time order
            bisect.insort(window, entry, lo=state.start)
        else:
            window.append(entry)
        state.users[flag.user_id] += 1
        state.last_ts = max(state.last_ts, ts)
        if state.detail is None:
            e = cause_signal(flag).evidence
            if isinstance(e, RageClickEvidence):
                state.detail = e.label
        self._evict(state, state.last_ts - self.config.incident_window_ms)

    def _surging(self, state: CauseState) -> bool:
        c = self.config
        n = len(state.users)
        if n < c.incident_min_users or n < c.incident_surge_factor * self.baseline(state):
            return False
        # Clients already with another incident (or forgotten) would not join this one: an
        # incident needs incident_min_users of its own.
        free = {user for _, user, flag_id in state.window[state.start :] if self._free(flag_id)}
        return len(free) >= c.incident_min_users

    def _free(self, flag_id: str) -> bool:
        """Whether the latest emission of `flag_id` is remembered and with no other incident."""
        latest = self._recent.get(flag_id)
        if latest is None:
            return False
        link = self.attached.get(flag_id)
        return link is None or latest.ts - link.last_ts > self.config.flag_cooldown_ms

    def _explained(self, flag: Flag, cause: str) -> bool:
        """True when the incident of `cause` explains all of the flag's evidence."""
        if _RANK[flag.severity] >= _RANK[self.config.incident_individual_severity]:
            return False
        # A weak signal of another cause (an x/y-only click burst, a short chat wait) would never
        # have flagged alone: it does not make the client more than a victim of the incident.
        return all(cause_key(s) == cause or s.strength < 1.0 for s in flag.signals)

    def _open(self, state: CauseState, flag: Flag) -> None:
        cause = flag_cause(flag)
        ts = flag.ts
        live = state.window[state.start :]
        incident = IncidentState(
            incident_id=incident_id(cause, ts),
            cause=cause,
            kind=cause_signal(flag).kind,
            opened_ts=ts,
            first_seen_ts=live[0][0],
            last_seen_ts=ts,
            baseline=self.baseline(state),
            peak=len(state.users),
            detail=state.detail,
        )
        state.incident = self.open[cause] = incident
        self.stats.opened[incident.kind] += 1
        earlier: list[Flag] = []
        seen = {flag.flag_id}
        for _, _, flag_id in live:
            if flag_id in seen:
                continue
            seen.add(flag_id)
            latest = self._recent.get(flag_id)
            if latest is None:  # a late flag's window reaches past what is remembered
                continue
            link = self.attached.get(flag_id)
            if link is not None and latest.ts - link.last_ts <= self.config.flag_cooldown_ms:
                continue  # already with another incident
            if self._explained(latest, cause):
                incident.users.add(latest.user_id)
                earlier.append(latest)
            else:
                incident.individual.add(latest.user_id)
        if self._explained(flag, cause):
            incident.users.add(flag.user_id)
        else:
            incident.individual.add(flag.user_id)
        self._emit_incident(incident, ts, "open")
        for latest in earlier:
            self.stats.reemitted += 1
            self.attached[latest.flag_id] = Attachment(incident.incident_id, cause, latest.ts)
            self._emit(latest, incident.incident_id)
        self._join(incident, flag)

    def _late_victim(self, state: CauseState, flag: Flag) -> bool:
        """A flag raised after its cause's incident closed by evidence from while it was open
        (a weak lock-out during the outage, corroborated later): a victim of that incident."""
        closed = state.closed
        if closed is None or not self._explained(flag, closed.cause):
            return False
        signal_ts = cause_signal(flag).ts
        return closed.first_seen_ts <= signal_ts <= state.closed_ts

    def _join_closed(self, state: CauseState, flag: Flag) -> None:
        closed = state.closed
        assert closed is not None
        closed.users.add(flag.user_id)
        closed.individual.discard(flag.user_id)
        self.attached[flag.flag_id] = Attachment(closed.incident_id, closed.cause, flag.ts)
        self._emit(flag, closed.incident_id)
        closed.update += 1
        self.outbox.append(self._record(closed, flag.ts, "closed", closed_ts=state.closed_ts))

    def _join(self, incident: IncidentState, flag: Flag) -> None:
        """A flag of the incident's cause while it is open."""
        incident.last_seen_ts = max(incident.last_seen_ts, flag.ts)
        state = self.causes[incident.cause]
        incident.peak = max(incident.peak, len(state.users))
        if self._explained(flag, incident.cause):
            incident.users.add(flag.user_id)
            incident.individual.discard(flag.user_id)
            link = Attachment(incident.incident_id, incident.cause, flag.ts)
            self.attached[flag.flag_id] = link
            self._emit(flag, incident.incident_id)
        else:
            if flag.user_id not in incident.users:
                incident.individual.add(flag.user_id)
            self.attached.pop(flag.flag_id, None)
            self._emit(flag, None)

    def _judge(self, incident: IncidentState, boundary: int) -> None:
        """At a bucket end: close the incident once its cause has been quiet long enough, else
        emit an update when its counts changed."""
        c = self.config
        state = self.causes[incident.cause]
        self._roll(state, boundary)
        count = len(state.users)
        if count <= max(c.incident_close_users, c.incident_close_factor * incident.baseline):
            if incident.quiet_since is None:
                incident.quiet_since = boundary
            if boundary - incident.quiet_since >= c.incident_close_quiet_ms:
                self._close(incident, state, boundary)
                return
        else:
            incident.quiet_since = None
        self._emit_incident_if_changed(incident, boundary)

    def _close(self, incident: IncidentState, state: CauseState, boundary: int) -> None:
        del self.open[incident.cause]
        state.incident = None
        state.closed, state.closed_ts = incident, boundary
        self.stats.closed[incident.kind] += 1
        incident.update += 1
        self.outbox.append(self._record(incident, boundary, "closed", closed_ts=boundary))

    # -- output -----------------------------------------------------------------------------------
    def _emit(self, flag: Flag, incident: str | None) -> None:
        if incident is None:
            self.stats.individual += 1
        else:
            self.stats.attached += 1
        if flag.incident_id != incident:
            flag = flag.model_copy(update={"incident_id": incident})
        self.outbox.append(flag)

    def _shown(self, incident: IncidentState) -> tuple[int, int, int, int]:
        return (
            len(incident.users),
            len(incident.individual),
            incident.peak,
            incident.last_seen_ts,
        )

    def _emit_incident(self, incident: IncidentState, ts: int, status: IncidentStatus) -> None:
        incident.emitted = self._shown(incident)
        self.outbox.append(self._record(incident, ts, status))

    def _emit_incident_if_changed(self, incident: IncidentState, ts: int) -> None:
        if self._shown(incident) != incident.emitted:
            incident.update += 1
            self._emit_incident(incident, ts, "open")

    def _record(
        self,
        incident: IncidentState,
        ts: int,
        status: IncidentStatus,
        closed_ts: int | None = None,
    ) -> Incident:
        window = self.config.incident_window_ms
        per_minute = 60_000 / window
        affected = len(incident.users)
        return Incident(
            incident_id=incident.incident_id,
            cause=incident.cause,
            kind=incident.kind,
            ts=ts,
            status=status,
            first_seen_ts=incident.first_seen_ts,
            opened_ts=incident.opened_ts,
            last_seen_ts=incident.last_seen_ts,
            closed_ts=closed_ts,
            affected_users=affected,
            individual_users=len(incident.individual),
            peak_rate=round(incident.peak * per_minute, 3),
            baseline_rate=round(incident.baseline * per_minute, 3),
            window_ms=window,
            evidence=evidence_text(incident, window),
            message=bulk_message(incident.kind, incident.cause, incident.detail),
            update=incident.update,
        )

    # -- memory -----------------------------------------------------------------------------------
    def _forget_recent(self, before: int) -> None:
        order = self._recent_order
        recent = self._recent
        while order and order[0][0] < before:
            ts, flag_id = order.popleft()
            latest = recent.get(flag_id)
            if latest is not None and latest.ts == ts:
                del recent[flag_id]

    def _sweep(self, now: int) -> None:
        """Forget idle causes and old attachments; only what `_process` would ignore anyway."""
        self._last_sweep = now
        c = self.config
        idle = [
            k
            for k, s in self.causes.items()
            if s.incident is None and now - s.last_ts > c.incident_cause_ttl_ms
        ]
        for cause in idle:
            del self.causes[cause]
        old = [k for k, a in self.attached.items() if now - a.last_ts > c.flag_cooldown_ms]
        for flag_id in old:
            del self.attached[flag_id]

    # -- checkpoints ------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """All state (causes, open incidents, attachments, buffered flags) as bytes."""
        parts = (
            self.causes,
            self.open,
            self.attached,
            self._buffer,
            self._seq,
            self._max_ts,
            self._released,
            self._boundary,
            self._started,
            self._active,
            self._recent,
            self._recent_order,
            self._last_sweep,
        )
        return dump_state(STATE_VERSION, parts)

    def restore(self, blob: bytes) -> None:
        """Load a `snapshot` taken by the same STATE_VERSION (refuses any other)."""
        (
            self.causes,
            self.open,
            self.attached,
            self._buffer,
            self._seq,
            self._max_ts,
            self._released,
            self._boundary,
            self._started,
            self._active,
            self._recent,
            self._recent_order,
            self._last_sweep,
        ) = load_state(blob, STATE_VERSION, "incident state")
        # One object per open incident, shared by its cause state and the open index.
        for cause, incident in self.open.items():
            self.causes[cause].incident = incident


def _minutes(ms: int) -> str:
    minutes = ms / 60_000
    return f"{minutes:.0f} min" if minutes == int(minutes) else f"{minutes:.1f} min"


def _what(cause: str) -> str:
    return cause.split(":", 1)[1] if ":" in cause else cause


def evidence_text(incident: IncidentState, window_ms: int) -> str:
    """One sentence: what happened to the clients, at what peak, against the usual level. (The
    number of clients is in the record's counts, and in the queue, which lists them live.)"""
    what = _what(incident.cause)
    if incident.kind == "failed_logins":
        reason = f" ({what})" if what != "-" else ""
        happened = f"could not log in{reason}"
    elif incident.kind == "rage_click":
        page, _, control = what.partition("|")
        name = f"“{incident.detail}”" if incident.detail else (control if control != "-" else "")
        where = f" on {page}" if page != "-" else ""
        happened = f"hammered {name or 'one control'}{where}"
    else:
        channel = f" in the {what} chat" if what != "-" else " in chat"
        happened = f"left{channel} while waiting for an answer"
    usual = f"{incident.baseline:.1f}" if incident.baseline >= 0.05 else "none"
    return (
        f"Clients {happened}: up to {incident.peak} within {_minutes(window_ms)} (usually {usual})."
    )


def bulk_message(kind: str, cause: str, detail: str | None = None) -> str:
    """A gentle message to every affected client; it names the problem, never the client."""
    what = _what(cause)
    if kind == "failed_logins":
        return (
            "We are sorry: some of you could not sign in to your account just now because of a "
            "problem on our side, not anything you did. Your account and your information are "
            "safe. We are working on it; if you still cannot sign in later, reply to this message "
            "and we will help you personally."
        )
    if kind == "rage_click":
        page = what.partition("|")[0]
        control = f"the “{detail}” button" if detail else "a button"
        where = f" on the {page} page" if page != "-" else ""
        return (
            f"We are sorry: {control}{where} did not respond for a while because of a problem "
            "on our side. We know about it and are fixing it, so there is no need to try again "
            "now. If you need anything in the meantime, reply to this message and we will help."
        )
    return (
        "We are sorry you were left waiting in our chat: many people waited longer than they "
        "should have because of a problem on our side. If you still want to talk, reply to this "
        "message or start a new chat, and someone will answer you as soon as possible."
    )
