"""Real `frustration worker` processes against the test broker, and helpers to read topics.

``kafka_runner`` (function scope) gives a :class:`KafkaRunnerEnv`: unique topic names and app id
for the test, so tests sharing the session broker never see each other's messages. It starts
workers as subprocesses (``start_worker``), each with its own web port and data directory, waits
until faust logs "Ready", and kills whatever is still running at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from tests.integration.service_fixture import FRUSTRATION, free_port

READY_TIMEOUT_S = 60.0
PARTITIONS = 4


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    web_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if "Ready" in text[after:]:
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{text[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"worker {self.name} not ready in {timeout} s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class KafkaRunnerEnv:
    bootstrap: str
    tmp_path: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    workers: list[Worker] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def topics(self) -> dict[str, str]:
        return {
            "events": f"events-{self.suffix}",
            "flags": f"flags-{self.suffix}",
            "alerts": f"alerts-{self.suffix}",
            "dead_letter": f"dead-{self.suffix}",
            "incidents": f"incidents-{self.suffix}",
        }

    @property
    def env(self) -> dict[str, str]:
        t = self.topics
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRUSTRATION_")}
        env.update(
            {
                "FRUSTRATION_BROKER": f"kafka://{self.bootstrap}",
                "FRUSTRATION_EVENTS_TOPIC": t["events"],
                "FRUSTRATION_FLAGS_TOPIC": t["flags"],
                "FRUSTRATION_ALERTS_TOPIC": t["alerts"],
                "FRUSTRATION_DEAD_LETTER_TOPIC": t["dead_letter"],
                "FRUSTRATION_INCIDENTS_TOPIC": t["incidents"],
                "FRUSTRATION_TOPIC_PARTITIONS": str(PARTITIONS),
                "FRUSTRATION_WORKER_APP_ID": f"app-{self.suffix}",
                "FRUSTRATION_IDLE_ADVANCE_S": "2",
            }
        )
        env.update(self.extra_env)
        return env

    def start_worker(self, name: str, web_port: int | None = None, wait: bool = True) -> Worker:
        """Start (or restart, same name: same data dir and port) one worker."""
        previous = next((w for w in self.workers if w.name == name), None)
        port = web_port or (previous.web_port if previous else free_port())
        log_path = self.tmp_path / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        log = open(log_path, "ab")  # noqa: SIM115 (closed at teardown)
        self._logs.append(log)
        process = subprocess.Popen(
            [
                str(FRUSTRATION),
                "worker",
                "--web-port",
                str(port),
                "--data-dir",
                str(self.tmp_path / name),
                "--name",
                name,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        worker = Worker(name, process, log_path, port)
        if previous:
            self.workers.remove(previous)
        self.workers.append(worker)
        if wait:
            worker.wait_ready(after=offset)
        return worker

    def produce(self, lines: list[bytes], rate: float | None = None) -> str:
        """Run `frustration produce` on these lines; returns its summary line."""
        path = self.tmp_path / f"produce-{uuid.uuid4().hex[:6]}.ndjson"
        path.write_bytes(b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
        args = [str(FRUSTRATION), "produce", str(path)]
        if rate is not None:
            args += ["--rate", str(rate)]
        done = subprocess.run(args, env=self.env, capture_output=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr.decode()
        return done.stderr.decode()

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for log in self._logs:
            log.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 2.0) -> list[tuple[Any, bytes]]:
    """Every (key, value) on the topic now, from the beginning (all partitions)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[tuple[Any, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out += [(r.key, r.value) for r in records]
        return out
    finally:
        consumer.close()


def flag_messages(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(value) for _, value in read_topic(bootstrap, topic)]


def wait_for(predicate: Any, timeout_s: float, what: str, every_s: float = 1.0) -> float:
    """Poll until predicate() is true; returns seconds waited."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


@pytest.fixture
def kafka_runner(kafka_broker: str, tmp_path: Path) -> Iterator[KafkaRunnerEnv]:
    env = KafkaRunnerEnv(kafka_broker, tmp_path)
    try:
        yield env
    finally:
        env.close()
