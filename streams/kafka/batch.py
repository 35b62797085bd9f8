"""The batch-native detect stage of a Kafka worker (`worker_hot_path = "batch"`).

faust's per-message path costs ten to twenty times the detector on every message (issue 16), so
the hot topic is read here with the client faust is built on, aiokafka, in per-partition batches
(`getmany()`); faust keeps the worker's lifecycle, web port and Prometheus monitor::

    frustration.events (keyed by user_id)          <app id>-events-by-user (the extra hop)
        │ getmany(): partition p ─┐                      │ partition p: mis-keyed events,
        ▼                         ▼                      ▼ failed-login copies, progress marks
        one DetectionEngine per assigned partition p (RangePartitionAssignor: partition p of
        both topics goes to the same member)
        ├─ flags, alerts, dead letters (late / bad) ─> their topics
        └─ every `worker_checkpoint_interval_s` (the partitions in turn): the partition's
           changed users and IPs and its partition record are encoded; then, in the background
           while detection goes on, the producer is flushed, they go to <app id>-user-state
           (compacted) as ONE record batch, and the input offsets they cover are committed (one
           write in flight at a time)

Distributed parts are Kafka's: partitions come from the consumer-group protocol; a
`ConsumerRebalanceListener` writes the state of revoked partitions (and commits) before the
group moves them, and loads the state of assigned ones from the changelog (only what this worker
did not just hand over itself); the state records the offsets it covers, and reading resumes
there, so an event is never counted twice nor skipped. A record batch is appended by the broker
whole or not at all, so a crash mid-write leaves the previous state, never half of the next.

Failed logins are still copied to every other partition (source-only copies): to a partition of
this worker by a direct push, to another worker's through the by-user topic. Copies arriving
after the receiving partition's watermark only feed the per-IP windows out of order, so
partitions are kept within `worker_partition_skew_ms` of event time of each other: a partition
takes in its own events only up to the slowest other partition's progress plus the skew, its
progress being the time before which it sends nothing more (`Part.progress`).
Progress of another worker's partitions comes as marks on the by-user topic, behind the copies
they cover. A quiet partition with nothing left to read does not hold the others back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.structs import TopicPartition

from detectors.engine import DetectionEngine, LateEvent, Output
from signals.exceptions import InvalidEvent
from signals.flags import Flag, SecurityAlert, Signal
from signals.wire import AnyEvent, dead_letter_record, parse_event
from streams.event_time import idle_advance_target
from streams.kafka.io import bootstrap_servers, ensure_state_topic, partition_for
from streams.kafka.partition_watch import PartitionWatch
from streams.kafka.partitions import needs_source_copies
from streams.kafka.user_state import (
    IP_PREFIX,
    PARTITION_PREFIX,
    USER_PREFIX,
    UserChangelog,
    decode_ip,
    decode_user,
    encode_partition,
    partition_key,
    restore_engine,
)
from streams.metrics import FrustrationMetrics
from streams.replay import late_record
from streams.settings import Settings

log = logging.getLogger(__name__)

COPY_HEADER = "frustration-copy"  # marks a source-only copy of a failed login on the hop topic
PROGRESS_HEADER = "frustration-progress"
#: Largest state write of one partition (one record batch); the topic allows the same.
MAX_STATE_BATCH_BYTES = 64 * 1024 * 1024
#: Most records one getmany() returns (over all partitions).
FETCH_MAX_RECORDS = 20_000
#: A progress mark is sent at most this often while a partition moves fast in event time (a
#: back-fill: the other workers wait for it), else once a second. Two workers that started
#: together on the benchmark's back-fill ran 3,500 events/s at 57 µs CPU each with 20 ms, and
#: 15,000 events/s at 35 µs with 2 ms (as fast as no limit): each mark moves the others on by
#: at most the skew allowance, so its round trip sets the pace.
MARK_EVERY_S = 0.002
INF = float("inf")
#: A partition read to its end and fetching nothing for this long holds no other one back.
CAUGHT_UP_QUIET_S = 0.5
#: Users whose partition is remembered (the memory is cleared when it is full).
PARTITION_CACHE_SIZE = 1_000_000
#: The state reader's first offset lookup waits one retry backoff for its broker connection:
#: aiokafka's 100 ms default was most of the time a partition assignment took on an empty
#: changelog (12 ms with this).
RESTORER_RETRY_BACKOFF_MS = 10
#: How often live clients' time is moved on with the clock (`_advance_clients`), as the service.
ADVANCE_EVERY_S = 0.1


@dataclass(slots=True)
class Held:
    """A record of partition p's events topic fetched, not yet taken in."""

    offset: int
    ts: int | None  # event time when it is p's own valid event, else None (taken in at once)
    raw: bytes
    event: AnyEvent | None
    sent_at: float


