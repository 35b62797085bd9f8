"""Incident milestones, workload and outcomes against a real ``frustration serve`` (issue 13):
an open incident's next proactive update is due `incident_update_interval_s` after it arrived
or after the last update recorded; overdue ones are counted in
``frustration_incident_updates_overdue`` and on /ops; /ops shows who holds which cases; agents'
"not frustration" outcomes are the ``frustration_false_flag_share`` metric."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.service_fixture import Service, ServiceFactory
from tests.integration.test_incidents_service import LIVE_ENV, outage_failures
from tests.integration.test_service import burst, now_ms, wait_flag

pytestmark = pytest.mark.service

INTERVAL_S = 4.0


def sample(service: Service, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(service.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_incident_updates_workload_and_false_flag_share(service_factory: ServiceFactory) -> None:
    service = service_factory(
        env={**LIVE_ENV, "FRUSTRATION_INCIDENT_UPDATE_INTERVAL_S": str(INTERVAL_S)}
    )
    users = [f"upd-{n:02d}" for n in range(30)]
    service.post_events(outage_failures(users, now_ms() - 8_000))
    service.wait_for(
        lambda: len(service.get("/v1/incidents").json()["incidents"]) == 1,
        timeout=15,
        what="the incident",
    )
    (item,) = service.get("/v1/incidents").json()["incidents"]
    iid = item["incident_id"]
    kind = {"kind": "failed_logins"}
    assert sample(service, "frustration_incident_updates_overdue", **kind) == 0
    assert "Next update to clients due" in service.get(f"/queue/incidents/{iid}").text

    service.wait_for(
        lambda: sample(service, "frustration_incident_updates_overdue", **kind) == 1,
        timeout=INTERVAL_S + 5,
        what="the update to be overdue",
    )
    page = service.get(f"/queue/incidents/{iid}").text
    assert "The update to clients is overdue since" in page
    ops = service.get("/ops").text
    assert re.search(r'<div class="card alarm"><b>1</b>incident updates overdue', ops), ops

    sent = service.post_json(f"/v1/incidents/{iid}/updates", {"note": "status page updated"})
    assert sent.status == 200, sent.text
    assert sample(service, "frustration_incident_updates_overdue", **kind) == 0
    history = service.get(f"/v1/incidents/{iid}").json()["history"]
    assert [h["what"] for h in history][-1] == "update_sent"
    assert "status page updated" in service.get(f"/queue/incidents/{iid}").text

    # workload: who holds what, by severity; the incident counts on its own
    assert service.post_json(f"/v1/incidents/{iid}/claim", {"agent": "lead-lee"}).status == 200
    flag = None
    for n in range(2):
        service.post_events(burst(f"held-{n}", now_ms()))
        flag = wait_flag(service, f"held-{n}")
        claim = service.post_json(f"/v1/flags/{flag['flag_id']}/claim", {"agent": "agent-kim"})
        assert claim.status == 200
    ops = service.get("/ops").text
    kim = re.search(r"<tr><td><b>agent-kim</b></td>(.*?)</tr>", ops)
    assert kim, ops
    cells = re.findall(r"data-label=(\w+)>(\d+)<", kim.group(1))
    expected = {"critical": "0", "high": "0", "medium": "0", "low": "2", "incidents": "0"}
    assert dict(cells) == expected
    assert "<b>lead-lee</b>" in ops

    # outcomes: one of the two rage-click cases was not frustration
    assert flag is not None
    done = service.post_json(
        f"/v1/flags/{flag['flag_id']}/resolve", {"outcome": "false_positive", "note": "a game"}
    )
    assert done.status == 200
    first = wait_flag(service, "held-0")
    fine = service.post_json(
        f"/v1/flags/{first['flag_id']}/resolve", {"outcome": "client_was_fine"}
    )
    assert fine.status == 200
    share = {"kind": "rage_click", "window": "7d"}
    assert sample(service, "frustration_false_flag_share", **share) == 0.5
    assert "50 % <span class=muted>(1 of 2)</span>" in service.get("/ops").text
