"""The batch path's state write (streams.kafka.batch), one function at a time: what it sends and
in which order. Crash safety and rebalances are proven against the real broker in
tests/integration/test_kafka_batch.py; these stand-ins only record calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from signals.wire import parse_event
from streams.kafka.batch import BatchDetectStage
from streams.metrics import FrustrationMetrics
from streams.settings import Settings


class _Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    def append(self, *, key: bytes, value: bytes | None, timestamp: None) -> object:
        self.records.append((key, value))
        return object()


class _Producer:
    def __init__(self, calls: list[str], fail: bool = False) -> None:
        self.calls = calls
        self.fail = fail

    async def flush(self) -> None:
        await asyncio.sleep(0)
        self.calls.append("flush")

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.calls.append(f"state p{partition} ({len(batch.records)} records)")
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            done.set_exception(RuntimeError("broker refused the state batch"))
        else:
            done.set_result(None)
        return done


class _Consumer:
    def __init__(self, calls: list[str], partitions: list[TopicPartition]) -> None:
        self.calls = calls
        self.partitions = partitions

    def assignment(self) -> set[TopicPartition]:
        return set(self.partitions)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.calls.append(f"commit {sorted((tp.partition, o) for tp, o in offsets.items())}")


def _stage(calls: list[str], *, fail: bool = False) -> BatchDetectStage:
    settings = Settings(topic_partitions=2)
    stage = BatchDetectStage(settings, FrustrationMetrics(runner="kafka"), "w1")
    part = stage._new_part(0)
    part.engine.push(parse_event(b'{"type":"click","user_id":"u1","ts":1795255200000}'))
    part.events_offset, part.dirty = 41, True
    stage.parts[0] = part
    stage.producer = _Producer(calls, fail)  # type: ignore[assignment]
    stage.consumer = _Consumer(calls, [TopicPartition(stage.events_topic, 0)])  # type: ignore[assignment]
    return stage


def test_outputs_go_before_the_state_and_the_commit_after_it() -> None:
    calls: list[str] = []
    stage = _stage(calls)
    write = stage._encode_states(list(stage.parts.values()))
    assert not stage.parts[0].dirty  # what changes next goes in the next write
    asyncio.run(stage._send_states(write))
    assert calls == ["flush", "state p0 (2 records)", "commit [(0, 42)]"]


def test_a_failed_background_write_is_raised_at_the_next_write_and_nothing_is_committed() -> None:
    calls: list[str] = []
    stage = _stage(calls, fail=True)

    async def two_writes() -> None:
        write = stage._encode_states(list(stage.parts.values()))
        stage._write_task = asyncio.create_task(stage._send_states(write))
        await asyncio.sleep(0.01)
        await stage._finish_write()

    with pytest.raises(RuntimeError, match="refused the state batch"):
        asyncio.run(two_writes())
    assert calls == ["flush", "state p0 (2 records)"]
