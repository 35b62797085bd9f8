"""The support queue's web face, served by both runners (`frustration serve`, `frustration
queue-sink`): its JSON API, its pages, and the service basics (/metrics, health).

Routes::

    GET  /v1/flags                  the support queue (?status=&min_severity=&limit=) (token)
                                    (individual flags; &grouped=1 all, &incident=ID one incident's)
    GET  /v1/flags/{id}             one flag with its evidence and history          (token)
    POST /v1/flags/{id}/claim       {"agent": "..."}                                (token)
    POST /v1/flags/{id}/resolve     {"outcome": "...", "note": "..."}               (token)
    GET  /v1/incidents              incidents as queue items (?status=&state=)      (token)
    GET  /v1/incidents/{id}         one incident, its history and listed clients    (token)
    POST /v1/incidents/{id}/claim   {"agent": "..."}                                (token)
    POST /v1/incidents/{id}/resolve {"outcome": "...", "note": "..."}: its grouped
                                    open flags are resolved with it                 (token)
    GET  /v1/alerts                 security alerts (credential stuffing)           (token)
    GET  /v1/dead-letters           rejected and late input, with reasons           (token)
    GET  /queue, /ops               pages for support agents and platform ops      (token)
    GET  /metrics, /healthz, /readyz

`build_queue_app` returns the app; a runner adds its own routes (the embedded service: ingest)
and background tasks to it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from signals.exceptions import ConfigurationError
from streams.queue import pages, webhooks
from streams.queue.feed import QueueFeed
from streams.queue.store import QueueError, QueueStore
from streams.settings import Settings

FEED: web.AppKey[QueueFeed] = web.AppKey("feed", QueueFeed)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
TOKEN_COOKIE = "frustration_queue_token"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to expose ingest or the queue beyond this machine without credentials."""
    if is_loopback(settings.host):
        return
    secrets = {"FRUSTRATION_API_KEY": settings.api_key}
    secrets["FRUSTRATION_QUEUE_TOKEN"] = settings.queue_token
    missing = [name for name, value in secrets.items() if value is None]
    if missing:
        raise ConfigurationError(
            f"refusing to bind to {settings.host}: set {' and '.join(missing)} first "
            "(ingest and the support queue would be open to the network)"
        )


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def secret_ok(given: str | None, expected: Any) -> bool:
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given, expected.get_secret_value())


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


