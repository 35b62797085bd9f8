"""The support queue's web security and agent identity against a real ``frustration serve``.

Security headers on every kind of response; CSRF refused (no token, a wrong token, another
origin, another site) on page forms while the JSON API keeps working; malformed credentials are a
401 with no traceback; empty secrets stop the service at start; ``limit`` validated; ingest CORS
only for the configured (default: loopback) origins; idle keep-alive connections closed; per-agent
tokens (``frustration agents add``) and a trusted proxy's header name the agent who acts.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
from typing import Any

import pytest

from tests.integration.service_fixture import (
    Service,
    ServiceFactory,
    add_agent,
)
from tests.integration.test_service import burst, now_ms, wait_flag

pytestmark = pytest.mark.service

TOKEN = "sec-token"
API_KEY = "sec-key"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _csrf(service: Service, headers: dict[str, str] | None = None) -> str:
    page = service.request("GET", "/queue", headers=headers)
    assert page.status == 200, page.text
    match = re.search(r'name=csrf value="([0-9a-f]+)"', page.text)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def _raw(port: int, method: str, path: str, headers: list[tuple[str, bytes]]) -> int:
    """A request with header bytes urllib would refuse to send (non-ASCII, invalid UTF-8)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def _flag(service: Service, user: str) -> dict[str, Any]:
    service.post_events(burst(user, now_ms()))
    return wait_flag(service, user)


def test_headers_csrf_credentials_limits(service_factory: ServiceFactory) -> None:
    service = service_factory(
        env={
            "FRUSTRATION_API_KEY": API_KEY,
            "FRUSTRATION_QUEUE_TOKEN": TOKEN,
            "FRUSTRATION_IDLE_ADVANCE_S": "0.5",
        }
    )
    fid = _flag(service, "sec-1")["flag_id"]

    # security headers: pages, API, errors, redirects
    for path, auth in (
        ("/queue", True),
        (f"/queue/flags/{fid}", True),
        ("/ops", True),
        ("/v1/flags", True),
        ("/v1/flags", False),
        ("/queue/flags/nope", True),
        ("/nowhere", True),
    ):
        answer = service.request("GET", path, auth=auth)
        h = answer.headers
        csp = h.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, h)
        assert "unsafe-inline" not in csp
        assert h.get("X-Content-Type-Options") == "nosniff", path
        assert h.get("Referrer-Policy") == "no-referrer", path
        assert h.get("Cache-Control") == "no-store", path
    assert "<script>" not in service.get("/queue").text  # no inline script: the CSP forbids it

    # CSRF: a page form needs the page's token, and must come from this origin
    token = _csrf(service)
    claim = f"/v1/flags/{fid}/claim"

    def form(body: str, **headers: str) -> int:
        return service.request("POST", claim, body.encode(), {**FORM, **headers}).status

    assert form("agent=mallory") == 403
    assert form("agent=mallory&csrf=0123456789abcdef") == 403
    other = "http://127.0.0.1:1"
    assert form(f"agent=mallory&csrf={token}", Origin=other) == 403
    assert form(f"agent=mallory&csrf={token}", **{"Sec-Fetch-Site": "same-site"}) == 403
    assert form(f"agent=mallory&csrf={token}", **{"Sec-Fetch-Site": "cross-site"}) == 403
    text = service.request("POST", claim, b"agent=x", {"Content-Type": "text/plain"})
    assert text.status == 403
    assert service.get(f"/v1/flags/{fid}").json()["status"] == "open"
    json_foreign = service.request(
        "POST", claim, b'{"agent": "m"}', {"Content-Type": "application/json", "Origin": other}
    )
    assert json_foreign.status == 403
    assert service.get(f"/v1/flags/{fid}").json()["status"] == "open"
    own = f"http://127.0.0.1:{service.port}"
    ok = service.request(
        "POST",
        claim,
        f"agent=agent-ann&csrf={token}".encode(),
        {**FORM, "Origin": own, "Sec-Fetch-Site": "same-origin"},
    )
    assert ok.status == 200 and "claimed by agent-ann" in ok.text  # after the 303
    # the API contract for API clients is unchanged: JSON with the bearer token
    again = service.post_json(claim, {"agent": "agent-bob"})
    assert again.status == 409 and "agent-ann" in again.json()["error"]

    # the double claim from the page: said once, in words, naming who holds it; not in the URL
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    conn.request("POST", claim, f"agent=agent-bob&csrf={token}", {**FORM, **auth})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    assert answer.status == 303 and answer.getheader("Location") == "/queue"
    flash = answer.getheader("Set-Cookie", "").split(";")[0]
    assert flash.startswith("frustration_flash=")
    shown = service.request("GET", "/queue", headers={"Cookie": flash})
    assert "agent-ann is already working on this case." in shown.text
    assert "frustration_flash=" in shown.headers.get("Set-Cookie", "")  # cleared: shown once
    assert "already working" not in service.get("/queue").text

    # malformed credentials: 401, never a 500 or a traceback
    for value in (b"Bearer \xc3\xbc\xc3\xa9", b"Bearer \xff\xfe", "Bearer токен".encode()):
        assert _raw(service.port, "GET", "/v1/flags", [("Authorization", value)]) == 401
        assert _raw(service.port, "POST", "/v1/events", [("Authorization", value)]) == 401
        cookie = b"frustration_queue_token=" + value[7:]
        assert _raw(service.port, "GET", "/queue", [("Cookie", cookie)]) == 401
    assert service.get("/queue?token=%C3%BC%FF", auth=False).status == 401
    assert service.get("/v1/flags?token=", auth=False).status == 401
    assert "Traceback" not in service.log()

    # limit: a whole number from 0
    assert service.get("/v1/flags?limit=-1").status == 400
    assert service.get("/v1/flags?limit=abc").status == 400
    assert service.get("/v1/incidents?limit=-5").status == 400
    assert service.get("/v1/dead-letters?limit=1.5").status == 400
    assert service.get("/v1/flags?limit=0").json()["count"] == 0
    assert service.get("/v1/flags?limit=%EF%BC%91").status == 400  # a full-width digit
    assert service.get("/v1/flags?limit=" + "9" * 5000).status == 400
    assert service.get("/v1/flags?limit=1_0").status == 400
    huge = service.get("/v1/flags?limit=999999999999")
    assert huge.status == 200 and huge.json()["count"] <= 1000  # capped

    # hostile page input: a forged flash cookie and a typed name are text, never markup; a
    # form's way back stays on the queue's own pages
    forged = service.request(
        "GET", "/queue", headers={"Cookie": "frustration_flash=%3Cscript%3Ex()%3C%2Fscript%3E"}
    )
    assert "<script>x()" not in forged.text and "&lt;script&gt;x()" in forged.text
    fid2 = _flag(service, "sec-2")["flag_id"]
    for back in ("//evil.example/x", "https://evil.example", "/queue/../../x", "/queue\\x"):
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        body = f"agent=%3Cb%3Em%3C%2Fb%3E&csrf={token}&back={back}"
        conn.request("POST", f"/v1/flags/{fid2}/claim", body, {**FORM, **auth})
        answer = conn.getresponse()
        answer.read()
        conn.close()
        assert answer.status == 303 and answer.getheader("Location") == "/queue", back
    assert service.get(f"/v1/flags/{fid2}").json()["claimed_by"] == "<b>m</b>"
    page = service.get("/queue").text
    assert "claimed by &lt;b&gt;m&lt;/b&gt;" in page and "<b>m</b>" not in page
    assert "Traceback" not in service.log()


