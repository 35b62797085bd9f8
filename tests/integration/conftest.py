"""Fixtures of the integration tests."""

from tests.integration.kafka_fixture import kafka_broker
from tests.integration.service_fixture import service_factory

__all__ = ["kafka_broker", "service_factory"]
