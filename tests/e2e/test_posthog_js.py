"""posthog-js (from npm, at the version of tests/e2e/posthog_js/package-lock.json, served from
127.0.0.1) in headless Chromium with autocapture on and ``api_host`` = a real ``frustration serve``
(its ``/posthog`` routes): the SDK's own gzip batches arrive as our click events.

A: hammering a dead "Pay now" button -> a rage-click flag in the queue, its evidence built from
   the ``$elements`` chain (target ``#pay``, label "Pay now", page without query).
B: hammering a stepper ("+", aria-label "Increase") -> received, but no flag, although posthog-js
   itself calls it a ``$rageclick``: PostHog's verdict is counted as corroborating only.

``make js-deps`` (part of ``make test``) installs posthog-js with ``npm ci``.
"""

from __future__ import annotations

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
JS_DIR = ROOT / "tests" / "e2e" / "posthog_js"
POSTHOG_JS = JS_DIR / "node_modules" / "posthog-js" / "dist" / "array.full.no-external.js"
ARTIFACTS = ROOT / "artifacts" / "e2e"
KEY = "phc_e2e_project_token"
CLICKS = 8
FLAG_WITHIN_S = 15.0  # posthog-js flushes its queue every 3 s; the service then waits 2 s idle

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Billing · posthog-js test clinic</title>
<style>body {{ font: 16px/1.5 sans-serif; margin: 2rem; }} button {{ font: inherit; }}</style>
<script src="/posthog.js"></script>
<script>
  posthog.init({key}, {{
    api_host: {api_host},
    autocapture: true,
    rageclick: true,
    capture_pageview: false,
    capture_pageleave: false,
    disable_session_recording: true,
    disable_surveys: true,
    persistence: "memory",
    bootstrap: {{ distinctID: {user} }},
    // Headless Chromium's user agent looks like a bot to posthog-js, which then drops events.
    opt_out_useragent_filter: true,
    loaded: (ph) => {{ ph.identify({user}); window.phReady = true; }},
  }});
</script>
</head><body>
  <h1>Your next session</h1>
  <p>Sessions <button id="plus" aria-label="Increase">+</button></p>
  <button id="pay">Pay now</button>
</body></html>
"""


def js(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, ctype: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/posthog.js":
            self._send("text/javascript; charset=utf-8", POSTHOG_JS.read_bytes())
        elif url.path == "/billing":
            user = parse_qs(url.query).get("user", ["ph-e2e-1"])[0]
            page = PAGE.format(
                key=js(KEY), api_host=js(self.server.service_base + "/posthog"), user=js(user)
            )
            self._send("text/html; charset=utf-8", page.encode())
        else:
            self.send_error(404)


@dataclass
class Stack:
    service: Service
    pages: PageServer
    browser: BrowserContext


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not POSTHOG_JS.is_file():
        pytest.fail(f"{POSTHOG_JS} missing: run `make js-deps` (npm ci in {JS_DIR})")
    service = run_service(
        tmp_path_factory.mktemp("posthog-js"),
        env={"FRUSTRATION_API_KEY": KEY, "FRUSTRATION_QUEUE_TOKEN": "tok"},
    )
    pages = PageServer(service.base, PageHandler)
    thread = threading.Thread(target=pages.serve_forever, name="posthog-pages", daemon=True)
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


def sample(service: Service, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(service.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


CAPTURES: list[bytes] = []  # first bytes of posthog-js's capture request bodies


def open_page(stack: Stack, user: str) -> tuple[Page, list[str]]:
    page = stack.browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "request",
        lambda r: (
            CAPTURES.append((r.post_data_buffer or b"")[:2])
            if "/posthog/" in r.url and "/e/" in r.url
            else None
        ),
    )
    page.goto(f"{stack.pages.base}/billing?user={user}&card=4242")
    page.wait_for_function("() => window.phReady === true")
    return page, errors


def hammer(page: Page, selector: str) -> None:
    for _ in range(CLICKS):
        page.click(selector)
        page.wait_for_timeout(90)


def test_hammering_a_dead_pay_button_gives_a_flag(stack: Stack) -> None:
    service, user = stack.service, "ph-e2e-pay"
    started = time.monotonic()
    page, errors = open_page(stack, user)
    hammer(page, "#pay")
    found: list[dict[str, Any]] = []

    def flagged() -> bool:
        found[:] = [f for f in service.flags() if f["user_id"] == user]
        return bool(found)

    service.wait_for(flagged, timeout=FLAG_WITHIN_S, interval=0.25, what="the rage-click flag")
    print(f"posthog-js clicks to flag: {time.monotonic() - started:.1f} s")
    flag = found[0]
    assert flag["kinds"] == ["rage_click"]
    evidence = flag["signals"][0]["evidence"]
    assert (evidence["target"], evidence["label"], evidence["page"]) == (
        "#pay",
        "Pay now",
        "/billing",
    )
    assert sample(service, "frustration_source_events_total", source="posthog", outcome="mapped")
    assert errors == []
    # The SDK's own transport: batches to /e/, gzip-compressed (the config we answer allows it).
    page.wait_for_timeout(50)  # the sync API hands over the page's request events now
    assert CAPTURES and all(head == b"\x1f\x8b" for head in CAPTURES), CAPTURES
    queue = stack.browser.new_page()
    queue.goto(f"{service.base}/queue?token=tok")
    assert "Pay now" in queue.content()
    screenshot(queue, ARTIFACTS / "posthog-js-queue.png")
    queue.close()
    page.close()


def test_hammering_a_stepper_gives_no_flag_even_with_posthogs_rageclick(stack: Stack) -> None:
    service, user = stack.service, "ph-e2e-stepper"
    clicks_before = sample(service, "frustration_events_received_total", type="click")
    rage_before = sample(
        service, "frustration_source_events_total", source="posthog", outcome="corroborating"
    )
    page, errors = open_page(stack, user)
    hammer(page, "#plus")
    service.wait_for(
        lambda: (
            sample(service, "frustration_events_received_total", type="click")
            >= clicks_before + CLICKS
        ),
        timeout=FLAG_WITHIN_S,
        what="the stepper clicks to arrive",
    )
    # posthog-js called it a rage click; we counted that, and flag nothing.
    assert (
        sample(
            service, "frustration_source_events_total", source="posthog", outcome="corroborating"
        )
        > rage_before
    )
    time.sleep(4.0)  # past the idle advance: the clicks have been through the detectors
    assert [f for f in service.flags() if f["user_id"] == user] == []
    assert errors == []
    page.close()
