"""Plain Kafka plumbing (kafka-python): the broker URL, topic creation, `frustration produce` and
`frustration flags`.

Nothing here runs the detectors; the faust workers do (`streams.kafka.worker`). These helpers are
what an operator or a test needs around them:

- `bootstrap_servers` turns the `broker` setting (`kafka://HOST:PORT[,HOST:PORT...]`) into the
  bootstrap string kafka-python takes;
- `ensure_topics` creates the Kafka runner's topics when they are missing;
- `produce_events` loads NDJSON lines into the events topic, keyed by `user_id`, optionally paced;
- `consume_topic` reads a topic without a consumer group, and `print_flags` prints the flags topic.

Topics are created here, explicitly, rather than left to the broker's auto-creation: an
auto-created topic gets the broker's default partition count (1), and a faust worker does not pick
up an input topic that appears after it started.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from signals.exceptions import ConfigurationError
from streams.settings import Settings

#: Partitions of the security-alerts, dead-letter and incidents topics when they are created.
#: They carry a small fraction of the traffic and are read by a single queue sink, and one
#: partition keeps each of them in the order it was written.
SIDE_TOPIC_PARTITIONS = 1

_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")
_SCHEME = "kafka://"


def bootstrap_servers(broker: str) -> str:
    """The kafka-python bootstrap string of a `kafka://HOST:PORT[,HOST:PORT...]` broker URL.

    A bare `HOST:PORT[,...]` is accepted too. Anything else raises `ConfigurationError`.

    >>> bootstrap_servers("kafka://kafka:9092")
    'kafka:9092'
    >>> bootstrap_servers("kafka://k1:9092,k2:9092")
    'k1:9092,k2:9092'
    >>> bootstrap_servers("http://kafka:9092")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    signals.exceptions.ConfigurationError: broker 'http://kafka:9092': expected kafka://HOST:PORT...
    """
    text = broker.strip()
    if "@" in text:
        # Do not echo it: the part before '@' is probably a password.
        raise ConfigurationError("broker: credentials in the URL are not supported")
    rest = text[len(_SCHEME) :] if text.lower().startswith(_SCHEME) else text
    expected = f"broker {broker!r}: expected kafka://HOST:PORT[,HOST:PORT...]"
    if not rest or "://" in rest:
        raise ConfigurationError(expected)
    servers = []
    for entry in rest.split(","):
        match = _HOST_PORT.fullmatch(entry.strip())
        if match is None:
            raise ConfigurationError(f"{expected} ({entry.strip()!r} is not HOST:PORT)")
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise ConfigurationError(f"{expected} (port {port} is out of range)")
        servers.append(f"{match['host']}:{port}")
    return ",".join(servers)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed message (murmur2, made positive).

    The same function as the Java client's `Utils.toPositive(Utils.murmur2(key)) % partitions`;
    Kafka's own tests pin murmur2(b"21") to -973932308, i.e. 1173551340 once positive:

    >>> partition_for(b"21", 1_000_000_000_000)
    1173551340
    >>> partition_for(b"21", 8)
    4
    """
    from kafka.partitioner.default import murmur2

    if partitions < 1:
        raise ValueError(f"partitions must be ≥ 1, not {partitions}")
    positive: int = murmur2(key) & 0x7FFFFFFF
    return positive % partitions


def runner_topics(settings: Settings) -> dict[str, int]:
    """Every topic of the Kafka runner and the partition count it is created with."""
    return {
        settings.events_topic: settings.topic_partitions,
        settings.flags_topic: settings.topic_partitions,
        settings.alerts_topic: SIDE_TOPIC_PARTITIONS,
        settings.dead_letter_topic: SIDE_TOPIC_PARTITIONS,
        settings.incidents_topic: SIDE_TOPIC_PARTITIONS,
        # The workers' internal re-keyed copy of the events: one partition per events partition.
        settings.by_user_topic: settings.topic_partitions,
    }


def _connect(client_class: Any, bootstrap: str, **config: Any) -> Any:
    """A kafka-python client; an unreachable broker becomes a one-line `ConfigurationError`."""
    from kafka.errors import KafkaTimeoutError

    try:
        return client_class(bootstrap_servers=bootstrap, **config)
    except KafkaTimeoutError:  # kafka-python 3 gives up bootstrapping after 30 s
        raise ConfigurationError(
            f"no Kafka broker answers at {bootstrap} (--broker, FRUSTRATION_BROKER)"
        ) from None


