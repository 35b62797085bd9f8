"""End-to-end tests of ``streams/embedded/static/collector.js`` in headless Chromium.

A stdlib HTTP server on 127.0.0.1 serves the collector and the test pages and records every
POST to ``/v1/events`` (fetch batches and sendBeacon bodies alike).
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.e2e.browser import launch_chromium, screenshot

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR = ROOT / "streams" / "embedded" / "static" / "collector.js"
SCREENSHOT = ROOT / "artifacts" / "e2e" / "collector-page.png"
API_KEY = "test-key-123"
SECRET = "my secret text"
NEXT_SLIDE = "body > div.carousel:nth-of-type(2) > button.carousel-next"
PARAGRAPH = "Confidential session notes: PARAGRAPH-CANARY about the client"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Collector test page</title>
<style>
  body {{ font: 16px/1.5 sans-serif; margin: 2rem; max-width: 40rem; }}
  button, input {{ font: inherit; margin: .25rem 0; }}
  .box {{ border: 1px dashed #c33; padding: .5rem; margin: .5rem 0; }}
  .carousel {{ display: flex; gap: 1rem; align-items: center; }}
</style></head>
<body>
  <h1>Therapy session checkout</h1>
  <p id="notes-text">{paragraph}</p>
  <button id="pay">Pay now</button>
  <div class="box" id="ignored" data-frustration-ignore>
    <button id="ignored-btn"><span id="ignored-child">Ignored control</span></button>
  </div>
  <p><label>Private note <input id="secret" type="text" value="{secret}"></label></p>
  <p><label>Sessions <input id="qty" type="number" value="3" min="1" max="9"></label></p>
  <p><label>Mood <input id="mood" type="range" min="0" max="10" value="4"></label></p>
  <p><label id="consent-label">I agree to the terms <input id="consent" type="checkbox"></label></p>
  <div class="carousel"><span>Slide 1 of 3</span>
    <button class="carousel-next" aria-label="Next slide">›</button></div>
  {collector}
</body></html>
"""


def collector_tag(user_id: str | None) -> str:
    if user_id is None:  # configured through window.frustrationCollector, identify() later
        return (
            "<script>window.frustrationCollector = "
            f'{{apiKey: "{API_KEY}", sessionId: "sess-fixed"}};</script>\n'
            '  <script src="/collector.js" async></script>'
        )
    return (
        '<script src="/collector.js" data-endpoint="/v1/events" '
        f'data-api-key="{API_KEY}" data-user-id="{html.escape(user_id)}" async></script>'
    )


@dataclass
class Post:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: str

    @property
    def events(self) -> list[dict[str, Any]]:
        body = json.loads(self.raw)
        assert isinstance(body, list)
        return body