@pytest.mark.parametrize("name", ["FRUSTRATION_QUEUE_TOKEN", "FRUSTRATION_API_KEY"])
def test_an_empty_secret_is_refused_at_start(service_factory: ServiceFactory, name: str) -> None:
    service = service_factory(env={name: "  "}, wait_ready=False)
    assert service.proc.wait(20) == 1, service.log()
    log = service.log()
    assert f"ConfigurationError: {name} is set but empty" in log, log
    assert "Traceback" not in log


def test_ingest_cors_is_an_allow_list(service_factory: ServiceFactory) -> None:
    def preflight(service: Service, origin: str) -> dict[str, str]:
        return service.request("OPTIONS", "/v1/events", headers={"Origin": origin}).headers

    default = service_factory()
    assert preflight(default, "http://127.0.0.1:5173")["Access-Control-Allow-Origin"] == (
        "http://127.0.0.1:5173"
    )
    assert preflight(default, "http://localhost:3000")["Access-Control-Allow-Origin"] == (
        "http://localhost:3000"
    )
    assert "Access-Control-Allow-Origin" not in preflight(default, "https://evil.example")
    default.stop()

    listed = service_factory(env={"FRUSTRATION_CORS_ORIGINS": '["https://clinic.example"]'})
    allowed = preflight(listed, "https://clinic.example")
    assert allowed["Access-Control-Allow-Origin"] == "https://clinic.example"
    assert allowed["Access-Control-Allow-Credentials"] == "true"
    for origin in ("https://evil.example", "http://127.0.0.1:5173", "null"):
        assert "Access-Control-Allow-Origin" not in preflight(listed, origin), origin
    posted = listed.request(
        "POST",
        "/v1/events",
        b'[{"type": "click", "user_id": "c", "ts": 1, "target": "#a"}]',
        {"Content-Type": "application/json", "Origin": "https://evil.example"},
    )
    assert "Access-Control-Allow-Origin" not in posted.headers