def ensure_topics(settings: Settings) -> None:
    """Create the runner's topics that do not exist yet; existing ones are left as they are.

    Events, flags and the workers' by-user topic get `settings.topic_partitions` partitions (the
    unit of parallelism of the workers); alerts, dead letters and incidents get
    `SIDE_TOPIC_PARTITIONS`; replication is `settings.topic_replication`. Returns once every
    partition of every topic has a leader. Safe to run from several processes at once.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    bootstrap = bootstrap_servers(settings.broker)
    wanted = runner_topics(settings)
    admin = _connect(KafkaAdminClient, bootstrap, client_id="frustration-topics")
    try:
        existing = set(admin.list_topics())
        missing = {
            name: {"num_partitions": n, "replication_factor": settings.topic_replication}
            for name, n in wanted.items()
            if name not in existing
        }
        if missing:
            # raise_errors=False: another process may create the same topic between our listing
            # and our request; that answer is per topic, and only the other errors matter.
            result = admin.create_topics(missing, raise_errors=False)
            for topic in result["topics"]:
                code = topic["error_code"]
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise ConfigurationError(
                        f"cannot create topic {topic['name']!r}: error {code} "
                        f"{topic.get('error_message') or ''}".rstrip()
                    )
        admin.wait_for_topics(list(wanted))
    finally:
        admin.close()


#: Largest record batch of the state changelog: one partition's state write is one batch.
STATE_TOPIC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def ensure_state_topic(settings: Settings) -> None:
    """Create the batch path's compacted state changelog (`settings.user_state_topic`) when
    missing: one partition per events partition, only the newest record per key kept."""
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    admin = _connect(
        KafkaAdminClient, bootstrap_servers(settings.broker), client_id="frustration-topics"
    )
    try:
        name = settings.user_state_topic
        if name not in set(admin.list_topics()):
            spec = {
                "num_partitions": settings.topic_partitions,
                "replication_factor": settings.topic_replication,
                "configs": {
                    "cleanup.policy": "compact",
                    "max.message.bytes": str(STATE_TOPIC_MAX_MESSAGE_BYTES),
                },
            }
            result = admin.create_topics({name: spec}, raise_errors=False)
            for topic in result["topics"]:
                code = topic["error_code"]
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise ConfigurationError(f"cannot create topic {name!r}: error {code}")
        admin.wait_for_topics([name])
    finally:
        admin.close()


# -- produce --------------------------------------------------------------------------------------
class Pacer:
    """Spaces calls to `wait` at `rate` per second, drift-free (a token bucket that starts empty).

    Call i is due at start + i / rate; `wait` sleeps until the next call is due. The schedule is
    kept, not re-based on when a sleep really ended, so oversleeping does not add up over a run.
    A caller that falls behind catches up at full speed, but by at most `max_burst_s` worth of
    calls: after a long stall (an idle stdin) it does not flood the broker.

    >>> now = [0.0]
    >>> def sleep(seconds: float) -> None:
    ...     now[0] += seconds
    >>> pacer = Pacer(4.0, clock=lambda: now[0], sleep=sleep)
    >>> for _ in range(5):
    ...     pacer.wait()
    >>> now[0]  # five calls at 4/s: the first at once, the fifth a second later
    1.0
    """

    def __init__(
        self,
        rate: float,
        *,
        max_burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ConfigurationError(f"rate must be > 0 events/s, not {rate}")
        self.rate = rate
        self.max_burst_s = max_burst_s
        self._clock = clock
        self._sleep = sleep
        self._interval = 1.0 / rate
        self._due: float | None = None

    def wait(self) -> None:
        now = self._clock()
        if self._due is None or now - self._due > self.max_burst_s:
            self._due = now  # the first call, or a stall longer than the burst allowance
        elif self._due > now:
            self._sleep(self._due - now)
        self._due += self._interval


@dataclass(frozen=True)
class ProduceSummary:
    """What `produce_events` did. `sent` counts lines the broker acknowledged."""

    topic: str
    sent: int
    unkeyed: int
    failed: int
    seconds: float

    def text(self) -> str:
        """One line for stderr."""
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"sent {self.sent} events to {self.topic} in {self.seconds:.2f} s ({rate:.0f}/s), "
            f"{self.unkeyed} without a user_id key"
        )
        if self.failed:
            line += f", {self.failed} NOT delivered"
        return line


def event_key(line: bytes) -> bytes | None:
    """The message key of one NDJSON event line: its `user_id` in UTF-8, if it has one.

    >>> event_key(b'{"type": "click", "user_id": "u-1", "ts": 0}')
    b'u-1'
    >>> event_key(b'{"user_id": 42}') is None, event_key(b"not json") is None
    (True, True)
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    user_id = obj.get("user_id") if isinstance(obj, dict) else None
    return user_id.encode() if isinstance(user_id, str) else None


class _Deliveries:
    """Counts broker answers; kafka-python calls these from its single sender thread."""

    def __init__(self) -> None:
        self.failed = 0

    def on_error(self, _exc: BaseException) -> None:
        self.failed += 1


