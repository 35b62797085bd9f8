"""The Kafka runner delivers webhooks too: a real worker and queue sink over the test broker, the
sink writing the same store (and so the same outbox) as the embedded service; a real receiver
verifies the delivery with the reference verifier."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from tests.integration.service_fixture import ServiceFactory
from tests.integration.test_webhooks_service import SECRET, rage_burst
from tests.integration.webhook_receiver import Receiver
from tests.integration.worker_fixture import KafkaRunnerEnv

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_the_queue_sink_delivers_a_signed_flag_opened(
    kafka_runner: KafkaRunnerEnv, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    receiver = Receiver(SECRET, fail_first=1)
    receiver.start()
    try:
        kafka_runner.extra_env.update(
            {
                "FRUSTRATION_IDLE_ADVANCE_S": "0.5",
                "FRUSTRATION_WEBHOOK_RETRY_BASE_S": "0.2",
                "FRUSTRATION_WEBHOOK_POLL_INTERVAL_S": "0.1",
                "FRUSTRATION_WEBHOOKS": json.dumps(
                    [{"name": "h", "url": f"{receiver.base}/hooks", "secret": SECRET}]
                ),
            }
        )
        sink = service_factory(
            env=kafka_runner.env, command_name="queue-sink", workdir=tmp_path / "q"
        )
        kafka_runner.start_worker("worker-a")
        kafka_runner.produce([orjson.dumps(e) for e in rage_burst("kafka-hook-user")])
        sink.wait_for(
            lambda: bool(receiver.accepted("/hooks")),
            timeout=90,
            interval=0.5,
            what="a webhook from the queue sink",
        )
        time.sleep(1.0)
        delivered = receiver.accepted("/hooks")
        assert len(delivered) == 1 and all(d.verified for d in receiver.all())
        body = delivered[0].json
        assert body["type"] == "flag.opened" and body["data"]["user_id"] == "kafka-hook-user"
        assert [d.status for d in receiver.all()] == [500, 204]  # retried once, then delivered
    finally:
        receiver.close()