@dataclass(slots=True)
class StateWrite:
    """One state write, encoded: the records per partition, and the input offsets they cover."""

    records: dict[int, list[tuple[bytes, bytes | None]]] = field(default_factory=dict)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass(slots=True)
class Part:
    """One assigned partition: its engine and what is not written yet."""

    partition: int
    engine: DetectionEngine
    changelog: UserChangelog
    events_offset: int = -1  # newest offset of the events topic taken in
    hop_offset: int = -1  # newest offset of the by-user topic taken in
    held: deque[Held] = field(default_factory=deque)
    # (offset, event time) of the held records that will send something to other partitions
    # (failed logins with an IP are copied, another partition's events are forwarded), each
    # older than every one after it (a later, older one removes them: the first is the oldest),
    # and the event time of the newest own event held: what `progress` promises from.
    held_sends: deque[tuple[int, int]] = field(default_factory=deque)
    held_newest_ts: int | None = None
    max_pushed_ts: int | None = None
    newest_event_ts: int | None = None
    arrival_ms: int | None = None  # newest record timestamp of its own events taken in
    last_event_wall: float = field(default_factory=time.time)
    dirty: bool = False
    idle: bool = False  # quiet, nothing left to read: holds no other partition back
    last_mark: tuple[float, float] = (0.0, -INF)  # (when, value) of the last progress mark sent

    def progress(self, caught_up: bool) -> float:
        """No copy from this partition will come with an older event time (out-of-order input
        within the lateness aside).

        Only failed logins with an IP (copied) and other partitions' events (forwarded) send
        anything to another partition, so while events are held this is the oldest held one of
        those, or the newest own event held when none is (what follows on the partition comes
        after it): the other partitions may run on past held clicks and chats, which send
        nothing. Each progress mark then lets two workers on a back-fill run on to the next
        failed login of the slowest other partition plus the skew allowance, not the skew
        allowance only.

        `caught_up`: nothing is left to read on its events partition as far as the last fetch
        knows: it then holds no other partition back (a back-fill that ended there sends no
        more copies; live traffic comes at the wall clock)."""
        sends = self.held_sends
        next_copy = float(sends[0][1]) if sends else INF
        if self.held and self.held_newest_ts is not None:
            return min(next_copy, float(self.held_newest_ts))
        if self.idle or caught_up:
            return next_copy
        if self.max_pushed_ts is None:
            return -INF
        return min(next_copy, float(self.max_pushed_ts))

    def hold(self, held: Held) -> None:
        """A fetched record waits in `held` until the skew bound lets it in."""
        self.held.append(held)
        event = held.event
        if event is not None and (held.ts is None or needs_source_copies(event)):
            sends = self.held_sends
            while sends and sends[-1][1] >= event.ts:
                sends.pop()  # no longer the oldest of what follows it
            sends.append((held.offset, event.ts))
        if held.ts is not None:
            self.held_newest_ts = held.ts

    def release(self) -> Held:
        """The oldest held record, to be taken in now."""
        held = self.held.popleft()
        sends = self.held_sends
        if sends and sends[0][0] == held.offset:
            sends.popleft()
        if not self.held:
            self.held_newest_ts = None
        return held

    def drop_held(self) -> None:
        """Forget what was fetched and not taken in (reading resumes after `events_offset`)."""
        self.held.clear()
        self.held_sends.clear()
        self.held_newest_ts = None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """The stage's rebalance callbacks. aiokafka logs what they raise and goes on: a worker
    whose partition's state could not be loaded kept running with that partition's events
    fetched and skipped (no flag, no error). What they raise stops the detect loop instead."""

    def __init__(self, stage: BatchDetectStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._run(self.stage.on_revoked, revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._run(self.stage.on_assigned, assigned)

    async def _run(
        self,
        callback: Callable[[Iterable[TopicPartition]], Awaitable[None]],
        partitions: Iterable[TopicPartition],
    ) -> None:
        try:
            await callback(partitions)
        except Exception as exc:
            self.stage.failure = exc
            raise


class BatchDetectStage:
    """Reads the events topic in batches, one engine per assigned partition."""

    def __init__(
        self, settings: Settings, metrics: FrustrationMetrics, worker_name: str | None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.worker_name = worker_name
        self.n = settings.topic_partitions
        self.events_topic = settings.events_topic
        self.hop_topic = settings.by_user_topic
        self.state_topic = settings.user_state_topic
        self.group_id = f"{settings.worker_app_id}-detect"
        self.parts: dict[int, Part] = {}
        self.retired: dict[int, Part] = {}  # revoked and written: reused if assigned back
        self.remote_progress: dict[int, float] = {}
        self.lock = asyncio.Lock()
        self.partition_watch = PartitionWatch()
        self.broker_ends: dict[TopicPartition, int] = {}
        self.sends_in_flight: dict[int, int] = {}
        self.state_bytes_written = 0
        self._stopping = False
        self._stopped = asyncio.Event()
        self.failure: Exception | None = None  # raised by a rebalance callback: the loop stops
        self._last_write = time.time()
        self._last_advance = 0.0
        self._write_task: asyncio.Task[None] | None = None  # the state write in flight
        self._write_cursor = -1  # the partition (index among the assigned) written last
        self._last_held_log = 0.0
        self._partitions: dict[str, int] = {}
        # Events taken in per type since the last metrics update (one inc per batch, not event).
        self._received: Counter[str] = Counter()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.restorer: AIOKafkaConsumer | None = None

    def _partition_of(self, user_id: str) -> int:
        """The user's partition (murmur2 in Python costs about 10 µs: remembered)."""
        cache = self._partitions
        partition = cache.get(user_id)
        if partition is None:
            if len(cache) >= PARTITION_CACHE_SIZE:
                cache.clear()
            partition = cache[user_id] = partition_for(user_id.encode(), self.n)
        return partition

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ensure_state_topic, s)
        bootstrap = bootstrap_servers(s.broker)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            max_batch_size=MAX_STATE_BATCH_BYTES,
            max_request_size=MAX_STATE_BATCH_BYTES,
        )
        await self.producer.start()
        self.restorer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            retry_backoff_ms=RESTORER_RETRY_BACKOFF_MS,
            max_partition_fetch_bytes=MAX_STATE_BATCH_BYTES,
            fetch_max_bytes=MAX_STATE_BATCH_BYTES,
        )
        await self.restorer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=self.group_id,
            group_instance_id=self.worker_name,
            partition_assignment_strategy=(RangePartitionAssignor,),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A killed member's partitions move after 10 s, not the 45 s default.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            # A partition waiting for progress marks must not wait half a second per fetch.
            fetch_max_wait_ms=50,
            max_poll_interval_ms=300_000,
        )
        await self.consumer.start()
        self.consumer.subscribe([self.events_topic, self.hop_topic], listener=_Listener(self))

    async def run(self) -> None:
        assert self.consumer is not None
        next_housekeeping = time.time() + 1.0
        try:
            while not self._stopping:
                batches = await self.consumer.getmany(timeout_ms=100, max_records=FETCH_MAX_RECORDS)
                if self.failure is not None:
                    raise self.failure
                async with self.lock:
                    if batches:
                        await self._take(batches)
                    elif any(p.held for p in self.parts.values()):
                        await self._release()  # another partition may have caught up meanwhile
                        self._count_received()
                    now = time.time()
                    if now - self._last_advance >= ADVANCE_EVERY_S:
                        self._last_advance = now
                        await self._advance_clients(now)
                    await self._send_marks(now)
                    if now >= next_housekeeping:
                        next_housekeeping = now + 1.0
                        await self._housekeeping(now)
                    await self._write_next_partition(now)
        finally:
            self._stopped.set()

    async def _write_next_partition(self, now: float) -> None:
        """Each partition's state is written every `worker_checkpoint_interval_s`, one partition
        at a time in turn, each write encoded here and sent while detection goes on.

        Encoding a second's changed users takes 100-280 ms at 8,500 events/s (pickling and
        deflating some thousands of users): all partitions at once held every flag that long
        once a second, and waiting for the acknowledgements on the loop held them longer."""
        n = len(self.parts)
        if not n or now - self._last_write < self.settings.worker_checkpoint_interval_s / n:
            return
        task = self._write_task
        if task is not None and not task.done():
            return  # one write in flight at a time: this one waits for the next turn
        await self._finish_write()  # raises a failed write
        self._write_cursor = (self._write_cursor + 1) % n
        write = self._encode_states([self.parts[sorted(self.parts)[self._write_cursor]]])
        self._write_task = asyncio.create_task(self._send_states(write))
        self._last_write = now

    async def _finish_write(self) -> None:
        """Wait for the state write in flight, if any; its failure is raised here."""
        task, self._write_task = self._write_task, None
        if task is not None:
            await task

    async def stop(self) -> None:
        self._stopping = True
        if self.consumer is not None:
            try:
                await asyncio.wait_for(self._stopped.wait(), 10.0)
            except TimeoutError:
                log.warning("the detect loop did not stop in 10 s")
            async with self.lock:
                await self._finish_write()
                await self._write_states(list(self.parts.values()), force=True)
            await self.consumer.stop()
        if self.restorer is not None:
            await self.restorer.stop()
        if self.producer is not None:
            await self.producer.stop()

    # -- rebalances -------------------------------------------------------------------------------
    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Before the group moves partitions: write their state, commit, keep it for reuse."""
        async with self.lock:
            parts = [
                self.parts[tp.partition]
                for tp in revoked
                if tp.topic == self.events_topic and tp.partition in self.parts
            ]
            await self._finish_write()  # an older write of these must not land after this one
            await self._write_states(parts, force=True)
            for part in parts:
                self.retired[part.partition] = self.parts.pop(part.partition)
                self.partition_watch.forget(part.partition)
                self.metrics.forget_partition(part.partition)
            for tp in revoked:
                self.broker_ends.pop(tp, None)

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Partitions given to this worker: the state of each (kept from a revocation just before,
        or from the changelog), and reading resumes after the offsets it covers."""
        assert self.consumer is not None
        async with self.lock:
            wanted = sorted({tp.partition for tp in assigned if tp.topic == self.events_topic})
            kept = {p: self.retired[p] for p in wanted if p in self.retired}
            self.retired.clear()
            loaded = await self._load([p for p in wanted if p not in kept])
            for part in [*kept.values(), *loaded]:
                part.drop_held()
                part.last_event_wall = time.time()
                part.idle = False
                self.parts[part.partition] = part
                if part.events_offset >= 0:
                    self.consumer.seek(
                        TopicPartition(self.events_topic, part.partition), part.events_offset + 1
                    )
                if part.hop_offset >= 0:
                    self.consumer.seek(
                        TopicPartition(self.hop_topic, part.partition), part.hop_offset + 1
                    )
            for p in wanted:
                self.remote_progress.pop(p, None)
            log.info("detect stage: %d partitions assigned", len(wanted))

    def _new_part(self, partition: int) -> Part:
        engine = DetectionEngine(
            self.settings.detection,
            alerts_for=lambda ip: partition_for(ip.encode(), self.n) == partition,
        )
        return Part(partition, engine, UserChangelog())

    async def _load(self, partitions: list[int]) -> list[Part]:
        """Read each partition of the changelog to its end; the newest record per key wins."""
        if not partitions:
            return []
        restorer = self.restorer
        assert restorer is not None
        tps = [TopicPartition(self.state_topic, p) for p in partitions]
        ends, starts = await asyncio.gather(
            restorer.end_offsets(tps), restorer.beginning_offsets(tps)
        )
        # Explicit starting offsets: a reset to the beginning costs a request per partition,
        # and an empty partition (a new deployment) has nothing to read.
        tps = [tp for tp in tps if ends[tp] > starts[tp]]
        restorer.assign(tps)
        for tp in tps:
            restorer.seek(tp, starts[tp])
        users: dict[int, dict[str, Any]] = {p: {} for p in partitions}
        ips: dict[int, dict[str, bytes]] = {p: {} for p in partitions}
        blobs: dict[int, bytes] = {}
        started = time.monotonic()
        while [tp for tp in tps if await restorer.position(tp) < ends[tp]]:
            got = await restorer.getmany(timeout_ms=500)
            for tp, records in got.items():
                for record in records:
                    key = record.key or b""
                    if key.startswith(USER_PREFIX):
                        user_id = key[len(USER_PREFIX) :].decode()
                        if record.value is None:
                            users[tp.partition].pop(user_id, None)
                        else:
                            users[tp.partition][user_id] = record.value
                    elif key.startswith(IP_PREFIX):
                        ip = key[len(IP_PREFIX) :].decode()
                        if record.value is None:
                            ips[tp.partition].pop(ip, None)
                        else:
                            ips[tp.partition][ip] = record.value
                    elif key.startswith(PARTITION_PREFIX) and record.value is not None:
                        blobs[tp.partition] = record.value
            if time.monotonic() - started > 120:
                raise RuntimeError("could not read the user-state changelog to its end in 120 s")
        restorer.assign([])
        out = []
        for p in partitions:
            part = self._new_part(p)
            if p in blobs:
                states = {u: decode_user(v) for u, v in users[p].items()}
                ip_states = {ip: decode_ip(v) for ip, v in ips[p].items()}
                offsets = restore_engine(part.engine, blobs[p], states, ip_states)
                part.changelog.load(states, ip_states)
                part.events_offset = offsets.get("events", -1)
                part.hop_offset = offsets.get("hop", -1)
                watermark = part.engine.watermark_ms
                if watermark is not None:
                    newest = watermark + self.settings.detection.allowed_lateness_ms
                    part.newest_event_ts = part.max_pushed_ts = newest
                log.info(
                    "partition %d: resumed %d users at offset %d",
                    p,
                    len(states),
                    part.events_offset,
                )
            out.append(part)
        return out

    # -- the hot path -----------------------------------------------------------------------------
    async def _take(self, batches: dict[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        s = self.settings
        taken = 0
        for tp, records in batches.items():
            part = self.parts.get(tp.partition)
            if part is None:
                continue
            if tp.topic == self.hop_topic:
                for record in records:
                    if record.offset > part.hop_offset:
                        await self._take_hop(part, record)
                        part.hop_offset = record.offset
                continue
            last = part.held[-1].offset if part.held else part.events_offset
            for record in records:
                if record.offset <= last:
                    continue  # already taken in (restored state or an earlier fetch)
                last = record.offset
                taken += 1
                raw = record.value or b""
                try:
                    event = parse_event(raw, s.max_event_bytes)
                except InvalidEvent as exc:
                    self.metrics.event_invalid(exc.reason)
                    await self._dead_letter(dead_letter_record(raw, exc, source="kafka"))
                    part.hold(Held(record.offset, None, raw, None, 0.0))
                    continue
                own = self._partition_of(event.user_id) == part.partition
                sent_at = record.timestamp / 1000
                part.hold(Held(record.offset, event.ts if own else None, raw, event, sent_at))
            if records:
                part.idle = False
                part.last_event_wall = time.time()
        await self._release()
        self._count_received()
        if taken:
            self.metrics.observe_batch(time.perf_counter() - started, stage="detect")

    def _count_received(self) -> None:
        for event_type, n in self._received.items():
            self.metrics.events_received.labels(type=event_type).inc(n)
        self._received.clear()

    async def _take_hop(self, part: Part, record: Any) -> None:
        headers = dict(record.headers or ())
        if PROGRESS_HEADER in headers:
            try:
                marks = [pair.split(":") for pair in headers[PROGRESS_HEADER].decode().split(",")]
                progress = {int(source): float(value) for source, value in marks}
            except ValueError:  # not one of ours: no event in it, nothing to count
                log.warning("ignored a malformed progress mark on partition %d", part.partition)
                return
            for source, value in progress.items():
                if source not in self.parts:
                    self.remote_progress[source] = value
            return
        raw = record.value or b""
        try:
            event = parse_event(raw, self.settings.max_event_bytes)
        except InvalidEvent as exc:  # a worker of another build (limits) or a stray writer
            self.metrics.event_invalid(exc.reason)
            await self._dead_letter(dead_letter_record(raw, exc, source="kafka:by-user"))
            return
        copy = COPY_HEADER in headers
        await self._push(part, event, copy=copy, sent_at=record.timestamp / 1000)
        if not copy:
            part.idle = False
            part.last_event_wall = time.time()

    def _bound(self, partition: int, progress: dict[int, float] | None = None) -> float:
        """Newest event time partition p may take in now: the slowest other partition's progress
        plus the skew allowance. `progress`: this worker's partitions' progress, if known."""
        slowest = INF
        for q in range(self.n):
            if q == partition:
                continue
            other = self.parts.get(q)
            if other is None:
                value = self.remote_progress.get(q, -INF)
            elif progress is not None:
                value = progress[q]
            else:
                value = self._progress(other)
            slowest = min(slowest, value)
        return slowest + self.settings.worker_partition_skew_ms

    def _progress(self, part: Part) -> float:
        """Caught up: read to the highwater of the last fetch, and nothing fetched for
        CAUGHT_UP_QUIET_S. Not at once: a partition that is read faster than it is written is
        caught up between every two fetches, and others would run ahead of its copies."""
        caught_up = (
            self._read_to_highwater(self.events_topic, part.partition, part.events_offset)
            and time.time() - part.last_event_wall >= CAUGHT_UP_QUIET_S
        )
        return part.progress(caught_up=caught_up)

    def _read_to_highwater(self, topic: str, partition: int, offset: int) -> bool:
        """Whether `offset` is the last record of the partition as far as the last fetch knows
        (False while no fetch has told)."""
        assert self.consumer is not None
        end = self.consumer.highwater(TopicPartition(topic, partition))
        return end is not None and offset + 1 >= end

    async def _release(self) -> None:
        """Take in held events, partition by partition, as far as the skew allows; repeat while
        one partition's progress lets another go on."""
        moved = True
        while moved:
            moved = False
            # (taking one partition's events in can only move the others' progress on, so these
            # values stay safe for the rest of the pass: at worst too low, which waits a pass)
            progress = {p: self._progress(part) for p, part in self.parts.items()}
            for part in list(self.parts.values()):
                held = part.held
                if not held:
                    continue
                bound = self._bound(part.partition, progress)
                while held and (held[0].ts is None or held[0].ts <= bound):
                    h = part.release()
                    event = h.event
                    if event is not None and h.ts is not None and not needs_source_copies(event):
                        # Most events: the partition's own, going nowhere else. Taken in here,
                        # not through `_route`'s awaits (three coroutines an event).
                        outputs = self._take_in(part, event, copy=False, sent_at=h.sent_at)
                        if outputs:
                            await self._emit(part, outputs, h.sent_at)
                    elif event is not None:
                        await self._route(part, event, h.raw, h.sent_at)
                    part.events_offset = h.offset
                    moved = True
                progress[part.partition] = self._progress(part)

    async def _route(self, part: Part, event: AnyEvent, raw: bytes, sent_at: float) -> None:
        """An event read from partition p: its user's partition takes it in; a failed login with
        an IP also goes to every other partition as a source-only copy."""
        own = self._partition_of(event.user_id)
        await self._deliver(own, event, raw, copy=False, sent_at=sent_at)
        if needs_source_copies(event):
            for q in range(self.n):
                if q != own:
                    await self._deliver(q, event, raw, copy=True, sent_at=sent_at)

    async def _deliver(
        self, partition: int, event: AnyEvent, raw: bytes, *, copy: bool, sent_at: float
    ) -> None:
        """A partition of this worker takes it in now; another worker's gets it through the
        by-user topic (the original bytes, so it parses there as here)."""
        target = self.parts.get(partition)
        if target is not None:
            await self._push(target, event, copy=copy, sent_at=sent_at)
            return
        assert self.producer is not None
        headers = [(COPY_HEADER, b"source")] if copy else []
        await self.producer.send(
            self.hop_topic,
            value=raw,
            key=event.user_id.encode(),
            partition=partition,
            headers=headers,
        )

    async def _push(self, part: Part, event: AnyEvent, *, copy: bool, sent_at: float) -> None:
        outputs = self._take_in(part, event, copy=copy, sent_at=sent_at)
        if outputs:
            await self._emit(part, outputs, sent_at)

    def _take_in(
        self, part: Part, event: AnyEvent, *, copy: bool, sent_at: float
    ) -> list[Output] | None:
        """The partition's engine takes the event in; what that completed, if anything."""
        engine = part.engine
        if not copy:
            self._received[event.type] += 1
            self.metrics.event_lag_seconds.observe(max(0.0, time.time() - event.ts / 1000))
            if part.newest_event_ts is None or event.ts > part.newest_event_ts:
                part.newest_event_ts = event.ts
            if part.max_pushed_ts is None or event.ts > part.max_pushed_ts:
                part.max_pushed_ts = event.ts
        arrived_ms = None
        if not copy and sent_at > 0:
            arrived_ms = round(sent_at * 1000)
            if part.arrival_ms is None or arrived_ms > part.arrival_ms:
                part.arrival_ms = arrived_ms
        stats = engine.stats
        duplicates, revised = stats.duplicates, stats.alerts_revised_too_late
        engine.push(event, source_only=copy, arrived_ms=arrived_ms)
        part.dirty = True
        if not copy and stats.duplicates > duplicates:  # (a copy repeats its original)
            self.metrics.events_duplicate.inc()
        if stats.alerts_revised_too_late > revised:
            self.metrics.security_alert_revisions_late.inc(stats.alerts_revised_too_late - revised)
        return engine.drain() if engine.outbox else None

    # -- outputs ----------------------------------------------------------------------------------
    async def _emit(self, part: Part, outputs: list[Output], sent_at: float | None) -> None:
        producer = self.producer
        assert producer is not None
        s = self.settings
        for out in outputs:
            if isinstance(out, Flag):
                await producer.send(
                    s.flags_topic,
                    key=out.user_id.encode(),
                    value=out.model_dump_json().encode(),
                    headers=[("flag_id", out.flag_id.encode())],
                )
                if out.update == 0:
                    self.metrics.flag_opened(out.severity)
                else:
                    self.metrics.flag_escalated(out.severity)
                receipt = _receipt_s(part.engine, out) or sent_at
                if receipt:
                    self.metrics.flag_latency_seconds.observe(max(0.0, time.time() - receipt))
            elif isinstance(out, Signal):
                self.metrics.signal(out.kind)
            elif isinstance(out, SecurityAlert):
                await producer.send(
                    s.alerts_topic, key=out.ip.encode(), value=out.model_dump_json().encode()
                )
                self.metrics.security_alert(out.kind)
                log.warning("credential stuffing alert %s", out.alert_id)
            elif isinstance(out, LateEvent):
                self.metrics.events_late.inc()
                await self._dead_letter(late_record(out))

    async def _advance_clients(self, now: float) -> None:
        """Each live client's time moves on from its own newest event by the time since that
        event arrived (per-user time, as in the service): a quiet client's buffer is released
        a lateness after its last event and its login deadline fires when due, with no other
        traffic needed (the shared clock, a median of the partition's clients, lags the wall
        clock by their typical gap and then the lateness once more).

        "Now" is the wall clock while the partition is read to its end, else the newest record
        timestamp taken in from it: a backlog (a restart re-reading what its state does not
        cover) moves clients as the first reading did, never past records still waiting. It is
        never ahead of the wall clock, so a producer whose clock runs fast cannot fire other
        clients' deadlines early. Back-fill clients (dated far from their records' time) are
        not moved this way (`DetectionEngine.advance_wall`): the idle advance takes them.
        Unlike the service, no `rebase_arrivals` after a restart: what clients sent while the
        worker was down is on the topic with its timestamps, so a client with nothing there was
        quiet, and its deadline is due."""
        assert self.consumer is not None
        wall_ms = int(now * 1000)
        for part in self.parts.values():
            now_ms = part.arrival_ms
            p = part.partition
            hop_end = self.consumer.highwater(TopicPartition(self.hop_topic, p))
            if (
                not part.held
                and self._read_to_highwater(self.events_topic, p, part.events_offset)
                and (hop_end is None or part.hop_offset + 1 >= hop_end)
            ):
                now_ms = wall_ms
            if now_ms is None:
                continue
            engine = part.engine
            engine.advance_wall(min(now_ms, wall_ms))
            # (an output or a released alert changes what the partition's records hold)
            part.dirty = part.dirty or bool(engine.outbox or engine.changed_users)
            if engine.outbox:
                await self._emit(part, engine.drain(), None)

    async def _dead_letter(self, record: dict[str, Any]) -> None:
        assert self.producer is not None
        await self.producer.send(self.settings.dead_letter_topic, value=orjson.dumps(record))

    # -- state ------------------------------------------------------------------------------------
    async def _write_states(self, parts: list[Part], force: bool = False) -> None:
        """Write the partitions' state now and wait for it (a revocation, the stop)."""
        await self._send_states(self._encode_states(parts, force))

    def _encode_states(self, parts: list[Part], force: bool = False) -> StateWrite:
        """What each dirty partition's write carries, as of now: its changed users and its
        partition record with the input offsets they cover."""
        write = StateWrite()
        for part in parts:
            if part.events_offset >= 0:
                tp = TopicPartition(self.events_topic, part.partition)
                write.offsets[tp] = part.events_offset + 1
            if part.hop_offset >= 0:
                write.offsets[TopicPartition(self.hop_topic, part.partition)] = part.hop_offset + 1
            if not (part.dirty or force) or (part.events_offset < 0 and part.hop_offset < 0):
                continue
            records = part.changelog.changes(part.engine)
            covered = {"events": part.events_offset, "hop": part.hop_offset}
            records.append((partition_key(part.partition), encode_partition(part.engine, covered)))
            write.records[part.partition] = records
            part.dirty = False
        return write

    async def _send_states(self, write: StateWrite) -> None:
        """Every output sent so far first (flags, copies and dead letters before the offsets
        that made them), then each partition's records as one record batch, then the commit."""
        producer = self.producer
        if producer is None:
            return
        await producer.flush()
        pending = []
        for partition, records in write.records.items():
            batch = producer.create_batch()
            size = 0
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise RuntimeError(
                        f"the state of partition {partition} does not fit one record batch "
                        f"of {MAX_STATE_BATCH_BYTES} bytes"
                    )
                size += len(key) + len(value or b"")
            pending.append(await producer.send_batch(batch, self.state_topic, partition=partition))
            self.state_bytes_written += size
        if pending:
            await asyncio.gather(*pending)
        await self._commit(write.offsets)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Offsets only say how far the group got (lag, dashboards): the state itself records the
        offsets it covers, so a failed commit (a rebalance under way) loses nothing."""
        if not offsets or self.consumer is None:
            return
        mine = set(self.consumer.assignment())
        offsets = {tp: o for tp, o in offsets.items() if tp in mine}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:
            log.info("offset commit skipped (%s)", type(exc).__name__)

    # -- housekeeping -----------------------------------------------------------------------------
    async def _housekeeping(self, now: float) -> None:
        """Once a second: move event time on in partitions that are quiet with nothing left to
        read, send progress marks, refresh gauges."""
        consumer = self.consumer
        assert consumer is not None
        s = self.settings
        lateness = s.detection.allowed_lateness_ms
        quiet = [
            p
            for p in self.parts.values()
            if now - p.last_event_wall >= s.idle_advance_s and not p.held
        ]
        if quiet:
            tps = [
                TopicPartition(t, p.partition)
                for p in quiet
                for t in (self.events_topic, self.hop_topic)
            ]
            try:
                ends = await asyncio.wait_for(consumer.end_offsets(tps), 5.0)
            except Exception as exc:
                log.info("end offsets not available (%s)", type(exc).__name__)
                ends = {}
            for part in quiet:
                events_end = ends.get(TopicPartition(self.events_topic, part.partition))
                hop_end = ends.get(TopicPartition(self.hop_topic, part.partition))
                if events_end is None or hop_end is None:
                    continue
                if events_end > part.events_offset + 1 or hop_end > part.hop_offset + 1:
                    continue  # records wait on the broker: not idle (issue 15)
                part.idle = True
                if part.newest_event_ts is None:
                    continue
                target = idle_advance_target(part.newest_event_ts, now, lateness)
                watermark = part.engine.watermark_ms
                if watermark is None or target - lateness > watermark:
                    part.engine.advance_watermark(target)
                    part.dirty = True
                    if part.engine.outbox:
                        await self._emit(part, part.engine.drain(), None)
            if any(p.idle for p in quiet):
                await self._release()
                self._count_received()
        await self._send_marks(now, every_s=1.0)
        await self._watch(now)
        held = [p for p in self.parts.values() if p.held]
        if held and now - self._last_held_log >= 5.0:
            self._last_held_log = now
            # Held back by the skew bound: say by what, so a stuck worker can be understood.
            log.info(
                "detect stage: %d partitions hold events back for the skew bound: %s; "
                "progress of other workers' partitions: %s",
                len(held),
                ", ".join(
                    f"{p.partition}: {len(p.held)} held, next {self._progress(p):.0f}, "
                    f"bound {self._bound(p.partition):.0f}"
                    for p in held
                ),
                {q: f"{v:.0f}" for q, v in sorted(self.remote_progress.items())},
            )
        self.metrics.tracked_users.set(sum(len(p.engine.users) for p in self.parts.values()))

    async def _send_marks(self, now: float, every_s: float = 1.0) -> None:
        """Tell the other workers' partitions how far this worker's partitions got: one record
        per other partition, behind the copies it covers, with every partition's progress in
        it (`p:value,p:value`). Sent at most every MARK_EVERY_S when a partition's progress fell
        back or moved a quarter of `worker_partition_skew_ms` (a back-fill, where the others
        wait for it), else every `every_s` while anything moved (live traffic, where the skew
        bound is far ahead: a mark per partition pair every 20 ms was 800 records a second per
        worker for nothing)."""
        remote = [r for r in range(self.n) if r not in self.parts]
        if not remote or self.producer is None or not self.parts:
            return
        quarter = self.settings.worker_partition_skew_ms / 4
        progress = {p: self._progress(part) for p, part in self.parts.items()}
        due = False
        for p, part in self.parts.items():
            when, sent = part.last_mark
            value = progress[p]
            far = value < sent or value - sent >= quarter  # (inf - inf is nan: not far)
            due = due or now - when >= (MARK_EVERY_S if far else every_s)
        if not due:
            return
        for p, part in self.parts.items():
            part.last_mark = (now, progress[p])
        mark = ",".join(f"{p}:{v}" for p, v in sorted(progress.items())).encode()
        for r in remote:
            await self.producer.send(
                self.hop_topic, value=b"", partition=r, headers=[(PROGRESS_HEADER, mark)]
            )

    async def _watch(self, now: float) -> None:
        consumer = self.consumer
        assert consumer is not None
        lag = 0
        for part in self.parts.values():
            tp = TopicPartition(self.events_topic, part.partition)
            end = consumer.highwater(tp) or 0
            behind = max(0, end - part.events_offset - 1)
            lag += behind
            report = self.partition_watch.update(
                part.partition, position=part.events_offset + 1, end_offset=end, now=now
            )
            self.metrics.set_partition_input(part.partition, report.lag, report.stalled)
            if report.changed and report.stalled:
                log.warning(
                    "partition %d has not moved for %.0f s with %d records unread: its users get "
                    "no flags until it moves",
                    part.partition,
                    report.stalled_for_s,
                    report.lag,
                )
        self.metrics.consumer_lag_messages.set(lag)


def _receipt_s(engine: DetectionEngine, flag: Flag) -> float | None:
    """When the event that completed the flag arrived (its record's timestamp, seconds): the
    client's newest event when that is at or after the flag's time. A flag whose rule waits by
    definition (a login confirmation: its time is the end of the wait, after the client's last
    event) is timed from the end of its wait, in the client's clock mapped to record time."""
    clock = engine.clocks.get(flag.user_id)
    if clock is None or clock.arrived_ms is None:
        return None
    return (clock.arrived_ms + max(0, flag.ts - clock.newest)) / 1000