@dataclass
class Recorder:
    posts: list[Post] = field(default_factory=list)
    rejected: list[Post] = field(default_factory=list)
    fail_next: int = 0  # answer this many POSTs with 503 (and do not record them as accepted)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, post: Post) -> None:
        with self.cond:
            self.posts.append(post)
            self.cond.notify_all()

    def for_user(self, user_id: str) -> list[Post]:
        with self.cond:
            return [p for p in self.posts if any(e.get("user_id") == user_id for e in p.events)]

    def events_for(self, user_id: str) -> list[dict[str, Any]]:
        return [e for p in self.for_user(user_id) for e in p.events if e.get("user_id") == user_id]

    def wait_events(self, user_id: str, count: int, timeout: float = 6.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.events_for(user_id)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return self.events_for(user_id)

    def all_bodies(self) -> str:
        with self.cond:
            return "\n".join(p.raw + " " + json.dumps(p.query) for p in self.posts)


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/collector.js":
            self._send(200, "text/javascript; charset=utf-8", COLLECTOR.read_bytes())
        elif url.path.startswith("/app/"):
            user = query.get("uid", [""])[0] or None
            page = PAGE.format(
                paragraph=PARAGRAPH, secret=html.escape(SECRET), collector=collector_tag(user)
            )
            self._send(200, "text/html; charset=utf-8", page.encode())
        elif url.path == "/elsewhere":
            self._send(200, "text/html; charset=utf-8", b"<!doctype html><p>elsewhere</p>")
        else:
            self._send(404, "text/plain", b"not found")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        if url.path != "/v1/events":
            self._send(404, "text/plain", b"not found")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        post = Post(url.path, parse_qs(url.query), headers, raw)
        recorder = self.server.recorder
        with recorder.cond:
            fail = recorder.fail_next > 0
            if fail:
                recorder.fail_next -= 1
                recorder.rejected.append(post)
        if fail:
            self._send(503, "application/json", b'{"error":"unavailable"}')
            return
        recorder.add(post)
        self._send(202, "application/json", b'{"accepted":true}')


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.recorder = Recorder()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, name="collector-http", daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    with launch_chromium() as context:
        yield context


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        if not pg.is_closed():
            pg.close()
    assert errors == [], f"uncaught page errors: {errors}"


@pytest.fixture
def uid() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def open_app(page: Page, server: Server, uid: str | None, path: str = "/app/checkout") -> None:
    query = f"?uid={uid}&visit=1#step-2" if uid else "?visit=1"
    page.goto(server.base + path + query)
    page.wait_for_function("() => !!window.frustration")


def test_rage_click_on_button_sends_eight_events(page: Page, server: Server, uid: str) -> None:
    open_app(page, server, uid)
    screenshot(page, SCREENSHOT)
    started = int(time.time() * 1000)
    page.locator("#pay").click(click_count=8)  # eight clicks, detail 1..8, like a real burst
    events = server.recorder.wait_events(uid, 8)  # sent by the 2 s batch timer

    assert len(events) == 8
    assert [e["detail"] for e in events] == list(range(1, 9))
    assert len({e["event_id"] for e in events}) == 8
    assert len({e["session_id"] for e in events}) == 1
    for event in events:
        assert event["type"] == "click"
        assert event["user_id"] == uid
        assert event["target"] == "#pay"
        assert event["element"] == "button"
        assert event["label"] == "Pay now"
        assert event["role"] == "button"
        assert event["page"] == "/app/checkout"
        assert isinstance(event["ts"], int) and started - 1000 <= event["ts"] <= started + 10_000
        assert isinstance(event["x"], int) and isinstance(event["y"], int)
        assert isinstance(event["event_id"], str) and len(event["event_id"]) >= 16
        assert isinstance(event["session_id"], str) and event["session_id"]
        assert "input_type" not in event
        assert set(event) <= {
            "type", "user_id", "session_id", "event_id", "ts", "target", "x", "y",
            "page", "element", "label", "role", "detail", "input_type",
        }  # fmt: skip
    posts = server.recorder.for_user(uid)
    assert all(p.headers["authorization"] == f"Bearer {API_KEY}" for p in posts)
    assert all(p.headers["content-type"].startswith("application/json") for p in posts)
    assert all("api_key" not in p.query for p in posts)
    print("captured click event:", json.dumps(events[0]))


def test_ignored_element_and_its_child_send_nothing(page: Page, server: Server, uid: str) -> None:
    open_app(page, server, uid)
    page.locator("#ignored-btn").click()
    page.locator("#ignored-child").click()
    page.locator("#ignored").click(position={"x": 3, "y": 3})
    page.locator("#pay").click()  # a marker that flushing works at all
    page.evaluate("window.frustration.flush()")
    events = server.recorder.wait_events(uid, 1)
    time.sleep(0.3)
    events = server.recorder.events_for(uid)
    assert [e["target"] for e in events] == ["#pay"]


def test_never_sends_input_values_or_page_text(page: Page, server: Server, uid: str) -> None:
    open_app(page, server, uid)
    page.locator("#secret").click()
    page.locator("#secret").click(click_count=3)
    page.keyboard.type(" and more private words")
    page.locator("#notes-text").click()
    page.locator("h1").click()
    page.evaluate("window.frustration.flush()")
    events = server.recorder.wait_events(uid, 6)
    assert len(events) == 6
    secret = events[0]
    assert secret["target"] == "#secret"
    assert secret["element"] == "input" and secret["input_type"] == "text"
    assert "label" not in secret and "role" not in secret
    paragraph = events[-2]
    assert paragraph["target"] == "#notes-text" and paragraph["element"] == "p"
    assert "label" not in paragraph
    bodies = server.recorder.all_bodies()
    for forbidden in (SECRET, "secret text", "private words", "PARAGRAPH-CANARY", "Therapy"):
        assert forbidden not in bodies


@pytest.mark.parametrize("leave", ["goto", "close"])
def test_pagehide_flushes_with_send_beacon(
    page: Page, server: Server, uid: str, leave: str
) -> None:
    open_app(page, server, uid)
    page.locator("#pay").click()
    page.locator("#qty").click()
    page.locator("#pay").click()
    if leave == "goto":  # well before the 2 s batch timer
        page.goto(server.base + "/elsewhere")
    else:
        page.close(run_before_unload=True)
    events = server.recorder.wait_events(uid, 3, timeout=5)

    assert [e["target"] for e in events] == ["#pay", "#qty", "#pay"]
    posts = server.recorder.for_user(uid)
    assert len(posts) == 1
    beacon = posts[0]
    assert beacon.query == {"api_key": [API_KEY]}
    assert "authorization" not in beacon.headers  # sendBeacon cannot set headers
    assert beacon.headers["content-type"].startswith("application/json")


def test_roles_and_input_types(page: Page, server: Server, uid: str) -> None:
    open_app(page, server, uid)
    page.locator("#qty").click()
    page.locator("#mood").click()
    page.locator(".carousel-next").click()
    page.get_by_text("I agree to the terms").click()  # one event, for the checkbox, not two
    page.evaluate("window.frustration.flush()")
    server.recorder.wait_events(uid, 4)
    time.sleep(0.3)
    qty, mood, nxt, consent = server.recorder.events_for(uid)

    assert (qty["target"], qty["element"], qty["input_type"]) == ("#qty", "input", "number")
    assert qty["role"] == "spinbutton" and "label" not in qty
    assert (mood["target"], mood["input_type"], mood["role"]) == ("#mood", "range", "slider")
    assert "label" not in mood
    assert nxt["element"] == "button" and nxt["role"] == "button"
    assert nxt["label"] == "Next slide"
    assert nxt["target"] == NEXT_SLIDE
    assert (consent["target"], consent["role"], consent["input_type"]) == (
        "#consent",
        "checkbox",
        "checkbox",
    )
    assert "label" not in consent  # label text is page text, not the control's own label
    for event in (qty, mood, nxt, consent):  # every target selects exactly the clicked control
        assert page.locator(event["target"]).count() == 1


def test_queues_until_identify(page: Page, server: Server) -> None:
    open_app(page, server, None)
    page.locator("#pay").click()
    page.locator(".carousel-next").click()
    page.evaluate("window.frustration.flush()")
    time.sleep(0.5)
    with server.recorder.cond:
        anonymous = [p for p in server.recorder.posts if '"sess-fixed"' in p.raw]
    assert anonymous == []  # nothing leaves the page before the platform identifies the user

    uid = f"late-{uuid.uuid4().hex[:8]}"
    page.evaluate("id => window.frustration.identify(id)", uid)
    events = server.recorder.wait_events(uid, 2, timeout=3)
    assert [e["target"] for e in events] == ["#pay", NEXT_SLIDE]
    assert {e["session_id"] for e in events} == {"sess-fixed"}
    assert server.recorder.for_user(uid)[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_fifty_events_flush_at_once_then_the_rest_by_timer(
    page: Page, server: Server, uid: str
) -> None:
    open_app(page, server, uid)
    page.locator("#pay").click(click_count=55)
    server.recorder.wait_events(uid, 55)
    sizes = [len(p.events) for p in server.recorder.for_user(uid)]
    assert sizes == [50, 5]


def test_failed_post_is_retried_once_then_dropped(page: Page, server: Server, uid: str) -> None:
    open_app(page, server, uid)
    with server.recorder.cond:
        server.recorder.fail_next = 1
    page.locator("#pay").click()
    page.evaluate("window.frustration.flush()")
    events = server.recorder.wait_events(uid, 1, timeout=5)  # retried by the 2 s timer
    assert [e["detail"] for e in events] == [1]

    with server.recorder.cond:
        server.recorder.fail_next = 2
    page.locator("#qty").click()
    page.evaluate("window.frustration.flush()")
    time.sleep(3)  # first attempt and the one retry both fail: the event is dropped
    with server.recorder.cond:
        assert server.recorder.fail_next == 0
        assert sum(f'"{uid}"' in p.raw for p in server.recorder.rejected) == 3
    page.locator(".carousel-next").click()
    page.evaluate("window.frustration.flush()")
    events = server.recorder.wait_events(uid, 2)
    assert [e["target"] for e in events] == ["#pay", NEXT_SLIDE]


def test_event_id_fallback_without_random_uuid(page: Page, server: Server, uid: str) -> None:
    page.add_init_script("delete Crypto.prototype.randomUUID")
    open_app(page, server, uid)
    assert page.evaluate("typeof crypto.randomUUID") == "undefined"
    page.locator("#pay").click(click_count=3)
    page.evaluate("window.frustration.flush()")
    events = server.recorder.wait_events(uid, 3)
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == 3
    for event_id in ids:
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", event_id
        )
