"""Time per client in the real ``frustration serve`` (issue 12), with the default settings.

A: the future-dated-event attack. One client posts a click dated now+590 s (inside the 600 s
   clock skew the service accepts); another client's live 8-click rage burst right after is still
   flagged, none of its events is late. After a restart on the same files (the checkpoint carries
   the attacker's clock) a third client's burst is flagged too.
B: event ids are unique per client: another client's events with ids evt-1..8 do not make a real
   burst with the same ids count as duplicates.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.integration.service_fixture import Service, ServiceFactory

pytestmark = [pytest.mark.service]


def now_ms() -> int:
    return int(time.time() * 1000)


def burst(user: str, start_ms: int, ids: bool = True) -> list[dict[str, Any]]:
    """Eight clicks on "Pay now", 150 ms apart: a rage burst."""
    return [
        {"type": "click", "user_id": user, "ts": start_ms + 150 * i, "target": "#pay",
         "label": "Pay now", "page": "/billing", **({"event_id": f"evt-{i + 1}"} if ids else {})}
        for i in range(8)
    ]  # fmt: skip


def flagged(service: Service, user: str) -> bool:
    return any(f["user_id"] == user for f in service.flags())


def late_events(service: Service) -> float:
    return service.metrics().get("frustration_events_late_total", 0.0)


def test_a_client_dated_ten_minutes_ahead_blinds_no_one_even_across_a_restart(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory()
    attack = {"type": "click", "user_id": "attacker", "ts": now_ms() + 590_000, "target": "#x"}
    answer = service.post_json("/v1/events", [attack])
    assert answer.status == 202 and answer.json()["accepted"] == 1
    answer = service.post_json("/v1/events", burst("victim-1", now_ms() - 1_500))
    assert answer.status == 202 and answer.json()["accepted"] == 8
    took = service.wait_for(lambda: flagged(service, "victim-1"), 10.0, what="victim-1's flag")
    print(f"victim-1 flagged {took * 1000:.0f} ms after its burst was posted")
    assert late_events(service) == 0

    assert service.stop(signal.SIGTERM) == 0
    again = service_factory(db=service.db, checkpoint=service.checkpoint)
    again.post_events([dict(attack, ts=now_ms() + 590_000, event_id="a2")])
    again.post_events(burst("victim-2", now_ms() - 1_500))
    again.wait_for(lambda: flagged(again, "victim-2"), 10.0, what="victim-2's flag after restart")
    assert late_events(again) == 0
    assert not flagged(again, "attacker")


def test_event_ids_are_unique_per_client_not_across_clients(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory()
    other = [
        {"type": "click", "user_id": "someone-else", "ts": now_ms() - 3_000 + 400 * i,
         "target": f"#b{i}", "event_id": f"evt-{i + 1}"}
        for i in range(8)
    ]  # fmt: skip
    service.post_events(other)
    mine = burst("victim", now_ms() - 1_500)
    answer = service.post_events(mine)
    assert answer.json()["accepted"] == 8
    service.wait_for(lambda: flagged(service, "victim"), 10.0, what="the victim's flag")
    assert service.metrics().get("frustration_events_duplicate_total", 0.0) == 0
    # the same client retrying one of its own events is still deduplicated
    service.post_events(mine[-1:])
    assert service.metrics().get("frustration_events_duplicate_total", 0.0) == 1