def produce_events(
    settings: Settings, lines: Iterable[bytes], rate: float | None = None
) -> ProduceSummary:
    """Send every non-blank line to the events topic, unchanged, keyed by its `user_id`.

    Lines are not validated here: the workers do that and dead-letter bad ones, with the same
    reasons as every other runner. A line without a string `user_id` is sent without a key
    (counted as `unkeyed`). `rate` (events/s) paces the sending; None sends as fast as possible.
    A line too large for Kafka is counted as `failed` and the rest still go.
    """
    from kafka import KafkaProducer
    from kafka.errors import MessageSizeTooLargeError

    bootstrap = bootstrap_servers(settings.broker)
    pacer = Pacer(rate) if rate is not None else None  # a bad rate fails before any connection
    ensure_topics(settings)
    producer = _connect(
        KafkaProducer, bootstrap, client_id="frustration-produce", acks="all", linger_ms=5
    )
    deliveries = _Deliveries()
    submitted = unkeyed = too_large = 0
    started = time.monotonic()
    try:
        for raw in lines:
            line = raw.rstrip(b"\r\n")  # the line terminator is framing, not part of the event
            if not line.strip():
                continue
            key = event_key(line)
            if key is None:
                unkeyed += 1
            if pacer is not None:
                pacer.wait()
            try:
                future = producer.send(settings.events_topic, value=line, key=key)
            except MessageSizeTooLargeError:
                too_large += 1
                continue
            future.add_errback(deliveries.on_error)
            submitted += 1
        producer.flush()
    finally:
        producer.close()
    return ProduceSummary(
        topic=settings.events_topic,
        sent=submitted - deliveries.failed,
        unkeyed=unkeyed,
        failed=too_large + deliveries.failed,
        seconds=time.monotonic() - started,
    )


# -- consume --------------------------------------------------------------------------------------
class Message(NamedTuple):
    """One consumed message: key, value and headers as Kafka holds them."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def consume_topic(
    bootstrap: str,
    topic: str,
    from_beginning: bool = True,
    idle_exit_s: float | None = 2.0,
    stop: Callable[[], bool] | None = None,
) -> Generator[Message, None, None]:
    """Messages of every partition of `topic`, in order within each partition.

    No consumer group: nothing is committed, and any number of readers see every message.
    Starts at the beginning of each partition (or at its end when `from_beginning` is False);
    stops once `idle_exit_s` seconds pass without a message, or never when it is None, and
    between polls once `stop()` is true.
    Partitions added after the start are not read. Raises `ConfigurationError` when the topic
    does not exist (it is never auto-created from here).
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = _connect(
        KafkaConsumer,
        bootstrap,
        client_id="frustration-read",
        group_id=None,
        enable_auto_commit=False,
        allow_auto_create_topics=False,
    )
    try:
        partitions = sorted(consumer.partitions_for_topic(topic))
        if not partitions:
            raise ConfigurationError(f"topic {topic!r} does not exist on {bootstrap}")
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        if from_beginning:
            consumer.seek_to_beginning(*assigned)
        else:
            consumer.seek_to_end(*assigned)
        last = time.monotonic()
        while idle_exit_s is None or time.monotonic() - last < idle_exit_s:
            if stop is not None and stop():
                break
            batches: dict[Any, list[Any]] = consumer.poll(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    yield Message(record.key, record.value, list(record.headers or []))
            if batches:
                last = time.monotonic()
    finally:
        consumer.close()


def print_flags(
    settings: Settings, follow: bool = False, from_beginning: bool = True, idle_exit_s: float = 2.0
) -> int:
    """Print each message of the flags topic as one NDJSON line on stdout (`frustration flags`).

    Without `follow`, stops after `idle_exit_s` seconds without a new flag; with it, runs until
    interrupted (Ctrl-C ends it normally). The topics are created first if missing, as a worker
    would, so `flags --follow` can be started before the workers.
    """
    out = sys.stdout.buffer
    # Ctrl-C (or SIGTERM) sets a flag the read loop checks between polls: a KeyboardInterrupt
    # raised inside kafka-python's I/O could leave its client unable to close (seen: a hang).
    stopping: list[int] = []
    handlers = {
        sig: signal.signal(sig, lambda signum, _frame: stopping.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        ensure_topics(settings)
        messages = consume_topic(
            bootstrap_servers(settings.broker),
            settings.flags_topic,
            from_beginning=from_beginning,
            idle_exit_s=None if follow else idle_exit_s,
            stop=lambda: bool(stopping),
        )
        for message in messages:
            if message.value is None:  # a tombstone carries no flag
                continue
            out.write(message.value.rstrip(b"\r\n") + b"\n")
            out.flush()  # one line at a time, so `| jq` or `| head` sees flags as they come
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0
