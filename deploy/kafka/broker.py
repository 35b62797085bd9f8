"""A real single-node Apache Kafka 3.9.1 broker (KRaft combined mode) for tests and local dev.

The broker runs from the jars that ``fetch-jars.sh`` copies out of Maven Central into
``deploy/kafka/lib/``; nothing else is downloaded. Every broker gets free ports on 127.0.0.1 and a
fresh temporary directory (``server.properties``, ``log4j.properties``, the data dir and the logs),
which is removed again on :meth:`KafkaBroker.stop`.

Use as a context manager::

    with KafkaBroker() as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)

or from the command line (runs in the foreground until SIGINT/SIGTERM)::

    python deploy/kafka/broker.py [--port N]

which prints ``KAFKA_BOOTSTRAP=127.0.0.1:PORT`` once the broker answers metadata requests.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType

HERE = Path(__file__).resolve().parent
LIB_DIR = HERE / "lib"
FETCH_JARS = HERE / "fetch-jars.sh"
KAFKA_VERSION = "3.9.1"
BROKER_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
HOST = "127.0.0.1"
_READINESS_GROUP = "kafka-broker-readiness"

log = logging.getLogger("kafka_broker")


class BrokerError(RuntimeError):
    """The broker could not be formatted, started or reached."""


def jars_present(lib_dir: Path = LIB_DIR) -> bool:
    """Whether ``lib_dir`` holds the broker jar."""
    return (lib_dir / BROKER_JAR).is_file()


def ensure_jars(lib_dir: Path = LIB_DIR) -> None:
    """Run ``fetch-jars.sh`` (Maven Central, via ``mvn``) unless the broker jar is there already."""
    if jars_present(lib_dir):
        return
    if lib_dir != LIB_DIR:
        raise BrokerError(f"{lib_dir} holds no {BROKER_JAR}; fetch-jars.sh only fills {LIB_DIR}")
    result = subprocess.run(
        ["bash", str(FETCH_JARS)], capture_output=True, text=True, check=False, timeout=900
    )
    if result.returncode != 0 or not jars_present(lib_dir):
        raise BrokerError(
            f"{FETCH_JARS} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    sys.stderr.write(result.stdout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def new_cluster_id() -> str:
    """A random cluster id in Kafka's format (URL-safe base64 of 16 bytes, no padding).

    Ids starting with ``-`` are skipped, as Kafka's own ``Uuid.randomUuid()`` does: StorageTool's
    argument parser would take them for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def tail(path: Path, max_lines: int = 60) -> str:
    """The last ``max_lines`` lines of a text file ('' when it does not exist)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-max_lines:])


def error_lines(path: Path, max_errors: int = 10, context: int = 3) -> str:
    """The first ``max_errors`` ERROR/FATAL lines of a log4j log, each with the ``context``
    lines that follow it (the exception and the top of its stack trace)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    found: list[str] = []
    for index, line in enumerate(lines):
        if " ERROR " in line or " FATAL " in line:
            found.extend(lines[index : index + 1 + context])
            if len(found) >= max_errors * (1 + context):
                break
    return "\n".join(found)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _properties(values: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


class KafkaBroker:
    """One Kafka broker + controller process (KRaft combined mode) on 127.0.0.1.

    ``port``: the client (PLAINTEXT) port, a free one when ``None``; the controller port is
    always a free one. ``overrides`` are extra/replacement ``server.properties`` entries.
    Topics are not auto-created unless ``auto_create_topics`` is true: a missing declaration
    should fail loudly rather than silently produce a one-partition topic.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        lib_dir: Path = LIB_DIR,
        java: str = "java",
        heap: str = "512m",
        auto_create_topics: bool = False,
        overrides: Mapping[str, str] | None = None,
        start_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        base_dir: Path | None = None,
    ) -> None:
        self._requested_port = port
        self.lib_dir = lib_dir
        self.java = java
        self.heap = heap
        self.auto_create_topics = auto_create_topics
        self.overrides = dict(overrides or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.base_dir = base_dir
        self.port = 0
        self.controller_port = 0
        self.cluster_id = ""
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- public API ---------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the running broker."""
        if not self.port:
            raise BrokerError("the broker has not been started")
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker JVM's pid (also its process group id) while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def server_log(self) -> Path:
        """The broker's log4j log file."""
        return self._dir / "logs" / "server.log"

    @property
    def stdout_log(self) -> Path:
        """The JVM's stdout and stderr."""
        return self._dir / "logs" / "kafka.out"

    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> KafkaBroker:
        """Format a fresh log dir, start the broker and wait until it answers metadata requests."""
        with self._lock:
            if self._process is not None:
                raise BrokerError(f"broker already started on {self.bootstrap}")
            if not jars_present(self.lib_dir):
                raise BrokerError(
                    f"no {BROKER_JAR} in {self.lib_dir}: run deploy/kafka/fetch-jars.sh"
                )
            if shutil.which(self.java) is None:
                raise BrokerError(f"{self.java!r} not found: install a Java 17 runtime")
            self.workdir = Path(
                tempfile.mkdtemp(prefix="kafka-broker-", dir=self.base_dir)
            ).resolve()
            try:
                self._start_locked()
            except BaseException:
                self._stop_locked()
                raise
            return self

    def stop(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL after ``stop_timeout``) and remove its directory."""
        with self._lock:
            self._stop_locked()

    def log_tail(self, max_lines: int = 60) -> str:
        """For error messages: the broker log's ERROR/FATAL lines, then the end of its log file
        and of its stdout/stderr (a failed start ends in many lines of orderly shutdown)."""
        parts = []
        errors = error_lines(self.server_log)
        if errors:
            parts.append(f"--- {self.server_log.name}: ERROR/FATAL lines ---\n{errors}")
        for path in (self.server_log, self.stdout_log):
            text = tail(path, max_lines)
            if text:
                parts.append(f"--- {path.name} (last {max_lines} lines) ---\n{text}")
        return "\n".join(parts) or "(the broker wrote no log)"

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise BrokerError("the broker has not been started")
        return self.workdir

    def _start_locked(self) -> None:
        started = time.monotonic()
        self.port = self._requested_port or free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.cluster_id = new_cluster_id()
        (self._dir / "logs").mkdir()
        (self._dir / "server.properties").write_text(self._server_properties(), encoding="utf-8")
        (self._dir / "log4j.properties").write_text(self._log4j_properties(), encoding="utf-8")
        self._format()
        with self.stdout_log.open("wb") as out:
            self._process = subprocess.Popen(
                [*self._java_command("-Xmx" + self.heap), "kafka.Kafka", "server.properties"],
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() signals the whole group
            )
        self._wait_ready(started + self.start_timeout)
        log.info(
            "kafka broker ready on %s after %.1fs (dir %s, pid %s)",
            self.bootstrap,
            time.monotonic() - started,
            self.workdir,
            self.pid,
        )

    def _java_command(self, *jvm_options: str) -> list[str]:
        return [
            self.java,
            *jvm_options,
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self._dir / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self._dir / 'logs'}",
            "-cp",
            f"{self.lib_dir.resolve()}/*",
        ]

    def _format(self) -> None:
        # C1-only JIT: StorageTool is short-lived, this saves about a third of its start-up.
        command = [
            *self._java_command("-Xmx256m", "-XX:TieredStopAtLevel=1"),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            "server.properties",
        ]
        result = subprocess.run(
            command,
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            raise BrokerError(
                f"kafka.tools.StorageTool format failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{self.log_tail()}"
            )

    def _server_properties(self) -> str:
        values = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self._dir / "data"),
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            # 50 by default; fewer makes the first consumer-group join (which creates the
            # topic) quicker.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            # The log cleaner (compacted topics, e.g. faust changelogs) allocates its dedupe
            # buffer on the heap up front: 128 MiB by default, a quarter of -Xmx512m.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.cleaner.threads": "1",
            # Shorter than the 1 GiB default: throw-away brokers need no large segments.
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        values.update(self.overrides)
        return _properties(values)

    def _log4j_properties(self) -> str:
        log_file = self._dir / "logs" / "server.log"
        return _properties(
            {
                "log4j.rootLogger": "INFO, file",
                "log4j.appender.file": "org.apache.log4j.FileAppender",
                "log4j.appender.file.File": str(log_file),
                "log4j.appender.file.Append": "true",
                "log4j.appender.file.layout": "org.apache.log4j.PatternLayout",
                "log4j.appender.file.layout.ConversionPattern": "[%d] %p %m (%c)%n",
                "log4j.logger.kafka.request.logger": "WARN",
                "log4j.logger.kafka.network.RequestChannel$": "WARN",
                "log4j.logger.state.change.logger": "WARN",
                "log4j.logger.org.apache.kafka.controller": "INFO",
            }
        )

    def _wait_ready(self, deadline: float) -> None:
        last_error = "the client port never opened"
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise BrokerError(
                    f"the kafka broker exited with code {code} while starting "
                    f"(dir {self.workdir}):\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"the kafka broker on {self.bootstrap} did not answer metadata requests "
                    f"within {self.start_timeout:.0f}s ({last_error}):\n{self.log_tail()}"
                )
            if _port_open(self.port):
                error = self._readiness_error()
                if error is None:
                    return
                last_error = error
            time.sleep(0.2)

    def _readiness_error(self) -> str | None:
        """``None`` once the broker answers a metadata request listing itself and its group
        coordinator is up, else why not.

        The group coordinator check creates ``__consumer_offsets`` (which Kafka does on the first
        FindCoordinator request), so the first consumer group to join does not meet
        ``GroupCoordinatorNotAvailableError``; it costs about 0.3 s.
        """
        from kafka import KafkaAdminClient

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id="kafka-broker-readiness",
                bootstrap_timeout_ms=3000,
                request_timeout_ms=3000,
            )
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        try:
            if not admin.describe_cluster().get("brokers"):
                return "metadata lists no brokers yet"
            group = admin.describe_groups([_READINESS_GROUP])[_READINESS_GROUP]
            if group.get("error") is not None:
                return f"group coordinator not ready: {group['error']}"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            admin.close()
        return None

    def _stop_locked(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "kafka broker pid %s ignored SIGTERM for %.0fs, killing it",
                    process.pid,
                    self.stop_timeout,
                )
                self._signal_group(process, signal.SIGKILL)
                process.wait(10)
        workdir, self.workdir = self.workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        self.port = 0
        self.controller_port = 0

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)


def main(argv: list[str] | None = None) -> int:
    """Run a broker in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    parser.add_argument(
        "--auto-create-topics",
        action="store_true",
        help="let producers and consumers create topics implicitly (off by default)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kafka-python logs every refused connection while the broker starts: keep that quiet.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        ensure_jars()
    except BrokerError as exc:
        log.error("%s", exc)
        return 1
    broker = KafkaBroker(args.port, auto_create_topics=args.auto_create_topics)
    try:
        broker.start()
    except BrokerError as exc:
        log.error("%s", exc)
        return 1
    try:
        print(f"KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
        log.info("broker log: %s; stop with Ctrl-C", broker.server_log)
        while not stop_requested.wait(1.0):
            if not broker.running():
                log.error("the kafka broker exited on its own:\n%s", broker.log_tail())
                return 1
        log.info("stopping the kafka broker")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
