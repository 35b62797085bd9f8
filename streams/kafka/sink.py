"""`frustration queue-sink`: the support queue of the Kafka runner, and its incident stage.

Consumes the flags and alerts topics (kafka-python, consumer group `<app id>-queue-sink`) into the
same SQLite support-queue store the embedded service uses, and serves the same queue API, `/queue`
and `/ops` pages and `/metrics` (`streams.embedded.server.build_app` without ingest).

Flags pass through the same `IncidentTracker` as in replay and the embedded service (one tracker
sees every flag, so one outage is one incident whatever partition its clients are on); incident
records go to the queue and are published on the incidents topic, keyed by incident_id.

The store is idempotent by flag_id and update, so a flag the workers emit twice (at least once)
is queued once. Offsets are committed after the messages are stored: a crashed sink re-reads,
never skips; the tracker's state is in the sink's checkpoint file like the embedded service's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from signals.flags import Flag, SecurityAlert
from signals.incidents import Incident
from streams.embedded.runner import EmbeddedRunner
from streams.kafka.io import bootstrap_servers, ensure_topics
from streams.metrics import FrustrationMetrics
from streams.embedded.server import RUNNER, build_app, run_app
from streams.settings import Settings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500


def store_messages(
    runner: EmbeddedRunner, topic_of: dict[str, str], records: list[Any]
) -> list[Incident]:
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
    runner.route_outputs(alerts)
    if bad:
        runner.store.add_dead_letters(bad)
    return runner.track_incidents(flags)


async def _consume(app: web.Application) -> AsyncIterator[None]:
    from kafka import KafkaConsumer, KafkaProducer

    settings: Settings = app[SINK_SETTINGS]
    runner = app[RUNNER]
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
                incidents = store_messages(runner, topic_of, records)
            except Exception:
                # Not committed, so read again after a restart; the sink stays up for the queue.
                log.exception("could not store %d messages; they will be read again", len(records))
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


def build_sink_app(settings: Settings) -> web.Application:
    app = build_app(settings, FrustrationMetrics(runner="kafka"), ingest=False)
    app[RUNNER].counts_flags = False
    app[SINK_SETTINGS] = settings
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
