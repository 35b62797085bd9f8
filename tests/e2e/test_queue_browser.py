"""The whole path in a real browser: collector -> ``frustration serve`` -> the support queue page.

A real service (``service_fixture.run_service``) runs with an API key and a queue token and its
default event-time settings (5 s allowed lateness, idle advance after 2 s). A stdlib HTTP server
on another loopback port serves the test page, so the collector posts cross-origin (CORS
preflight: it sends ``Authorization: Bearer <key>``). The page loads the collector from the
service itself (``/collector.js``).

A: eight quick clicks on "Pay now" -> a flag on ``/queue`` within 5 s of the collector's flush
   (the collector flushes 2 s after the first click; the service releases events once input has
   been idle for 2 s, checked every second). The measured latency is printed.
B: eight quick clicks on a stepper ("Increase") -> received and processed, but no flag.

Screenshots: ``artifacts/e2e/queue.png`` (the flag on the queue) and ``artifacts/e2e/ops.png``.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.browser import PageServer, launch_chromium, screenshot
from tests.integration.service_fixture import Service, run_service

pytestmark = [pytest.mark.browser, pytest.mark.service]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"
API_KEY = "e2e-key"
TOKEN = "e2e-token"
FLAG_WITHIN_S = 5.0
CLICKS = 8

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Billing · test clinic</title>
<style>body {{ font: 16px/1.5 sans-serif; margin: 2rem; }} button {{ font: inherit; }}</style>
</head><body>
  <h1>Your next session</h1>
  <p>Sessions <button id="plus" aria-label="Increase">+</button></p>
  <button id="pay">Pay now</button>
  <script src="{service}/collector.js" data-user-id="{user}" data-api-key="{key}" async></script>
</body></html>
"""


class PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/billing":
            self.send_error(404)
            return
        user = parse_qs(url.query).get("user", ["e2e-user-1"])[0]
        body = PAGE.format(
            service=self.server.service_base, user=html.escape(user), key=API_KEY
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Stack:
    service: Service
    pages: PageServer
    browser: BrowserContext


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("e2e-service")
    service = run_service(
        workdir, env={"FRUSTRATION_API_KEY": API_KEY, "FRUSTRATION_QUEUE_TOKEN": TOKEN}
    )
    pages = PageServer(service.base, PageHandler)
    thread = threading.Thread(target=pages.serve_forever, name="e2e-pages", daemon=True)
    thread.start()
    try:
        with launch_chromium() as context:
            yield Stack(service, pages, context)
    finally:
        pages.shutdown()
        pages.server_close()
        thread.join(5)
        code = service.stop()
        assert code == 0, service.log()


def labelled(service: Service, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    for family in text_string_to_metric_families(service.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def click_and_flush(page: Page, selector: str) -> float:
    """Click `selector` CLICKS times, 90 ms apart; returns the time the collector's POST was
    answered (202), on the monotonic clock."""
    with page.expect_response(
        lambda r: r.url.endswith("/v1/events") and r.request.method == "POST", timeout=8_000
    ) as answer:
        for _ in range(CLICKS):
            page.click(selector)
            page.wait_for_timeout(90)
    response = answer.value
    flushed = time.monotonic()
    assert response.status == 202, response.text()
    assert response.json() == {"accepted": CLICKS, "rejected": []}
    assert response.headers.get("access-control-allow-origin") == page.url.split("/billing")[0]
    return flushed


def open_page(stack: Stack, user: str) -> Page:
    page = stack.browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{stack.pages.base}/billing?user={user}")
    page.wait_for_function("() => window.frustration !== undefined")
    assert errors == []
    return page


def test_rage_clicks_reach_the_queue_page(stack: Stack) -> None:
    user = "e2e-user-1"
    shop = open_page(stack, user)
    flushed = click_and_flush(shop, "#pay")

    queue = stack.browser.new_page()
    queue.goto(f"{stack.service.base}/queue?token={TOKEN}")  # sets the page's cookie
    row = queue.locator("tr", has=queue.locator("code", has_text=user))
    while row.count() == 0:
        waited = time.monotonic() - flushed
        assert waited < FLAG_WITHIN_S, f"no flag on /queue {waited:.1f} s after the flush"
        queue.wait_for_timeout(200)
        queue.goto(f"{stack.service.base}/queue")  # the cookie, not the token, opens it now
    latency = time.monotonic() - flushed
    print(f"\nflag on /queue {latency:.2f} s after the collector's flush was accepted")
    assert latency < FLAG_WITHIN_S

    text = row.inner_text()
    assert "low" in text and "Pay now" in text and "/billing" in text and "open" in text
    assert row.locator("button", has_text="Claim").count() == 1
    screenshot(queue, ARTIFACTS / "queue.png")
    (flag,) = [f for f in stack.service.flags() if f["user_id"] == user]
    assert flag["kinds"] == ["rage_click"]
    assert flag["signals"][0]["evidence"]["clicks"] >= 6

    queue.goto(f"{stack.service.base}/ops")
    assert "Pay now" in queue.locator("table").last.inner_text()  # where people rage-click
    screenshot(queue, ARTIFACTS / "ops.png")
    shop.close()
    queue.close()


def test_stepper_clicks_are_received_but_not_flagged(stack: Stack) -> None:
    user = "e2e-user-2"
    service = stack.service
    clicks_before = labelled(service, "frustration_events_received_total", type="click")
    rage_before = labelled(service, "frustration_signals_total", kind="rage_click")
    tracked_before = service.get("/readyz").json()["tracked_users"]
    shop = open_page(stack, user)
    flushed = click_and_flush(shop, "#plus")

    # Processed (the user is tracked) once event time moved past the clicks, as for test A.
    service.wait_for(
        lambda: service.get("/readyz").json()["tracked_users"] > tracked_before,
        timeout=FLAG_WITHIN_S,
        what="the stepper clicks to be processed",
    )
    time.sleep(max(0.0, 3.5 - (time.monotonic() - flushed)))  # as long as A's flag can take
    assert [f for f in service.flags() if f["user_id"] == user] == []
    assert labelled(service, "frustration_events_received_total", type="click") == (
        clicks_before + CLICKS
    )
    assert labelled(service, "frustration_signals_total", kind="rage_click") == rage_before
    assert labelled(service, "frustration_events_late_total") == 0

    ops = stack.browser.new_page()
    ops.goto(f"{service.base}/ops?token={TOKEN}")
    cards = ops.locator(".card").all_inner_texts()
    assert any("tracked users" in c for c in cards), cards
    assert "Increase" not in ops.content()
    shop.close()
    ops.close()
