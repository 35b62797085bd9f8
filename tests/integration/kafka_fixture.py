"""Pytest fixture for a real Kafka 3.9.1 broker (single node, KRaft) on 127.0.0.1.

``kafka_broker`` (session scope) starts one broker from the jars in ``deploy/kafka/lib/`` for the
whole test session and yields its bootstrap string, ``"127.0.0.1:PORT"``. Tests share the broker,
so each should use its own topic names (:func:`unique_topic`) and consumer group ids.

``deploy`` is not a Python package, so ``deploy/kafka/broker.py`` is loaded by file path.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BROKER_PY = REPO_ROOT / "deploy" / "kafka" / "broker.py"
_MODULE_NAME = "frustration_deploy_kafka_broker"


def load_broker_module() -> ModuleType:
    """``deploy/kafka/broker.py`` as a module (imported once, then cached in ``sys.modules``)."""
    module = sys.modules.get(_MODULE_NAME)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, BROKER_PY)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {BROKER_PY}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE_NAME]
        raise
    return module


def unique_topic(prefix: str = "test") -> str:
    """A topic name no other test uses on the shared broker."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create a topic (replication factor 1) and wait until every partition has a leader."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-create-topic")
    try:
        admin.create_topics(
            {
                name: {
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "configs": dict(configs or {}),
                }
            },
            wait_for_metadata=True,
        )
    finally:
        admin.close()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """Bootstrap string (``127.0.0.1:PORT``) of a broker started once per test session."""
    broker_module = load_broker_module()
    broker_module.ensure_jars()  # no-op when `make system-deps` has fetched them already
    # kafka-python logs each refused connection while the broker starts up.
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    kafka_logger.setLevel(logging.CRITICAL)
    try:
        broker = broker_module.KafkaBroker().start()
    finally:
        kafka_logger.setLevel(level)
    try:
        yield str(broker.bootstrap)
    finally:
        broker.stop()
