"""Bounded cost per request (issue 12), on the real ``frustration serve``: four 1 MiB bodies of
``[1,1,...]`` (524,287 invalid items each) posted at once. Each answer is smaller than its
request, counts every item by reason and lists only the first few; ``/healthz`` keeps answering
within 100 ms meanwhile (the issue's contract; the figure is printed); the process's peak memory
grows by a small multiple of the bodies, not by gigabytes.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.integration.service_fixture import Response, ServiceFactory, http

pytestmark = [pytest.mark.service, pytest.mark.slow]

ITEMS = 524_287  # "[1,1,...,1]" of 1,048,575 bytes: just under max_body_bytes (1 MiB)
BODIES = 4


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_four_1mib_invalid_bodies_cost_little_and_never_stall_the_loop(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory()
    body = b"[" + b",".join([b"1"] * ITEMS) + b"]"
    assert len(body) <= 1_048_576
    http("GET", service.url("/healthz"))
    rss_before = peak_rss_bytes(service.proc.pid)
    answers: list[Response] = []

    def post() -> None:
        answers.append(
            service.request("POST", "/v1/events", body, {"Content-Type": "application/json"})
        )

    posters = [threading.Thread(target=post) for _ in range(BODIES)]
    for thread in posters:
        thread.start()
    timings: list[float] = []
    while any(thread.is_alive() for thread in posters):
        started = time.perf_counter()
        health = http("GET", service.url("/healthz"), timeout=5)
        timings.append(time.perf_counter() - started)
        assert health.status == 200
        time.sleep(0.01)
    for thread in posters:
        thread.join()
    rss_growth = peak_rss_bytes(service.proc.pid) - rss_before
    worst = max(timings)
    print(f"/healthz during {BODIES} x {len(body):,}-byte invalid bodies: {len(timings)} probes, "
          f"worst {worst * 1000:.1f} ms; answers {[len(a.body) for a in answers]} bytes; "
          f"peak RSS +{rss_growth / 2**20:.1f} MiB")  # fmt: skip

    assert len(answers) == BODIES
    for answer in answers:
        assert answer.status == 400
        assert len(answer.body) <= len(body) and len(answer.body) < 8_192
        result = json.loads(answer.body)
        assert result["accepted"] == 0
        assert result["rejected_total"] == ITEMS
        assert result["rejected_by_reason"] == {"not_object": ITEMS}
        assert 0 < len(result["rejected"]) <= 20
    assert len(timings) >= 3, "the posts took long enough to probe"
    assert worst < 0.1, f"/healthz took {worst * 1000:.0f} ms"
    assert rss_growth < 16 * len(body) * BODIES, "memory per request: a small multiple"
    assert service.metrics()["frustration_events_invalid_total"] == ITEMS * BODIES
