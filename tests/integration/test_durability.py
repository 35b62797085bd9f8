"""A 202 is a promise (issue 12): the real ``frustration serve`` is SIGKILLed at random points of a
simulated stream; the client re-posts every batch that got no 2xx, the service restarts on the
same files (checkpoint + ingest journal), and in the end the queue is exactly ``replay`` of
everything acknowledged: no flag lost, none duplicated, no client split into two flags.
"""

from __future__ import annotations

import random
import signal
import threading
from typing import Any

import pytest

from streams.replay import replay_all
from tests.integration.service_fixture import Response, Service, ServiceFactory
from tests.integration.test_service import (
    clock_events,
    final_state,
    lines,
    simulated_events,
    wait_for_queue,
)

pytestmark = [pytest.mark.service, pytest.mark.slow]

KILLS = 12
BATCH = 40
ENV = {
    # checkpoints often, by time and by events, so kills fall between them and the journal is
    # truncated many times along the way
    "FRUSTRATION_CHECKPOINT_INTERVAL_S": "1",
    "FRUSTRATION_CHECKPOINT_EVERY_EVENTS": "600",
}


def post(service: Service, batch: list[dict[str, Any]]) -> Response | None:
    try:
        return service.post_json("/v1/events", batch)
    except Exception:  # connection refused or reset: the process is gone, nothing acknowledged
        return None


def test_sigkill_anywhere_loses_nothing_and_duplicates_nothing(
    service_factory: ServiceFactory,
) -> None:
    rng = random.Random(20261202)
    stream = simulated_events(400, seed=41, duration_ms=2_400_000, frustrated_share=0.15)
    batches = [stream[i : i + BATCH] for i in range(0, len(stream), BATCH)]
    kill_at = set(rng.sample(range(3, len(batches) - 3), KILLS))
    service = service_factory(env=ENV)
    acknowledged: list[dict[str, Any]] = []
    kills = reposts = 0
    i = 0
    while i < len(batches):
        killer = None
        if i in kill_at:
            kill_at.discard(i)
            # somewhere while this batch is read, journaled, processed or answered
            killer = threading.Timer(rng.uniform(0.0, 0.03), service.proc.send_signal,
                                     (signal.SIGKILL,))  # fmt: skip
            killer.start()
        answer = post(service, batches[i])
        if killer is not None:
            killer.join()
            service.proc.wait(10)
            kills += 1
        if answer is not None and 200 <= answer.status < 300:
            acknowledged += batches[i]
            i += 1
        else:
            reposts += 1  # the client re-posts what got no 2xx (to the restarted service)
        if service.proc.poll() is not None:
            service = service_factory(env=ENV, db=service.db, checkpoint=service.checkpoint)
    clocks = clock_events(stream)
    service.post_events(clocks)
    acknowledged += clocks

    expected_run = replay_all(lines(acknowledged))
    expected = final_state(expected_run.flags)
    assert expected_run.summary.late == 0
    assert len(expected) >= 15, "the stream should flag a fair number of clients"
    waited = wait_for_queue(service, expected)
    flags = service.flags()
    per_user: dict[str, set[str]] = {}
    for flag in flags:
        per_user.setdefault(flag["user_id"], set()).add(flag["flag_id"])
    expected_per_user: dict[str, set[str]] = {}
    for flag_id, (user, _, _) in expected.items():
        expected_per_user.setdefault(user, set()).add(flag_id)
    assert per_user == expected_per_user, "a client split into two flags (or merged)"
    print(f"{kills} SIGKILLs, {reposts} re-posts, {len(expected)} flags equal to the replay "
          f"(queue settled {waited * 1000:.0f} ms after the last post)")  # fmt: skip
    assert kills == KILLS and reposts >= 1
