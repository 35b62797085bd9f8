"""The Kafka runner: `frustration worker`, a faust-streaming app around the same detector core.

The data path::

    frustration.events (any key)
        │  agent `route`: parse (bad ─> frustration.dead-letter with its reason), then send to
        │  the user's partition of the by-user topic; failed logins with an IP also go to every
        │  other partition as source-only copies (see streams.kafka.partitions)
        ▼
    <app id>-events-by-user (partitioned by user_id)
        │  agent `detect`: one DetectionEngine per partition; its state is written to the
        │  changelog-backed table `detector-state` every `worker_checkpoint_interval_s`, and input
        │  offsets are acknowledged only up to that write
        ▼
    frustration.flags (keyed by user_id)   frustration.alerts   frustration.dead-letter (late)

Guarantee: at least once, with idempotent flags. A worker killed at any point restarts (or its
partitions move to another worker) from the last state write and re-reads the input after it,
so no event is lost. Flags emitted after that write are emitted again, identical, with the same
`flag_id` and `update`: consumers (the queue sink, `frustration flags`) keep one per
(flag_id, update). The state records the offset it covers, so a re-read event is never counted
twice even when the offset commit lagged behind the state write.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP, EventT
from prometheus_client import CollectorRegistry

from detectors.engine import DetectionEngine, LateEvent, Output
from detectors.state import dump_state, load_state
from signals.exceptions import InvalidEvent
from signals.flags import Flag, SecurityAlert, Signal
from signals.wire import dead_letter_record, parse_event
from streams.kafka.batch import BatchDetectStage
from streams.kafka.io import bootstrap_servers, ensure_topics, partition_for
from streams.kafka.partition_watch import PartitionWatch
from streams.kafka.partitions import destinations
from streams.metrics import FrustrationMetrics
from streams.replay import late_record
from streams.runtime import tune_gc
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Header on a source-only copy of a failed login (see streams.kafka.partitions).
COPY_HEADER = "frustration-copy"
#: Bump with DetectionEngine.STATE_VERSION changes of the wrapper below.
CHECKPOINT_FORMAT = 1
#: The stall check asks the broker for end offsets every WATCH_INTERVAL_S, waiting at most this.
END_OFFSETS_TIMEOUT_S = 5.0
WATCH_INTERVAL_S = 5.0


# -- faust#596: records lost after table recovery --------------------------------------------------
_original_getmany = AIOKafkaConsumerThread.getmany


async def _getmany_with_snapshot(
    self: AIOKafkaConsumerThread, active_partitions: set[TP] | None, timeout: float
) -> Any:
    """Faust hands aiokafka its *live* set of active partitions, read in another thread; when
    recovery empties it, aiokafka reads the empty set as "every partition" and faust drops what
    comes back. A snapshot, and no fetch for an empty set, lost nothing in 21 kill/restart trials
    (docs/kafka-runner-notes.md)."""
    if active_partitions is not None:
        active_partitions = set(frozenset(active_partitions))
        if not active_partitions:
            await asyncio.sleep(min(timeout, 0.1))
            return {}
    return await _original_getmany(self, active_partitions, timeout)


AIOKafkaConsumerThread.getmany = _getmany_with_snapshot  # type: ignore[method-assign]


# -- one partition of users ------------------------------------------------------------------------
@dataclass(slots=True)
class PartitionState:
    """The engine of one partition and what has not been written to the table yet."""

    engine: DetectionEngine
    done_offset: int = -1  # newest input offset the engine has taken in
    written_offset: int = -1  # newest offset covered by the state in the table
    held: list[EventT[Any]] = field(default_factory=list)  # processed, not acknowledged yet
    last_event: EventT[Any] | None = None  # the table write is attributed to this event's partition
    newest_event_ts: int | None = None
    last_event_wall: float = field(default_factory=time.time)
    last_write_wall: float = field(default_factory=time.time)
    dirty: bool = False  # state changed since the last write (events or idle advances)


def _is_copy(event: EventT[Any]) -> bool:
    headers = event.headers
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    return any(key == COPY_HEADER for key, _ in items)


class KafkaRunner:
    """Builds the faust app and its agents for one worker process."""

    def __init__(self, settings: Settings, worker_name: str | None = None) -> None:
        self.settings = settings
        self.partitions = settings.topic_partitions
        self.by_user_topic_name = settings.by_user_topic
        self.registry = CollectorRegistry()
        self.metrics = FrustrationMetrics(self.registry, runner="kafka")
        self.parts: dict[int, PartitionState] = {}
        # Newest offset routed, per partition of the events topic this worker reads.
        self.routed_offsets: dict[int, int] = {}
        # Sends of this worker's route stage to each by-user partition that the broker has not
        # acknowledged yet (records its detect stage cannot see on the broker either).
        self.sends_in_flight: dict[int, int] = {}
        # Newest offset the broker acknowledged for this worker's sends, per by-user partition.
        self.sent_offsets: dict[int, int] = {}
        # End offsets of the input partitions held, as the broker gave them to the stall check.
        self.broker_ends: dict[TP, int] = {}
        self.partition_watch = PartitionWatch()
        self.batch: BatchDetectStage | None = None
        self.app = self._build_app(worker_name)

    # -- wiring -----------------------------------------------------------------------------------
    def _build_app(self, worker_name: str | None) -> faust.App:
        s = self.settings
        app = faust.App(
            s.worker_app_id,
            broker=f"kafka://{bootstrap_servers(s.broker)}",
            store=s.table_store,
            datadir=str(s.worker_data_dir),
            topic_partitions=self.partitions,
            topic_replication_factor=1,
            table_standby_replicas=0,
            processing_guarantee="at_least_once",
            web_host=s.worker_web_host,
            web_port=s.worker_web_port,
            # Defaults wait 60 s before a killed member's partitions move (measured ~57 s).
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            broker_commit_interval=0.5,
            # Static membership: a restarted worker gets its partitions back without a rebalance.
            consumer_group_instance_id=worker_name,
        )
        if s.worker_hot_path == "batch":
            self._wire_batch(app, worker_name)
        else:
            self._wire_faust(app)
        # A fixed prefix: dashboards must not depend on the app id.
        setup_prometheus_sensors(
            app, pattern="/metrics", registry=self.registry, name_prefix="faust"
        )
        return app

    def _wire_batch(self, app: faust.App, worker_name: str | None) -> None:
        """The hot topic read in batches by aiokafka (streams.kafka.batch), started and stopped
        with the faust app."""
        from mode import Service

        stage = self.batch = BatchDetectStage(self.settings, self.metrics, worker_name)

        class DetectStage(Service):
            async def on_start(self) -> None:
                await stage.start()

            @Service.task
            async def _detect(self) -> None:
                await stage.run()

            async def on_stop(self) -> None:
                await stage.stop()

        app.service(DetectStage)

    def _wire_faust(self, app: faust.App) -> None:
        s = self.settings
        raw = {"key_type": bytes, "value_type": bytes, "value_serializer": "raw"}
        self.events_topic = app.topic(s.events_topic, **raw)  # type: ignore[arg-type]
        self.by_user_topic = app.topic(
            self.by_user_topic_name,
            partitions=self.partitions,
            **raw,  # type: ignore[arg-type]
        )
        self.flags_topic = app.topic(s.flags_topic, **raw)  # type: ignore[arg-type]
        self.alerts_topic = app.topic(s.alerts_topic, **raw)  # type: ignore[arg-type]
        self.dead_letter_topic = app.topic(s.dead_letter_topic, **raw)  # type: ignore[arg-type]
        self.state_table = app.Table(
            "detector-state",
            default=None,
            # Text values: faust's table recovery decodes values as text whatever the schema says.
            key_type=str,
            value_type=str,
            partitions=self.partitions,
            # The state of a whole partition is one value; keep only the newest in the changelog.
            extra_topic_configs={"cleanup.policy": "compact", "max.message.bytes": "67108864"},
        )
        app.agent(self.events_topic, name="route")(self._route_agent)
        app.agent(self.by_user_topic, name="detect")(self._detect_agent)
        app.timer(1.0)(self._housekeeping)
        app.timer(WATCH_INTERVAL_S)(self._watch_partitions)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    def prepare_topics(self) -> None:
        """Create the topics the agents read and write (faust creates only its own)."""
        ensure_topics(self.settings)

    # -- stage 1: validate and re-key by user ------------------------------------------------------
    async def _route_agent(self, stream: faust.StreamT[bytes]) -> None:
        s = self.settings
        batches = cast(faust.Stream[bytes], stream).take_events(s.worker_batch_size, within=0.01)
        async for batch in batches:
            started = time.perf_counter()
            for message_event in batch:
                message = message_event.message
                self.routed_offsets[message.partition] = message.offset
                raw = message_event.value
                try:
                    event = parse_event(raw, s.max_event_bytes)
                except InvalidEvent as exc:
                    self.metrics.event_invalid(exc.reason)
                    await self._dead_letter(dead_letter_record(raw, exc, source="kafka"))
                    continue
                for partition, source_only in destinations(event, self.partitions, self._owner):
                    # Buffered, not awaited one by one: faust flushes the producer before it
                    # commits this batch's offsets, so a crash re-routes, never loses.
                    sent = self.by_user_topic.send_soon(
                        key=event.user_id.encode(),
                        value=raw,
                        partition=partition,
                        headers=[(COPY_HEADER, b"source")] if source_only else None,
                        force=True,
                    )
                    self.sends_in_flight[partition] = self.sends_in_flight.get(partition, 0) + 1
                    sent.add_done_callback(partial(self._on_sent, partition))
            self.metrics.observe_batch(time.perf_counter() - started, stage="route")

    def _on_sent(self, partition: int, sent: asyncio.Future[Any]) -> None:
        self.sends_in_flight[partition] -= 1
        if not sent.cancelled() and sent.exception() is None:
            offset = sent.result().offset
            if offset > self.sent_offsets.get(partition, -1):
                self.sent_offsets[partition] = offset

    @staticmethod
    def _owner(user_id: str, partitions: int) -> int:
        return partition_for(user_id.encode(), partitions)

    # -- stage 2: detect, one engine per partition -------------------------------------------------
    async def _detect_agent(self, stream: faust.StreamT[bytes]) -> None:
        s = self.settings
        # Acknowledged by hand, once the state that covers them is written (`_write_state`).
        async for event in cast(faust.Stream[bytes], stream).noack().events():
            message = event.message
            part = self.parts.get(message.partition) or self._load(message.partition)
            part.last_event = event
            if message.offset <= part.done_offset:  # already in the restored state
                part.held.append(event)
                continue
            started = time.perf_counter()
            parsed = parse_event(event.value, s.max_event_bytes)  # validated by `route`
            copy = _is_copy(event)
            if not copy:
                self.metrics.event_received(parsed.type)
                self.metrics.event_lag_seconds.observe(max(0.0, time.time() - parsed.ts / 1000))
                if part.newest_event_ts is None or parsed.ts > part.newest_event_ts:
                    part.newest_event_ts = parsed.ts
            part.engine.push(parsed, source_only=copy, arrived_ms=int(time.time() * 1000))
            part.done_offset = message.offset
            part.held.append(event)
            part.dirty = True
            part.last_event_wall = time.time()
            await self._emit(part.engine.drain(), sent_at=message.timestamp)
            self.metrics.observe_batch(time.perf_counter() - started, stage="detect")
            if time.time() - part.last_write_wall >= s.worker_checkpoint_interval_s:
                self._write_state(message.partition, part)

    def _load(self, partition: int) -> PartitionState:
        """The partition's engine, from the table when a worker had it before (recovered by faust
        before any of its events arrive)."""
        engine = DetectionEngine(
            self.settings.detection,
            # Every partition judges every IP (copies); the IP's own partition raises its alerts.
            alerts_for=lambda ip: partition_for(ip.encode(), self.partitions) == partition,
        )
        part = PartitionState(engine)
        text = self.state_table.get(str(partition))
        if text:
            offset, snapshot = load_state(
                base64.b64decode(text), CHECKPOINT_FORMAT, "the detector-state table"
            )
            engine.restore(snapshot)
            # The time no worker had the partition is not time its clients were quiet.
            engine.rebase_arrivals(int(time.time() * 1000))
            part.done_offset = part.written_offset = offset
            watermark = engine.watermark_ms
            if watermark is not None:
                part.newest_event_ts = watermark + self.settings.detection.allowed_lateness_ms
            log.info(
                "partition %d: resumed %d users at offset %d", partition, len(engine.users), offset
            )
        self.parts[partition] = part
        return part

    def _write_state(self, partition: int, part: PartitionState) -> None:
        """Write the engine to the table, then acknowledge the input it covers.

        Faust flushes the producer (this changelog record) before it commits offsets, so a
        committed offset is always covered by a written state."""
        event = part.last_event
        if event is None:
            return
        if part.dirty:
            blob = dump_state(CHECKPOINT_FORMAT, (part.done_offset, part.engine.snapshot()))
            # Table writes go to the changelog partition of the "current event"; from the timer
            # there is none, so make it the partition's own newest event.
            token = _current_event.set(weakref.ref(event))
            try:
                self.state_table[str(partition)] = base64.b64encode(blob).decode()
            finally:
                _current_event.reset(token)
            part.written_offset = part.done_offset
            part.dirty = False
        for held in part.held:
            held.ack()
        part.held.clear()
        part.last_write_wall = time.time()

    # -- outputs ----------------------------------------------------------------------------------
    async def _emit(self, outputs: Iterable[Output], sent_at: float | None = None) -> None:
        for out in outputs:
            if isinstance(out, Flag):
                await self.flags_topic.send(
                    key=out.user_id.encode(),
                    value=out.model_dump_json().encode(),
                    headers=[("flag_id", out.flag_id.encode())],
                    force=True,
                )
                if out.update == 0:
                    self.metrics.flag_opened(out.severity)
                else:
                    self.metrics.flag_escalated(out.severity)
                if sent_at is not None:
                    self.metrics.flag_latency_seconds.observe(max(0.0, time.time() - sent_at))
            elif isinstance(out, Signal):
                self.metrics.signal(out.kind)
            elif isinstance(out, SecurityAlert):
                await self.alerts_topic.send(
                    key=out.ip.encode(),
                    value=out.model_dump_json().encode(),
                    force=True,
                )
                self.metrics.security_alert(out.kind)
                log.warning("credential stuffing alert %s", out.alert_id)
            elif isinstance(out, LateEvent):
                self.metrics.events_late.inc()
                await self._dead_letter(late_record(out))

    async def _dead_letter(self, record: dict[str, Any]) -> None:
        import orjson

        await self.dead_letter_topic.send(value=orjson.dumps(record), force=True)

    # -- housekeeping -----------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        """Once a second: move event time on in quiet partitions (as the embedded runner does),
        write due state, refresh gauges."""
        now = time.time()
        s = self.settings
        consumer = self.app.consumer
        # Quiet means nothing left to read, not just nothing read lately: a worker behind live
        # traffic must not move event time to the wall clock and make its own backlog late.
        routing_behind = False
        for tp in consumer.assignment():
            if tp.topic != s.events_topic:
                continue
            routed = self.routed_offsets.get(tp.partition)
            # Nothing routed since this worker got the partition: it starts where the last
            # owner committed, so compare with where it reads from.
            next_offset = routed + 1 if routed is not None else await consumer.position(tp)
            if self._end_offset(tp) > (next_offset or 0):
                routing_behind = True
        lag = 0
        for partition, part in list(self.parts.items()):
            end = self._end_offset(TP(self.by_user_topic_name, partition))
            behind = max(0, end - part.done_offset - 1)
            lag += behind
            # This worker's own sends there that the broker has not acknowledged are unread too.
            unread = behind or self.sends_in_flight.get(partition, 0)
            if part.newest_event_ts is not None and not unread and not routing_behind:
                # Each client's time moves on with the wall clock from its own newest event (per-
                # user time): a quiet client's buffer and login deadline need no other traffic.
                # Not while records are unread (issue 15): they would come late. Back-fill
                # clients (dated far from now) move only once the partition has had no event for
                # idle_advance_s: then, as a replay's end, all they sent is processed.
                part.engine.advance_wall(int(now * 1000), int(s.idle_advance_s * 1000))
                outputs = part.engine.drain()
                if outputs:
                    part.dirty = True
                    await self._emit(outputs)
            if (part.dirty or part.held) and now - part.last_write_wall >= (
                s.worker_checkpoint_interval_s
            ):
                self._write_state(partition, part)
        self.metrics.consumer_lag_messages.set(lag)
        self.metrics.tracked_users.set(sum(len(p.engine.users) for p in self.parts.values()))

    def _end_offset(self, tp: TP) -> int:
        """The newest known end (next offset to be written) of an input partition.

        Not `consumer.highwater(tp)` alone: that is the highwater of the partition's last fetch
        response, and aiokafka keeps one fetch in flight per broker, which faust lets wait up to
        1.5 s (`fetch_max_wait_ms=1500`) for new data, and leaves out of it a partition whose
        fetched records the app has not taken yet. So the cached highwater can be over a second
        old: the detect stage saw "nothing left to read" while hundreds of records its own route
        stage had sent were on the broker, advanced event time to the wall clock, and then
        dropped them as late (issue 15). The offsets the broker acknowledged to this worker's
        producer, and the end offsets the stall check asked for, are newer."""
        end = self.app.consumer.highwater(tp) or 0
        if tp.topic == self.by_user_topic_name:
            end = max(end, self.sent_offsets.get(tp.partition, -1) + 1)
        return max(end, self.broker_ends.get(tp, 0))

    async def _watch_partitions(self) -> None:
        """Every few seconds: the input lag of each by-user partition held, from the broker's end
        offsets, and a WARNING when one has not moved for `STALL_AFTER_S` with records unread.

        Apart from `_housekeeping`: a ListOffsets request waits on the broker connection behind
        the fetch in flight (up to 1.5 s), too long for a once-a-second timer."""
        consumer = self.app.consumer
        tps = sorted(
            tp
            for tp in consumer.assignment()
            if tp.topic in (self.by_user_topic_name, self.settings.events_topic)
        )
        if not tps:
            return
        try:
            asked = await asyncio.wait_for(consumer.highwaters(*tps), END_OFFSETS_TIMEOUT_S)
        except Exception as exc:  # a slow broker must not stop the watch
            log.info("end offsets not available (%s)", exc)
            return
        now = time.time()
        for tp in tps:
            if asked.get(tp) is not None:
                self.broker_ends[tp] = max(self.broker_ends.get(tp, 0), asked[tp])
            if tp.topic != self.by_user_topic_name:
                continue
            part = self.parts.get(tp.partition)
            # Before its first record, the partition's position is where its consumer reads.
            position = part.done_offset + 1 if part else (await consumer.position(tp) or 0)
            report = self.partition_watch.update(
                tp.partition, position=position, end_offset=self._end_offset(tp), now=now
            )
            self.metrics.set_partition_input(tp.partition, report.lag, report.stalled)
            if report.changed and report.stalled:
                log.warning(
                    "partition %d of the by-user topic has not moved for %.0f s with %d records "
                    "unread: its users get no flags until it moves",
                    tp.partition,
                    report.stalled_for_s,
                    report.lag,
                )
            elif report.changed:
                log.info("partition %d of the by-user topic moves again", tp.partition)

    async def _on_revoked(self, app: Any, revoked: set[TP], **kwargs: Any) -> None:
        """Partitions moving away: forget their engines (the new owner resumes from the table and
        re-reads what was not acknowledged)."""
        for tp in revoked:
            self.broker_ends.pop(tp, None)
            if tp.topic == self.by_user_topic_name:
                self.parts.pop(tp.partition, None)
                self.partition_watch.forget(tp.partition)
                self.metrics.forget_partition(tp.partition)
            elif tp.topic == self.settings.events_topic:
                self.routed_offsets.pop(tp.partition, None)


def run_worker(settings: Settings, worker_name: str | None = None) -> int:
    """Create the topics, then run the worker until SIGTERM/SIGINT."""
    from faust.worker import Worker

    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    runner = KafkaRunner(settings, worker_name)
    runner.prepare_topics()
    worker = Worker(runner.app, loglevel="INFO", quiet=True)
    tune_gc()
    worker.execute_from_commandline()
    return 0
