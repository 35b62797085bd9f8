"""The agent's workspace in a real browser (issue 13): Chromium from Debian, a real
``frustration serve`` with its SQLite queue, agents signed in with their own tokens
(``frustration agents add``) or with the shared token and a typed name.

- typed text survives the live list updates (two refresh periods and a new case arriving);
- claim -> resolve with an outcome from the case page, recorded under the agent's name;
- filter by kind, search by client id, "mine";
- a second agent sees who holds a case, and a double claim says so once, in words;
- a page on another port of the same host (same site, other origin) cannot claim or resolve,
  though the browser sends the agent's cookie with its posts;
- screenshots of the queue, a case, an incident and /ops at 1440 px and 390 px in
  ``artifacts/e2e/``: nothing wider than the screen, no raw JSON, no engine words.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.e2e.browser import CHROMIUM_ARGS, chromium_path, screenshot
from tests.integration.service_fixture import Service, add_agent, run_service
from tests.integration.test_incidents_service import LIVE_ENV, outage_failures
from tests.integration.test_service import burst, now_ms, wait_flag

pytestmark = [pytest.mark.browser, pytest.mark.service]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"
TOKEN = "ws-shared-token"
REFRESH_S = 2.0
OUTAGE = [f"ws-out-{n:02d}" for n in range(30)]
#: Words of the engine that must never reach an agent's page (scores, codes, kinds as codes).
ENGINE_WORDS = re.compile(
    r"score|strength|update \d|rage_click|failed_logins|abrupt_chat_end|service_unavailable|"
    r"bad_otp|repeated_bursts|reason code|\{\"",
    re.IGNORECASE,
)
WIDTHS = {"1440": (1440, 900), "390": (390, 844)}


def _add_agent(db: Path, name: str) -> str:
    return add_agent(db, name).stdout.strip()


@dataclass
class Desk:
    service: Service
    ana: str  # Ana's own token
    ben: str  # Ben's own token

    clock_ms: int = 0  # just after the latest event posted (the service's event time)

    def start_ms(self) -> int:
        """Where live input starts: now, or after what was posted so far (some of it runs on
        a few seconds past now), so nothing is late for the 0.5 s allowed lateness."""
        return max(now_ms(), self.clock_ms)

    def post(self, events: list[dict[str, Any]]) -> None:
        self.service.post_events(events)
        self.clock_ms = max([self.clock_ms, *(int(e["ts"]) + 100 for e in events)])

    def flag(self, user: str, **kwargs: Any) -> dict[str, Any]:
        self.post(burst(user, self.start_ms(), **kwargs))
        return wait_flag(self.service, user)

    def get_flag(self, fid: str) -> dict[str, Any]:
        answer = self.service.get(f"/v1/flags/{fid}")
        assert answer.status == 200, answer.text
        flag: dict[str, Any] = answer.json()
        return flag

    def as_agent(self, token: str, path: str, data: dict[str, Any]) -> Any:
        return self.service.request(
            "POST",
            path,
            __import__("json").dumps(data).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            auth=False,
        )


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    workdir = tmp_path_factory.mktemp("e2e-workspace")
    db = workdir / "q.db"
    ana, ben = _add_agent(db, "Ana"), _add_agent(db, "Ben")
    service = run_service(
        workdir,
        db=db,
        env={
            **LIVE_ENV,
            "FRUSTRATION_QUEUE_TOKEN": TOKEN,
            "FRUSTRATION_QUEUE_REFRESH_S": str(REFRESH_S),
        },
    )
    try:
        yield Desk(service, ana, ben)
    finally:
        assert service.stop() == 0, service.log()
    assert "Traceback" not in service.log()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium for the module; each agent gets a context of their own (their own
    cookies), as two people on two machines."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium_path()), headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def signed_in(
    chromium: Browser, desk: Desk, token: str, width: str = "1440"
) -> Iterator[BrowserContext]:
    """A fresh browser context whose first visit signs in with `token` (its cookie does from
    then on)."""
    w, h = WIDTHS[width]
    context = chromium.new_context(viewport={"width": w, "height": h})
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        page.goto(f"{desk.service.base}/queue?token={token}")
        assert page.url.endswith("/queue?token=" + token)
        page.close()
        yield context
    finally:
        context.close()


def open_queue(context: BrowserContext, desk: Desk, query: str = "") -> Page:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda m: (
            errors.append(f"{m.text} {m.location.get('url')}")
            if m.type == "error" and not m.location.get("url", "").endswith("/favicon.ico")
            else None
        ),
    )
    page.goto(f"{desk.service.base}/queue{query}")
    page.wait_for_load_state("load")
    page.evaluate("() => { window.sameDocument = true; }")
    assert errors == [], errors  # e.g. a script the CSP blocked
    return page


def row_of(page: Page, user: str) -> Any:
    return page.locator("#flag-list > tr", has=page.locator("code", has_text=user))


def visible_text(page: Page) -> str:
    return page.locator("body").inner_text()


def test_typed_text_survives_live_updates(desk: Desk, chromium: Browser) -> None:
    """A half-typed name and note are still there after two refresh periods and a new case."""
    a = desk.flag("ws-type-a")
    b = desk.flag("ws-type-b")
    held = desk.service.post_json(f"/v1/flags/{b['flag_id']}/claim", {"agent": "agent-zoe"})
    assert held.status == 200
    with signed_in(chromium, desk, TOKEN) as context:
        page = open_queue(context, desk)
        lists: list[float] = []
        page.on(
            "response",
            lambda r: lists.append(time.monotonic()) if "/queue/list" in r.url else None,
        )
        name = row_of(page, "ws-type-a").locator("input[name=agent]")
        name.press_sequentially("Dana Typed")
        note = row_of(page, "ws-type-b").locator("input[name=note]")
        note.press_sequentially("left a voicemail, will try again at")
        started = time.monotonic()
        desk.flag("ws-type-c")  # a new case arrives while the agent types
        page.wait_for_function(
            "() => [...document.querySelectorAll('#flag-list code')]"
            ".some(c => c.textContent === 'ws-type-c')",
            timeout=15_000,
        )
        while time.monotonic() - started < 2.5 * REFRESH_S:
            page.wait_for_timeout(250)
        updates = [t for t in lists if t > started]
        assert len(updates) >= 2, f"{len(updates)} list updates in {2.5 * REFRESH_S} s"
        assert page.evaluate("() => window.sameDocument") is True  # no reload
        assert name.input_value() == "Dana Typed"
        assert note.input_value() == "left a voicemail, will try again at"
        assert page.evaluate("() => document.activeElement.name") == "note"
        # the typed name claims: the claim records it
        row_of(page, "ws-type-a").locator("button", has_text="Claim").click()
        page.wait_for_load_state("load")
        assert desk.get_flag(a["flag_id"])["claimed_by"] == "Dana Typed"
        assert "claimed by Dana Typed" in row_of(page, "ws-type-a").inner_text()
        page.close()


def test_claim_then_resolve_with_an_outcome_from_the_case_page(
    desk: Desk, chromium: Browser
) -> None:
    flag = desk.flag("ws-case-1")
    fid = flag["flag_id"]
    with signed_in(chromium, desk, desk.ana) as context:
        page = open_queue(context, desk)
        assert "Signed in as Ana" in page.locator("header").inner_text()
        row_of(page, "ws-case-1").locator("a.open-case").click()
        page.wait_for_url(f"**/queue/flags/{fid}")
        text = visible_text(page)
        assert re.search(r"The client clicked “Pay now” on the /billing page \d+ times", text), text
        assert "did not work for you" in text and "That is our fault" in text  # the message
        assert "Control" in text and "Clicks" in text  # the evidence as facts
        assert not ENGINE_WORDS.search(text), ENGINE_WORDS.search(text)
        page.locator(".actions button", has_text="Claim this case").click()
        page.wait_for_load_state("load")
        assert "claimed by Ana" in page.locator(".actions").inner_text()
        assert desk.get_flag(fid)["claimed_by"] == "Ana"

        actions = page.locator(".actions form.resolve")
        fine = "Reached out: the client was fine"
        actions.locator("select[name=outcome]").select_option(label=fine)
        actions.locator("input[name=note]").fill("paid by phone, all good")
        actions.locator("button", has_text="Resolve").click()
        page.wait_for_load_state("load")
        assert page.url.endswith(f"/queue/flags/{fid}")
        assert "Resolved by Ana: Reached out: the client was fine" in visible_text(page)
        timeline = page.locator("ol.timeline").inner_text()
        assert "paid by phone, all good" in timeline and "Ana" in timeline
        done = desk.get_flag(fid)
        assert done["status"] == "resolved" and done["outcome"] == "client_was_fine"
        assert done["resolved_by"] == "Ana"
        page.close()


def test_filter_search_and_mine(desk: Desk, chromium: Browser) -> None:
    desk.flag("ws-find-1")
    desk.post(outage_failures(["ws-login-1"], desk.start_ms()))
    login = wait_flag(desk.service, "ws-login-1")
    mine = desk.flag("ws-find-2")
    assert desk.as_agent(desk.ben, f"/v1/flags/{mine['flag_id']}/claim", {}).status == 200
    with signed_in(chromium, desk, desk.ben) as context:
        page = open_queue(context, desk)
        form = page.locator("form.filters")
        form.locator("select[name=kind]").select_option(label="Locked out")
        form.locator("button", has_text="Filter").click()
        page.wait_for_load_state("load")
        assert "kind=failed_logins" in page.url
        users = page.locator("#flag-list code").all_inner_texts()
        assert users == ["ws-login-1"], users
        assert "could not" in row_of(page, "ws-login-1").inner_text()

        page.goto(f"{desk.service.base}/queue")
        page.locator("input[name=q]").fill("ws-find-1")
        page.locator("form.filters button", has_text="Filter").click()
        page.wait_for_load_state("load")
        assert page.locator("#flag-list code").all_inner_texts() == ["ws-find-1"]

        page.goto(f"{desk.service.base}/queue")
        page.locator("form.filters input[name=mine]").check()
        page.locator("form.filters button", has_text="Filter").click()
        page.wait_for_load_state("load")
        assert page.locator("#flag-list code").all_inner_texts() == ["ws-find-2"]
        # the live update keeps the filters (the list it fetches is the filtered one)
        page.wait_for_timeout(2.5 * REFRESH_S * 1000)
        assert page.locator("#flag-list code").all_inner_texts() == ["ws-find-2"]
        assert login["kinds"] == ["failed_logins"]
        page.close()


def test_a_second_agent_sees_who_holds_a_case(desk: Desk, chromium: Browser) -> None:
    held = desk.flag("ws-held-1")
    race = desk.flag("ws-race-1")
    with signed_in(chromium, desk, desk.ana) as ana, signed_in(chromium, desk, desk.ben) as ben:
        mine = open_queue(ana, desk)
        row_of(mine, "ws-held-1").locator("button", has_text="Claim").click()
        mine.wait_for_load_state("load")
        assert desk.get_flag(held["flag_id"])["claimed_by"] == "Ana"

        theirs = open_queue(ben, desk)
        row = row_of(theirs, "ws-held-1")
        assert "claimed by Ana" in row.inner_text()
        assert row.locator("button", has_text="Resolve").count() == 0
        theirs.goto(f"{desk.service.base}/queue/flags/{held['flag_id']}")
        case = theirs.locator(".actions").inner_text()
        assert "claimed by Ana" in case and "Only the agent holding a case" in case
        assert theirs.locator(".actions button").count() == 0

        # a double claim: Ben's Claim button is on screen while Ana takes the case
        theirs.goto(f"{desk.service.base}/queue")
        button = row_of(theirs, "ws-race-1").locator("button", has_text="Claim")
        button.focus()  # the live update leaves a focused row alone
        assert desk.as_agent(desk.ana, f"/v1/flags/{race['flag_id']}/claim", {}).status == 200
        theirs.wait_for_timeout(1.5 * REFRESH_S * 1000)
        button.click()
        theirs.wait_for_load_state("load")
        flash = theirs.locator(".flash").all_inner_texts()
        assert flash == ["Ana is already working on this case."], flash
        assert race["flag_id"] not in theirs.url
        assert desk.get_flag(race["flag_id"])["claimed_by"] == "Ana"
        theirs.reload()
        assert theirs.locator(".flash").count() == 0  # said once
        assert "claimed by Ana" in row_of(theirs, "ws-race-1").inner_text()
        mine.close()
        theirs.close()


EVIL = """<!doctype html><html><head><meta charset=utf-8><title>Win a prize</title></head><body>
<form id=claim method=post action="{base}/v1/flags/{fid}/claim" target=claimed>
  <input name=agent value=mallory></form>
