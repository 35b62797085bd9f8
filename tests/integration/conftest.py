"""Fixtures of the integration tests."""

from tests.integration.kafka_fixture import kafka_broker
from tests.integration.service_fixture import service_factory
from tests.integration.worker_fixture import kafka_runner

__all__ = ["kafka_broker", "kafka_runner", "service_factory"]
