"""`frustration queue-sink`: the support queue of the Kafka runner, and its incident stage.

Consumes the flags and alerts topics (kafka-python, consumer group `<app id>-queue-sink`) into the
same SQLite support-queue store the embedded service uses, and serves the same queue API, `/queue`
and `/ops` pages and `/metrics` (`streams.embedded.server.build_app` without ingest).

Flags pass through the same `IncidentTracker` as in replay and the embedded service (one tracker
sees every flag, so one outage is one incident whatever partition its clients are on); incident
records go to the queue and are published on the incidents topic, keyed by incident_id.

The store is idempotent by flag_id and update, so a flag the workers emit twice (at least once)
is queued once. Offsets are committed after the messages are stored: a crashed sink re-reads,
never skips; the tracker's state is in the sink's checkpoint file (`checkpoint_path`), written
every `checkpoint_interval_s` and on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from signals.exceptions import ConfigurationError
from signals.flags import Flag, SecurityAlert
from signals.incidents import Incident
from streams.checkpoint import write_atomically
from streams.kafka.io import bootstrap_servers, ensure_topics
from streams.metrics import FrustrationMetrics
from streams.queue.api import FEED, build_queue_app, check_bind, run_app
from streams.queue.feed import QueueFeed
from streams.queue.store import QueueStore
from streams.settings import Settings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500


#: The sink's checkpoint file: (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, incident tracker state).
CHECKPOINT_FORMAT = "frustration-queue-sink"
CHECKPOINT_VERSION = 1


def store_messages(feed: QueueFeed, topic_of: dict[str, str], records: list[Any]) -> list[Incident]:
    """Put consumed flag and alert messages into the queue (flags through the incident tracker);
    returns the incident records to publish.

    An unreadable message (not the flag or alert wire format) is dead-lettered in the store with
    its reason, like every other bad input."""
    flags: list[Flag] = []
    alerts: list[SecurityAlert] = []
    bad: list[dict[str, Any]] = []
    for record in records:
        kind = topic_of[record.topic]
        try:
            if kind == "flag":
                flags.append(Flag.model_validate_json(record.value))
            else:
                alerts.append(SecurityAlert.model_validate_json(record.value))
        except ValidationError as exc:
            bad.append(
                {
                    "reason": "invalid_value",
                    "detail": f"{kind} message: {exc.errors()[0]['msg']}",
                    "source": f"kafka:{record.topic}",
                    "size": len(record.value or b""),
                }
            )
    feed.route_outputs(alerts)
    incidents = feed.track_incidents(flags)
    # Last, in one transaction: the only write that is not idempotent, so a batch that failed
    # before it and is read again (`_consume`) does not keep its dead letters twice.
    if bad:
        feed.store.add_dead_letters(bad)
    return incidents


async def _consume(app: web.Application) -> AsyncIterator[None]:
    from kafka import KafkaConsumer, KafkaProducer

    settings: Settings = app[SINK_SETTINGS]
    feed = app[FEED]
    topic_of = {settings.flags_topic: "flag", settings.alerts_topic: "alert"}
    loop = asyncio.get_running_loop()
    consumer = await loop.run_in_executor(
        None,
        lambda: KafkaConsumer(
            *topic_of,
            bootstrap_servers=bootstrap_servers(settings.broker),
            group_id=f"{settings.worker_app_id}-queue-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        ),
    )

    producer = await loop.run_in_executor(
        None, lambda: KafkaProducer(bootstrap_servers=bootstrap_servers(settings.broker))
    )

    async def loop_forever() -> None:
        while True:
            # The poll blocks, so it runs in a thread; the store is written on the loop's thread.
            batches = await loop.run_in_executor(None, lambda: consumer.poll(POLL_TIMEOUT_MS))
            records = [r for batch in batches.values() for r in batch]
            try:
                incidents = store_messages(feed, topic_of, records)
            except Exception:
                # Read again from here, not after the next batch: its commit would cover these
                # (the position is past them), and a store that failed for a while (disk full,
                # the database locked) lost every flag polled meanwhile. The sink stays up for
                # the queue; its consumer lag shows the wait.
                log.exception("could not store %d messages; reading them again", len(records))
                for tp, batch in batches.items():
                    consumer.seek(tp, batch[0].offset)
                await asyncio.sleep(1.0)
                continue
            for incident in incidents:
                producer.send(
                    settings.incidents_topic,
                    key=incident.incident_id.encode(),
                    value=incident.model_dump_json().encode(),
                )
            if incidents:
                await loop.run_in_executor(None, producer.flush)
            if records:
                await loop.run_in_executor(None, consumer.commit)

    task = asyncio.create_task(loop_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await loop.run_in_executor(None, consumer.close)
    await loop.run_in_executor(None, producer.close)


SINK_SETTINGS: web.AppKey[Settings] = web.AppKey("sink_settings", Settings)


def checkpoint(feed: QueueFeed) -> None:
    blob = pickle.dumps((CHECKPOINT_FORMAT, CHECKPOINT_VERSION, feed.tracker.snapshot()))
    write_atomically(Path(feed.settings.checkpoint_path), blob)


def restore(feed: QueueFeed) -> None:
    path = Path(feed.settings.checkpoint_path)
    if not path.exists():
        return
    try:
        data = pickle.loads(path.read_bytes())
    except Exception as exc:  # a torn or foreign file: say so, never guess
        raise ConfigurationError(f"cannot read checkpoint {path}: {exc}") from exc
    if not (isinstance(data, tuple) and len(data) == 3 and data[0] == CHECKPOINT_FORMAT):
        raise ConfigurationError(f"{path} is not a queue sink checkpoint")
    if data[1] != CHECKPOINT_VERSION:
        raise ConfigurationError(
            f"checkpoint has version {data[1]}, this build reads {CHECKPOINT_VERSION}"
        )
    feed.tracker.restore(data[2])
    log.info("resumed the incident tracker from %s", path)


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    """Once a second: refresh the queue gauges; checkpoint the tracker when due and at the end."""
    feed = app[FEED]
    interval = feed.settings.checkpoint_interval_s

    async def loop() -> None:
        last = time.time()
        while True:
            await asyncio.sleep(1.0)
            try:
                feed.refresh_gauges()
                if time.time() - last >= interval:
                    checkpoint(feed)
                    last = time.time()
            except Exception:  # keep the sink up for the queue
                log.exception("housekeeping failed")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    checkpoint(feed)
    feed.store.close()


def build_sink_app(settings: Settings) -> web.Application:
    check_bind(settings)  # before anything is created on disk
    feed = QueueFeed(
        settings,
        QueueStore(settings.db_path),
        FrustrationMetrics(runner="kafka"),
        counts_flags=False,
    )
    restore(feed)
    app = build_queue_app(settings, feed)
    app[SINK_SETTINGS] = settings
    app.cleanup_ctx.append(_housekeeping)
    app.cleanup_ctx.append(_consume)
    return app


def run_queue_sink(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ensure_topics(settings)
    app = build_sink_app(settings)
    run_app(
        app,
        settings,
        f"frustration queue sink is running ({settings.flags_topic} -> {settings.db_path})",
    )
    return 0