def test_idle_keep_alive_connections_are_closed(service_factory: ServiceFactory) -> None:
    service = service_factory(env={"FRUSTRATION_KEEPALIVE_TIMEOUT_S": "1"})
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        started = time.monotonic()
        rest = sock.recv(65536)  # blocks until the server closes the idle connection
        closed_after = time.monotonic() - started
    assert rest == b"", rest
    assert closed_after < 5, closed_after


def _add_agent(db: Any, name: str) -> str:
    done = add_agent(db, name)
    token = done.stdout.strip()
    assert token and "shown only this once" in done.stderr
    return token


def test_agents_are_who_the_deployment_says(service_factory: ServiceFactory, tmp_path: Any) -> None:
    db = tmp_path / "q.db"
    ann = _add_agent(db, "Ann Agent")
    bob = _add_agent(db, "Bob Agent")
    assert ann not in db.read_bytes().decode("latin-1")  # stored hashed
    service = service_factory(
        db=db,
        env={
            "FRUSTRATION_QUEUE_TOKEN": TOKEN,
            "FRUSTRATION_IDLE_ADVANCE_S": "0.5",
            "FRUSTRATION_TRUSTED_PROXIES": '["127.0.0.1/32"]',
        },
    )
    fid = _flag(service, "who-1")["flag_id"]

    def as_agent(token: str, path: str, data: dict[str, Any]) -> Any:
        return service.request(
            "POST",
            path,
            __import__("json").dumps(data).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            auth=False,
        )

    claimed = as_agent(ann, f"/v1/flags/{fid}/claim", {"agent": "someone else"})
    assert claimed.status == 200 and claimed.json()["claimed_by"] == "Ann Agent"
    assert as_agent(bob, f"/v1/flags/{fid}/claim", {}).status == 409
    noted = as_agent(ann, f"/v1/flags/{fid}/notes", {"note": "left a voicemail"})
    assert noted.json()["history"][-1] == {**noted.json()["history"][-1], "agent": "Ann Agent"}
    handed = as_agent(ann, f"/v1/flags/{fid}/reassign", {"to": "Bob Agent"})
    assert handed.json()["claimed_by"] == "Bob Agent"
    done = as_agent(bob, f"/v1/flags/{fid}/resolve", {"outcome": "client_was_fine"})
    assert done.status == 200 and done.json()["resolved_by"] == "Bob Agent"
    whats = [(h["what"], h["agent"]) for h in done.json()["history"]]
    assert whats[1:] == [
        ("claimed", "Ann Agent"),
        ("note", "Ann Agent"),
        ("reassigned", "Ann Agent"),
        ("resolved", "Bob Agent"),
    ]
    # an unknown token opens nothing; the shared token still does (the typed name then)
    assert as_agent("fsa_wrong", "/v1/flags", {}).status == 401
    assert service.get("/v1/flags").status == 200

    # the trusted proxy (here: loopback) names the agent in its header
    page = service.request("GET", "/queue", headers={"X-Forwarded-Email": "cy@clinic.example"})
    assert "Signed in as <b>cy@clinic.example</b>" in page.text
    fid2 = _flag(service, "who-2")["flag_id"]
    via_proxy = service.request(
        "POST",
        f"/v1/flags/{fid2}/claim",
        b'{"agent": "not me"}',
        {"Content-Type": "application/json", "X-Forwarded-Email": "cy@clinic.example"},
        auth=False,
    )
    assert via_proxy.json()["claimed_by"] == "cy@clinic.example"


def test_a_proxy_header_from_elsewhere_is_not_trusted(service_factory: ServiceFactory) -> None:
    service = service_factory(
        env={"FRUSTRATION_QUEUE_TOKEN": TOKEN, "FRUSTRATION_TRUSTED_PROXIES": '["10.9.9.9"]'}
    )
    forged = service.request("GET", "/v1/flags", headers={"X-Forwarded-Email": "x@y"}, auth=False)
    assert forged.status == 401
    page = service.request("GET", "/queue", headers={"X-Forwarded-Email": "x@y"})
    assert "Signed in as" not in page.text  # the shared token: the name is typed