# -- support queue API ----------------------------------------------------------------------------
@web.middleware
async def queue_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The queue API and pages hold user ids: bearer token (or the page cookie) when one is set."""
    path = request.path
    guarded = path.startswith(
        ("/v1/flags", "/v1/incidents", "/v1/alerts", "/v1/dead-letters", "/queue", "/ops")
    )
    expected = request.app[SETTINGS].queue_token
    if not guarded or expected is None:
        return await handler(request)
    given = bearer(request) or request.cookies.get(TOKEN_COOKIE) or request.query.get("token")
    if not secret_ok(given, expected):
        if path.startswith("/v1/"):
            return json_response({"error": "missing or wrong bearer token"}, 401)
        return web.Response(status=401, text="Open this page with ?token=<queue token>.")
    response = await handler(request)
    if request.query.get("token") and given:
        response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="Strict")
    return response


def _store(request: web.Request) -> QueueStore:
    return request.app[FEED].store


async def list_flags(request: web.Request) -> web.Response:
    try:
        limit = min(1000, int(request.query.get("limit", "200")))
        flags = _store(request).list_flags(
            status=request.query.get("status"),  # type: ignore[arg-type]
            min_severity=request.query.get("min_severity", "low"),
            limit=limit,
            grouped=request.query.get("grouped", "") in ("1", "true", "yes"),
            incident_id=request.query.get("incident"),
        )
    except (QueueError, ValueError) as exc:
        return json_response({"error": str(exc)}, 400)
    return json_response({"flags": flags, "count": len(flags)})


async def get_flag(request: web.Request) -> web.Response:
    try:
        return json_response(_store(request).get_flag(request.match_info["flag_id"]))
    except QueueError as exc:
        return json_response({"error": str(exc)}, 404)


async def _bodyjson_response(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        data = orjson.loads(await request.read() or b"{}")
        if not isinstance(data, dict):
            raise QueueError("body must be a JSON object")
        return data
    return dict(await request.post())


async def _queue_action(
    request: web.Request,
    action: Callable[[QueueStore, str, dict[str, Any]], dict[str, Any]],
    key: str = "flag_id",
) -> web.StreamResponse:
    """Claim or resolve (a flag, or an incident with `key` "incident_id"): JSON in and out for
    the API, a form post and a redirect for the page."""
    from_page = request.content_type != "application/json"
    try:
        data = await _bodyjson_response(request)
        result = action(_store(request), request.match_info[key], data)
    except (QueueError, orjson.JSONDecodeError) as exc:
        if from_page:
            raise web.HTTPSeeOther(f"/queue?error={exc}") from None
        missing = str(exc).startswith(("no flag", "no incident"))
        return json_response({"error": str(exc)}, 404 if missing else 409)
    if from_page:
        raise web.HTTPSeeOther("/queue")
    return json_response(result)


async def claim_flag(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request, lambda store, flag_id, data: store.claim(flag_id, str(data.get("agent", "")))
    )


async def resolve_flag(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request,
        lambda store, flag_id, data: store.resolve(
            flag_id, str(data.get("outcome", "")), str(data.get("note", ""))
        ),
    )


async def list_incidents(request: web.Request) -> web.Response:
    try:
        limit = min(1000, int(request.query.get("limit", "100")))
        incidents = _store(request).list_incidents(
            status=request.query.get("status"),  # type: ignore[arg-type]
            state=request.query.get("state"),
            limit=limit,
        )
    except (QueueError, ValueError) as exc:
        return json_response({"error": str(exc)}, 400)
    return json_response({"incidents": incidents, "count": len(incidents)})


async def get_incident(request: web.Request) -> web.Response:
    try:
        return json_response(_store(request).get_incident(request.match_info["incident_id"]))
    except QueueError as exc:
        return json_response({"error": str(exc)}, 404)


async def claim_incident(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request,
        lambda store, incident_id, data: store.claim_incident(
            incident_id, str(data.get("agent", ""))
        ),
        key="incident_id",
    )


async def resolve_incident(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request,
        lambda store, incident_id, data: store.resolve_incident(
            incident_id, str(data.get("outcome", "")), str(data.get("note", ""))
        ),
        key="incident_id",
    )


async def list_alerts(request: web.Request) -> web.Response:
    return json_response({"alerts": _store(request).list_alerts()})


async def list_dead_letters(request: web.Request) -> web.Response:
    return json_response({"dead_letters": _store(request).list_dead_letters()})


# -- pages, health, metrics -----------------------------------------------------------------------
async def queue_page(request: web.Request) -> web.Response:
    feed = request.app[FEED]
    html = pages.queue_page(feed.store, error=request.query.get("error"))
    return web.Response(text=html, content_type="text/html")


async def ops_page(request: web.Request) -> web.Response:
    html = pages.ops_page(request.app[FEED])
    return web.Response(text=html, content_type="text/html")


async def metrics_endpoint(request: web.Request) -> web.Response:
    feed = request.app[FEED]
    feed.refresh_gauges()
    body = generate_latest(feed.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    feed = request.app[FEED]
    try:
        feed.store.db.execute("SELECT 1").fetchone()
    except Exception as exc:  # the queue database is gone: not ready
        return json_response({"status": "not ready", "error": str(exc)}, 503)
    return json_response(
        {"status": "ready", "tracked_users": len(feed.engine.users) if feed.engine else 0}
    )


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/queue")


# -- the app -------------------------------------------------------------------------------------
def build_queue_app(settings: Settings, feed: QueueFeed) -> web.Application:
    """The queue's routes, pages, /metrics and health over `feed` (its store and metrics)."""
    check_bind(settings)
    app = web.Application(middlewares=[queue_auth], client_max_size=settings.max_body_bytes + 1)
    app[FEED] = feed
    app[SETTINGS] = settings
    app.router.add_get("/v1/flags", list_flags)
    app.router.add_get("/v1/flags/{flag_id}", get_flag)
    app.router.add_post("/v1/flags/{flag_id}/claim", claim_flag)
    app.router.add_post("/v1/flags/{flag_id}/resolve", resolve_flag)
    app.router.add_get("/v1/incidents", list_incidents)
    app.router.add_get("/v1/incidents/{incident_id}", get_incident)
    app.router.add_post("/v1/incidents/{incident_id}/claim", claim_incident)
    app.router.add_post("/v1/incidents/{incident_id}/resolve", resolve_incident)
    app.router.add_get("/v1/alerts", list_alerts)
    app.router.add_get("/v1/dead-letters", list_dead_letters)
    app.router.add_get("/queue", queue_page)
    app.router.add_get("/ops", ops_page)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    webhooks.run_with_app(app, feed.webhooks)
    return app


def run_app(app: web.Application, settings: Settings, title: str, extra: str = "") -> None:
    """Print where the pages are, then serve until SIGINT/SIGTERM (`serve` and `queue-sink`)."""
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"{title}:\n  support queue  {base}/queue\n  operations     {base}/ops\n"
        f"  metrics        {base}/metrics{extra.format(base=base)}",
        flush=True,
    )
    # No access log: request lines carry query strings (tokens, keys), and the queue's paths.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        shutdown_timeout=10,
        access_log=None,
    )
