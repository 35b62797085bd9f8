"""An incident on the support-queue page, in a real browser.

A real service (``service_fixture.run_service``, queue token set) receives a live login outage:
30 clients locked out with ``service_unavailable``. ``/queue`` must show one incident item above
the individual queue, with the count, the evidence and the suggested bulk message, the affected
clients one click away, and none of them as an individual row; an agent claims the incident from
the page. ``/ops`` lists the open incident.

Screenshots: ``artifacts/e2e/queue-incident.png`` and ``artifacts/e2e/ops-incident.png``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.browser import launch_chromium, screenshot
from tests.integration.service_fixture import Service, run_service
from tests.integration.test_incidents_service import LIVE_ENV, outage_failures

pytestmark = [pytest.mark.browser, pytest.mark.service]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"
TOKEN = "e2e-incident-token"
CLIENTS = [f"e2e-out-{n:02d}" for n in range(30)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("e2e-incident")
    service = run_service(workdir, env={**LIVE_ENV, "FRUSTRATION_QUEUE_TOKEN": TOKEN})
    try:
        yield service
    finally:
        assert service.stop() == 0, service.log()


def test_queue_page_shows_one_incident_item_for_many_clients(service: Service) -> None:
    service.post_events(outage_failures(CLIENTS, int(time.time() * 1000) - 8_000))
    service.wait_for(
        lambda: (
            [i["clients_grouped"] for i in service.get("/v1/incidents").json()["incidents"]]
            == [len(CLIENTS)]
        ),
        timeout=15,
        what="the incident to group every client",
    )
    with launch_chromium(viewport=(1280, 900)) as browser:
        page = browser.new_page()
        page.goto(f"{service.base}/queue?token={TOKEN}")
        rows = page.locator("tr.incident")
        assert rows.count() == 1
        row = rows.first
        assert row.locator(".count").inner_text() == str(len(CLIENTS))
        text = row.inner_text()
        # (issue 13) plain words, no reason code: was "could not log in (service_unavailable)"
        assert "could not sign in: our sign-in service was unavailable" in text
        assert "service_unavailable" not in text
        assert "problem on our side" in text  # the suggested bulk message
        assert "still happening" in text
        # the incident heads the page; none of its clients is an individual row
        html = page.content()
        assert html.index("Incidents: one message for many clients") < html.index(
            "Individual outreach"
        )
        assert page.locator("tr:not(.incident) code", has_text="e2e-out-").count() == 0
        # the affected clients, one click away, each linked to their flag's evidence
        listed = row.locator("details li")
        assert not listed.first.is_visible()
        row.locator("summary").click()
        assert listed.count() == len(CLIENTS)
        assert listed.first.is_visible()
        assert {listed.nth(i).locator("code").inner_text() for i in range(len(CLIENTS))} == set(
            CLIENTS
        )
        href = listed.first.locator("a").get_attribute("href")
        # (issue 13) each client links to their case page (the JSON stays at /v1/flags/{id})
        assert href is not None and href.startswith("/queue/flags/flg_")
        screenshot(page, ARTIFACTS / "queue-incident.png")

        # an agent claims the incident from the page
        row.locator("input[name=agent]").fill("agent-eve")
        row.locator("button", has_text="Claim").click()
        page.wait_for_load_state()
        claimed = page.locator("tr.incident").first.inner_text()
        assert "claimed by agent-eve" in claimed
        assert page.locator("tr.incident button", has_text="Resolve").count() == 1

        page.goto(f"{service.base}/ops")
        ops = page.content()
        assert "failed_logins:service_unavailable" in ops and "no open incident" not in ops
        assert "e2e-out-" not in ops
        screenshot(page, ARTIFACTS / "ops-incident.png")
        page.close()
