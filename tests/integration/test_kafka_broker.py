"""The test broker (deploy/kafka/broker.py) is a working Kafka: keyed messages round-trip."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from kafka import KafkaConsumer, KafkaProducer

from tests.integration.kafka_fixture import create_topic, unique_topic

pytestmark = pytest.mark.kafka

MESSAGES = 100
PARTITIONS = 4


def test_bootstrap_is_local(kafka_broker: str) -> None:
    host, _, port = kafka_broker.rpartition(":")
    assert host == "127.0.0.1"
    assert int(port) > 0


def test_keyed_messages_round_trip_through_four_partitions(kafka_broker: str) -> None:
    topic = unique_topic("roundtrip")
    create_topic(kafka_broker, topic, PARTITIONS)
    sent = {f"msg-{i:03d}": f"user-{i % 10}" for i in range(MESSAGES)}  # value -> key

    producer = KafkaProducer(bootstrap_servers=kafka_broker, acks="all", linger_ms=5)
    try:
        for value, key in sent.items():
            producer.send(topic, key=key.encode(), value=value.encode())
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker,
        group_id=unique_topic("roundtrip-group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received: dict[str, str] = {}
    partitions_of_key: dict[str, set[int]] = {}
    try:
        deadline = time.monotonic() + 60
        while len(received) < MESSAGES and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for record in records:
                    key = record.key.decode()
                    received[record.value.decode()] = key
                    partitions_of_key.setdefault(key, set()).add(tp.partition)
        consumer.commit()
    finally:
        consumer.close()

    assert received == sent
    # The default partitioner hashes the key: one partition per key, and with 10 keys over
    # 4 partitions more than one partition is in use.
    assert all(len(parts) == 1 for parts in partitions_of_key.values())
    used = Counter(next(iter(parts)) for parts in partitions_of_key.values())
    assert len(used) > 1
    assert set(used) <= set(range(PARTITIONS))
