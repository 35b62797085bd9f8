"""The broker URL, the partitioner and the pacing of `frustration produce`, without a broker."""

from __future__ import annotations

import doctest

import pytest

import streams.kafka.io
from signals.exceptions import ConfigurationError
from streams.kafka.io import Pacer, bootstrap_servers, event_key, partition_for


def test_doctests() -> None:
    # pytest collects doctests in detectors/ and signals/ only; these run here.
    failed, attempted = doctest.testmod(streams.kafka.io)
    assert attempted >= 8 and failed == 0


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        ("kafka://kafka:9092", "kafka:9092"),
        ("KAFKA://kafka:9092", "kafka:9092"),
        ("kafka://127.0.0.1:9092", "127.0.0.1:9092"),
        ("kafka://k1:9092,k2:9093, k3.example.org:19092", "k1:9092,k2:9093,k3.example.org:19092"),
        ("kafka://[::1]:9092", "[::1]:9092"),
        ("localhost:9092", "localhost:9092"),
        ("  kafka://kafka:9092\n", "kafka:9092"),
    ],
)
def test_bootstrap_servers_accepts(broker: str, expected: str) -> None:
    assert bootstrap_servers(broker) == expected


@pytest.mark.parametrize(
    ("broker", "message"),
    [
        ("", "expected kafka://HOST:PORT"),
        ("kafka://", "expected kafka://HOST:PORT"),
        ("http://kafka:9092", "expected kafka://HOST:PORT"),
        ("kafka://kafka", "'kafka' is not HOST:PORT"),
        ("kafka://kafka:", "'kafka:' is not HOST:PORT"),
        ("kafka://kafka:port", "'kafka:port' is not HOST:PORT"),
        ("kafka://kafka:9092/", "'kafka:9092/' is not HOST:PORT"),
        ("kafka://k1:9092,", "'' is not HOST:PORT"),
        ("kafka://k1:9092;k2:9092", "is not HOST:PORT"),
        ("kafka://kafka:0", "port 0 is out of range"),
        ("kafka://kafka:65536", "port 65536 is out of range"),
        ("kafka://kafka:9092,kafka://k2:9092", "expected kafka://HOST:PORT"),
    ],
)
def test_bootstrap_servers_refuses_with_a_clear_message(broker: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        bootstrap_servers(broker)
    assert str(caught.value).startswith(f"broker {broker!r}: ")
    assert message in str(caught.value)


def test_bootstrap_servers_never_echoes_credentials() -> None:
    with pytest.raises(ConfigurationError) as caught:
        bootstrap_servers("kafka://app:s3cret@kafka:9092")
    assert "s3cret" not in str(caught.value)


# Kafka's own vectors for Utils.murmur2 (clients/src/test/.../utils/UtilsTest.java), signed.
MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "signed"), sorted(MURMUR2.items()))
def test_partition_for_is_the_java_default_partitioner(key: bytes, signed: int) -> None:
    positive = signed & 0x7FFFFFFF  # Utils.toPositive
    assert partition_for(key, 2**31) == positive  # the modulo changes nothing at this size
    for partitions in (1, 4, 8, 12):
        assert partition_for(key, partitions) == positive % partitions


def test_partition_for_refuses_no_partitions() -> None:
    with pytest.raises(ValueError, match="partitions"):
        partition_for(b"u-1", 0)


def test_event_key_is_the_user_id_of_a_json_object_only() -> None:
    assert event_key(b'{"user_id": "u-1", "type": "click"}') == b"u-1"
    assert event_key('{"user_id": "zoë"}'.encode()) == "zoë".encode()
    assert event_key(b'{"user_id": ""}') == b""
    for line in (b'{"user_id": 7}', b'{"type": "click"}', b"[1]", b'"u-1"', b"{", b"\xff"):
        assert event_key(line) is None, line


class FakeTime:
    """A clock that moves only when slept on (by `overshoot` more than asked, like a real one)."""

    def __init__(self, overshoot: float = 0.0) -> None:
        self.now = 100.0
        self.overshoot = overshoot

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds + self.overshoot


def test_pacer_keeps_the_rate_over_a_run_although_every_sleep_overshoots() -> None:
    t = FakeTime(overshoot=0.001)  # 1 ms per sleep: 40 % of the 2.5 ms interval
    pacer = Pacer(400.0, clock=t.clock, sleep=t.sleep)
    for _ in range(1000):
        pacer.wait()
    elapsed = t.now - 100.0
    # The last of 1000 calls is due at 999/400 s; drift would add 999 ms of overshoot.
    assert 999 / 400 <= elapsed <= 999 / 400 + 0.002


def test_pacer_catches_up_after_a_short_stall_but_not_after_a_long_one() -> None:
    t = FakeTime()
    pacer = Pacer(10.0, clock=t.clock, sleep=t.sleep)
    pacer.wait()
    t.now += 0.5  # a short stall: the 5 missed slots go at once
    for _ in range(5):
        before = t.now
        pacer.wait()
        assert t.now == before
    pacer.wait()  # then the schedule again
    assert t.now > 100.5

    t.now += 10.0  # a long stall (an idle stdin): no burst of 100 catch-up sends
    pacer.wait()
    before = t.now
    pacer.wait()
    assert t.now - before == pytest.approx(0.1)


def test_pacer_refuses_a_rate_that_is_not_positive() -> None:
    for rate in (0.0, -5.0):
        with pytest.raises(ConfigurationError, match="rate"):
            Pacer(rate)