<form id=resolve method=post action="{base}/v1/flags/{fid}/resolve" target=resolved>
  <input name=outcome value=false_positive><input name=note value=pwned></form>
<iframe name=claimed></iframe><iframe name=resolved></iframe>
<script>
  window.results = [];
  fetch("{base}/v1/flags/{fid}/resolve", {{method: "POST", credentials: "include",
    headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{outcome: "false_positive"}})}})
    .then(r => window.results.push("json " + r.status), e => window.results.push("json blocked"));
  fetch("{base}/v1/flags/{fid}/resolve", {{method: "POST", credentials: "include",
    mode: "no-cors", headers: {{"Content-Type": "application/x-www-form-urlencoded"}},
    body: "outcome=false_positive"}})
    .then(r => window.results.push("form " + r.type), e => window.results.push("form blocked"));
  document.getElementById("claim").submit();
  setTimeout(() => document.getElementById("resolve").submit(), 300);
</script></body></html>"""


class EvilHandler(BaseHTTPRequestHandler):
    server: EvilServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = self.server.page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class EvilServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, page: str) -> None:
        super().__init__(("127.0.0.1", 0), EvilHandler)
        self.page = page


def test_a_page_on_another_port_cannot_claim_or_resolve(desk: Desk, chromium: Browser) -> None:
    base = desk.service.base
    open_flag = desk.flag("ws-evil-1")
    held = desk.flag("ws-evil-2")
    assert desk.as_agent(desk.ana, f"/v1/flags/{held['flag_id']}/claim", {}).status == 200
    with signed_in(chromium, desk, desk.ana) as context:
        answers: list[tuple[str, int]] = []
        context.on(
            "response",
            lambda r: answers.append((r.url, r.status)) if "/v1/flags/" in r.url else None,
        )
        for target in (open_flag, held):
            evil = EvilServer(EVIL.format(base=base, fid=target["flag_id"]))
            thread = threading.Thread(target=evil.serve_forever, daemon=True)
            thread.start()
            try:
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
                page.wait_for_function("() => window.results.length === 2", timeout=10_000)
                page.wait_for_timeout(1500)  # both form posts answered
                results = sorted(page.evaluate("() => window.results"))
                assert results == ["form opaque", "json blocked"], results
                page.close()
            finally:
                evil.shutdown()
                evil.server_close()
                thread.join(5)
    posts = [status for url, status in answers if url.endswith(("/claim", "/resolve"))]
    assert posts and all(status == 403 for status in posts), answers
    now_open = desk.get_flag(open_flag["flag_id"])
    assert now_open["status"] == "open" and now_open["claimed_by"] is None
    still = desk.get_flag(held["flag_id"])
    assert still["status"] == "claimed" and still["claimed_by"] == "Ana"
    assert still["outcome"] is None


def _no_overflow(page: Page, width: int) -> None:
    wide = page.evaluate(
        "() => [...document.querySelectorAll('body *')].filter(e => {"
        " const r = e.getBoundingClientRect(); return r.width > 0 && r.right > "
        f"{width} + 1; }}).map(e => e.tagName + '.' + e.className"
        " + ': ' + (e.textContent || '').slice(0, 40))"
    )
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width, wide
    assert wide == [], wide


def test_screenshots_at_desk_and_phone_width(desk: Desk, chromium: Browser) -> None:
    """Queue, case, incident and /ops at 1440 and 390 px: nothing cut off, no raw JSON, no
    engine words; the images go to artifacts/e2e/ for a person to look at."""
    service = desk.service
    desk.post(outage_failures(OUTAGE, desk.start_ms()))

    def outage() -> list[dict[str, Any]]:
        # ws-login-1 (the filter test) failed for the same cause minutes ago: it may be in too
        return [
            i
            for i in service.get("/v1/incidents").json()["incidents"]
            if i["clients_grouped"] >= len(OUTAGE)
        ]

    service.wait_for(lambda: len(outage()) == 1, timeout=20, what="the outage incident")
    (incident,) = outage()
    # an update to the clients, recorded from the incident's page later; one claim now
    claimed = desk.as_agent(desk.ben, f"/v1/incidents/{incident['incident_id']}/claim", {})
    assert claimed.status == 200, claimed.text
    case = desk.flag("ws-shot-1", label="Book session")
    assert desk.as_agent(desk.ana, f"/v1/flags/{case['flag_id']}/claim", {}).status == 200
    pages = {
        "queue": "/queue",
        "case": f"/queue/flags/{case['flag_id']}",
        "incident": f"/queue/incidents/{incident['incident_id']}",
        "ops": "/ops",
    }
    with signed_in(chromium, desk, desk.ana) as context:
        page = context.new_page()
        for width, (w, h) in WIDTHS.items():
            page.set_viewport_size({"width": w, "height": h})
            for name, path in pages.items():
                page.goto(service.base + path)
                page.wait_for_load_state("load")
                text = visible_text(page)
                if name != "ops":  # /ops is the lead's view of the engine: kinds by name there
                    assert not ENGINE_WORDS.search(text), (name, ENGINE_WORDS.search(text))
                assert '{"' not in text, name
                _no_overflow(page, w)
                screenshot(page, ARTIFACTS / f"workspace-{name}-{width}.png")
        # the proactive update to the incident's clients, recorded from its page
        page.goto(service.base + pages["incident"])
        page.locator("input[name=note]").fill("status page: sign-in is being fixed")
        page.locator("button", has_text="Record update sent").click()
        page.wait_for_load_state("load")
        timeline = page.locator("ol.timeline").inner_text()
        assert "Update sent to the clients · Ana" in timeline, timeline
        assert "status page: sign-in is being fixed" in timeline
        assert "Next update to clients due" in page.locator(".case").inner_text()
        page.close()
