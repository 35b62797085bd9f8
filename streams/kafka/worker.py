"""The Kafka runner: `frustration worker`, a faust-streaming app around the same detector core.

faust keeps the worker's lifecycle, web port and Prometheus monitor (`faust_*` and the same
`frustration_*` metrics as the embedded service, at /metrics on `worker_web_port`). The events
topic itself is read by the batch detect stage, `streams.kafka.batch.BatchDetectStage` (aiokafka
`getmany()`, one DetectionEngine per assigned partition, per-user state in the compacted
<app id>-user-state changelog), started and stopped with the faust app. See that module for the
data path.

Guarantee: at least once, with idempotent flags. A worker killed at any point restarts (or its
partitions move to another worker) from the last state write and re-reads the input after it,
so no event is lost. Flags emitted after that write are emitted again, identical, with the same
`flag_id` and `update`: consumers (the queue sink, `frustration flags`) keep one per
(flag_id, update). The state records the offsets it covers, so a re-read event is never counted
twice even when the offset commit lagged behind the state write.

faust's per-message path (a route agent re-keying by user, then a detect agent per by-user
partition) was retired in issue 16 and its code removed: `worker_hot_path` accepts only "batch".
"""

from __future__ import annotations

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry

from streams.kafka.batch import BatchDetectStage
from streams.kafka.io import bootstrap_servers, ensure_topics
from streams.metrics import FrustrationMetrics
from streams.runtime import tune_gc
from streams.settings import Settings


class KafkaRunner:
    """Builds the faust app and its batch detect stage for one worker process."""

    def __init__(self, settings: Settings, worker_name: str | None = None) -> None:
        self.settings = settings
        self.partitions = settings.topic_partitions
        self.registry = CollectorRegistry()
        self.metrics = FrustrationMetrics(self.registry, runner="kafka")
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
        self._wire_batch(app, worker_name)
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

    def prepare_topics(self) -> None:
        """Create the topics the worker reads and writes (faust creates only its own)."""
        ensure_topics(self.settings)


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
