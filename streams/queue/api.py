"""The support queue's web face, served by both runners (`frustration serve`, `frustration
queue-sink`): its JSON API, its pages, and the service basics (/metrics, health).

Routes::

    GET  /v1/flags                  the support queue (?status=&min_severity=&kind=&q=&limit=)
                                    (individual flags; &grouped=1 all, &incident=ID one incident's)
    GET  /v1/flags/{id}             one flag with its evidence and history          (token)
    POST /v1/flags/{id}/claim       {"agent": "..."}                                (token)
    POST /v1/flags/{id}/resolve     {"outcome": "...", "note": "..."}               (token)
    POST /v1/flags/{id}/unclaim     give a claimed case back to the queue           (token)
    POST /v1/flags/{id}/reassign    {"to": "..."}: hand a claimed case over         (token)
    POST /v1/flags/{id}/notes       {"note": "..."}                                 (token)
    GET  /v1/incidents              incidents as queue items (?status=&state=)      (token)
    GET  /v1/incidents/{id}         one incident, its history and listed clients    (token)
    POST /v1/incidents/{id}/claim   {"agent": "..."}                                (token)
    POST /v1/incidents/{id}/resolve {"outcome": "...", "note": "..."}: its grouped
                                    open flags are resolved with it                 (token)
    POST /v1/incidents/{id}/updates {"note": "..."}: a proactive update was sent    (token)
    GET  /v1/alerts                 security alerts (credential stuffing)           (token)
    GET  /v1/dead-letters           rejected and late input, with reasons           (token)
    GET  /queue, /ops               pages for support agents and platform ops      (token)
    GET  /queue/flags/{id}          a case page; /queue/incidents/{id} an incident  (token)
    GET  /queue/list                the inbox's list alone (its live update)        (token)

The agent is who the deployment says (streams.queue.security): a trusted proxy's header, a
per-agent token, or with the shared token (or none, on loopback) the name typed in the form;
with such an identity, the API's `agent` field is ignored. Page forms need the page's CSRF token.
    GET  /metrics, /healthz, /readyz

`build_queue_app` returns the app; a runner adds its own routes (the embedded service: ingest)
and background tasks to it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from signals.exceptions import ConfigurationError
from streams.queue import pages, webhooks
from streams.queue.feed import QueueFeed
from streams.queue.security import (
    Identity,
    clean_agent_name,
    cross_site_reason,
    csrf_token,
    form_token,
    from_trusted_proxy,
    same_secret,
    security_headers,
)
from streams.queue.store import HeldError, QueueError, QueueStore
from streams.queue.wording import load_messages
from streams.settings import Settings

FEED: web.AppKey[QueueFeed] = web.AppKey("feed", QueueFeed)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
MESSAGES: web.AppKey[dict[str, str]] = web.AppKey("messages", dict)
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
    """Refuse empty secrets (an empty `?token=` would open the queue), and refuse to expose
    ingest or the queue beyond this machine without credentials."""
    secrets = {"FRUSTRATION_API_KEY": settings.api_key}
    secrets["FRUSTRATION_QUEUE_TOKEN"] = settings.queue_token
    empty = [n for n, v in secrets.items() if v is not None and not v.get_secret_value().strip()]
    if empty:
        raise ConfigurationError(
            f"{' and '.join(empty)} is set but empty: give it a long random value, or unset it"
        )
    if is_loopback(settings.host):
        return
    if settings.trusted_proxies:  # the proxy signs agents in
        secrets.pop("FRUSTRATION_QUEUE_TOKEN")
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
    """`given` matches the secret `expected` (always, when no secret is set); any input, a
    non-ASCII one included, gets an answer rather than an exception."""
    if expected is None:
        return True
    return same_secret(given, expected.get_secret_value())


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


# -- support queue API ----------------------------------------------------------------------------
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)
GUARDED = ("/v1/flags", "/v1/incidents", "/v1/alerts", "/v1/dead-letters", "/queue", "/ops")
FLASH_COOKIE = "frustration_flash"
AGENT_COOKIE = "frustration_agent"


def _unauthorized(request: web.Request, why: str) -> web.Response:
    if request.path.startswith("/v1/"):
        return json_response({"error": why}, 401)
    return web.Response(status=401, text="Open this page with ?token=<queue token>.")


def _identify(request: web.Request) -> Identity | str:
    """Who is asking (see streams.queue.security), or why they may not."""
    settings = request.app[SETTINGS]
    store = request.app[FEED].store
    if from_trusted_proxy(request.remote, settings.trusted_proxies):
        header = request.headers.get(settings.proxy_user_header)
        if header is not None:
            name = clean_agent_name(header)
            return Identity("proxy", name) if name else "unusable agent header from the proxy"
    given = bearer(request) or request.cookies.get(TOKEN_COOKIE) or request.query.get("token")
    expected = settings.queue_token
    agents = store.has_agents()
    if given:
        agent = store.agent_for_token(given) if agents else None
        if agent is not None:
            return Identity("agent_token", agent)
        if expected is not None and same_secret(given, expected.get_secret_value()):
            return Identity("shared_token")
        if expected is not None or agents:
            return "missing or wrong bearer token"
    if expected is None and not agents and not settings.trusted_proxies:
        return Identity("open")  # loopback only (check_bind)
    return "missing or wrong bearer token"


@web.middleware
async def queue_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The queue API and pages hold user ids: only agents the deployment knows (see
    streams.queue.security); page forms that change something need the page's CSRF token."""
    if not request.path.startswith(GUARDED):
        return await handler(request)
    who = _identify(request)
    if isinstance(who, str):
        return _unauthorized(request, who)
    request[IDENTITY] = who
    if request.method == "POST":
        refused = cross_site_reason(request)
        if refused is None and request.content_type != "application/json":
            data = dict(await request.post())
            expected = csrf_token(_csrf_key(request), who)
            if not same_secret(form_token(data), expected):
                refused = "the form is out of date or did not come from this site's page"
        if refused is not None:
            if request.path.startswith("/v1/") and request.content_type == "application/json":
                return json_response({"error": f"refused: {refused}"}, 403)
            return web.Response(
                status=403,
                text=f"Refused: {refused}. Reload the support queue page and try again.",
            )
    response = await handler(request)
    given = request.query.get("token")
    if given and who.via in ("agent_token", "shared_token"):
        response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="Strict")
    return response


def _csrf_key(request: web.Request) -> bytes:
    feed = request.app[FEED]
    return feed.store.secret("csrf")


def _store(request: web.Request) -> QueueStore:
    return request.app[FEED].store


def _limit(request: web.Request, default: int) -> int:
    """`limit` from the query: a whole number from 0, at most 1000."""
    text = request.query.get("limit", str(default))
    # ASCII digits only: int() would also take "１", " 5", "1_0" and 4000-digit numbers.
    if re.fullmatch(r"-?[0-9]{1,12}", text) is None:
        raise QueueError(f"limit must be a whole number, not {text[:20]!r}")
    limit = int(text)
    if limit < 0:
        raise QueueError("limit must be 0 or more")
    return min(1000, limit)


async def list_flags(request: web.Request) -> web.Response:
    try:
        flags = _store(request).list_flags(
            status=request.query.get("status"),  # type: ignore[arg-type]
            min_severity=request.query.get("min_severity", "low"),
            limit=_limit(request, 200),
            grouped=request.query.get("grouped", "") in ("1", "true", "yes"),
            incident_id=request.query.get("incident"),
            kind=request.query.get("kind") or None,
            user_search=request.query.get("q") or None,
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


def _page_words(exc: QueueError, me: str | None) -> str:
    """A queue error as an agent reads it (the API keeps the exact message)."""
    text = str(exc)
    if isinstance(exc, HeldError):
        if me is not None and exc.holder == me:
            return "You are already working on this case."
        return f"{exc.holder} is already working on this case."
    if text.startswith(("no flag", "no incident")):
        return "This case is no longer in the queue."
    if "already resolved" in text or "is resolved" in text:
        return "This case was already resolved."
    if "is open, not claimed" in text:
        return "Nobody holds this case any more."
    if text.startswith("unknown outcome"):
        return "Choose how the case ended before resolving it."
    if text == "claim needs the agent's name":
        return "Type your name to claim a case."
    return text[:1].upper() + text[1:] + "."


def _back(data: dict[str, Any]) -> str:
    """Where a page form returns to: one of the queue's own pages only."""
    back = data.get("back")
    if (
        isinstance(back, str)
        and back.startswith("/queue")
        and not any(bad in back for bad in ("//", "\\", "/.."))
    ):
        return back
    return "/queue"


def _agent_for(request: web.Request, data: dict[str, Any]) -> str | None:
    """The acting agent: who the deployment says, else the name typed in the form (or
    remembered from the last one)."""
    me = request[IDENTITY].agent
    if me is not None:
        return me
    typed = clean_agent_name(str(data.get("agent", "")))
    return typed or request.cookies.get(AGENT_COOKIE) or None


Action = Callable[[QueueStore, str, dict[str, Any], str | None], dict[str, Any]]


async def _queue_action(
    request: web.Request, action: Action, key: str = "flag_id"
) -> web.StreamResponse:
    """An agent's action on a flag (or an incident, `key` "incident_id"): JSON in and out for
    the API; a form post, a redirect back and the outcome shown once on the page."""
    from_page = request.content_type != "application/json"
    data: dict[str, Any] = {}
    try:
        data = await _bodyjson_response(request)
        agent = _agent_for(request, data)
        result = action(_store(request), request.match_info[key], data, agent)
    except (QueueError, orjson.JSONDecodeError) as exc:
        if from_page:
            me = request[IDENTITY].agent or request.cookies.get(AGENT_COOKIE)
            words = _page_words(exc, me) if isinstance(exc, QueueError) else "Bad request."
            return _redirect(_back(data), flash=words)
        missing = str(exc).startswith(("no flag", "no incident"))
        return json_response({"error": str(exc)}, 404 if missing else 409)
    if from_page:
        response = _redirect(_back(data))
        if request[IDENTITY].agent is None and data.get("agent"):
            name = clean_agent_name(str(data["agent"]))
            if name:  # remembered for "mine" and the next claim
                response.set_cookie(AGENT_COOKIE, name, httponly=True, samesite="Strict")
        return response
    return json_response(result)


def _redirect(location: str, flash: str | None = None) -> web.Response:
    response = web.Response(status=303, headers={"Location": location})
    if flash is not None:
        response.set_cookie(
            FLASH_COOKIE, quote(flash), max_age=60, httponly=True, samesite="Strict"
        )
    return response


def _field(data: dict[str, Any], name: str) -> str:
    return str(data.get(name, ""))


def _claim_agent(request: web.Request, data: dict[str, Any]) -> str:
    """The claim's agent: the deployment's, else the typed name (required, as before)."""
    me = request[IDENTITY].agent
    return me if me is not None else _field(data, "agent")


async def claim_flag(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request, lambda store, fid, data, _: store.claim(fid, _claim_agent(request, data))
    )


async def resolve_flag(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request,
        lambda store, fid, data, agent: store.resolve(
            fid, _field(data, "outcome"), _field(data, "note"), agent
        ),
    )


async def unclaim_flag(request: web.Request) -> web.StreamResponse:
    return await _queue_action(request, lambda store, fid, _, agent: store.unclaim(fid, agent))


async def reassign_flag(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request, lambda store, fid, data, agent: store.reassign(fid, _field(data, "to"), agent)
    )


async def note_flag(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request, lambda store, fid, data, agent: store.add_note(fid, _field(data, "note"), agent)
    )


async def list_incidents(request: web.Request) -> web.Response:
    try:
        incidents = _store(request).list_incidents(
            status=request.query.get("status"),  # type: ignore[arg-type]
            state=request.query.get("state"),
            limit=_limit(request, 100),
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
        lambda store, iid, data, _: store.claim_incident(iid, _claim_agent(request, data)),
        key="incident_id",
    )


async def resolve_incident(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request,
        lambda store, iid, data, agent: store.resolve_incident(
            iid, _field(data, "outcome"), _field(data, "note"), agent
        ),
        key="incident_id",
    )


async def incident_update(request: web.Request) -> web.StreamResponse:
    return await _queue_action(
        request,
        lambda store, iid, data, agent: store.record_incident_update(
            iid, _field(data, "note"), agent
        ),
        key="incident_id",
    )


async def list_alerts(request: web.Request) -> web.Response:
    try:
        return json_response({"alerts": _store(request).list_alerts(_limit(request, 100))})
    except QueueError as exc:
        return json_response({"error": str(exc)}, 400)


async def list_dead_letters(request: web.Request) -> web.Response:
    try:
        limit = _limit(request, 100)
    except QueueError as exc:
        return json_response({"error": str(exc)}, 400)
    return json_response({"dead_letters": _store(request).list_dead_letters(limit)})


# -- pages, health, metrics -----------------------------------------------------------------------
def _page_context(request: web.Request) -> pages.PageContext:
    identity = request[IDENTITY]
    flash = request.cookies.get(FLASH_COOKIE)
    return pages.PageContext(
        identity=identity,
        csrf=csrf_token(_csrf_key(request), identity),
        me=identity.agent or request.cookies.get(AGENT_COOKIE),
        flash=unquote(flash)[:300] if flash else None,
        refresh_s=request.app[SETTINGS].queue_refresh_s,
        messages=request.app[MESSAGES],
        update_interval_s=request.app[SETTINGS].incident_update_interval_s,
    )


def _html(text: str, context: pages.PageContext, status: int = 200) -> web.Response:
    response = web.Response(text=text, content_type="text/html", status=status)
    if context.flash is not None:  # shown once
        response.del_cookie(FLASH_COOKIE)
    return response


def _filters(request: web.Request) -> pages.Filters:
    return pages.Filters.from_query(request.query)


async def queue_page(request: web.Request) -> web.Response:
    context = _page_context(request)
    html = pages.queue_page(request.app[FEED].store, context, _filters(request))
    return _html(html, context)


async def queue_list(request: web.Request) -> web.Response:
    """The inbox's list alone, for the page's live update (the page's forms stay as typed)."""
    context = _page_context(request)
    html = pages.inbox_list(request.app[FEED].store, context, _filters(request))
    return web.Response(text=html, content_type="text/html")


async def flag_page(request: web.Request) -> web.Response:
    context = _page_context(request)
    try:
        html = pages.flag_page(request.app[FEED].store, context, request.match_info["flag_id"])
    except QueueError:
        return _html(pages.not_found(context, "case"), context, 404)
    return _html(html, context)


async def incident_page(request: web.Request) -> web.Response:
    context = _page_context(request)
    try:
        html = pages.incident_page(
            request.app[FEED].store, context, request.match_info["incident_id"]
        )
    except QueueError:
        return _html(pages.not_found(context, "incident"), context, 404)
    return _html(html, context)


async def ops_page(request: web.Request) -> web.Response:
    context = _page_context(request)
    return _html(pages.ops_page(request.app[FEED], context), context)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kinds = {"app.js": "application/javascript", "app.css": "text/css"}
    if name not in kinds:
        raise web.HTTPNotFound()
    text = resources.files("streams.queue").joinpath(f"static/{name}").read_text("utf-8")
    return web.Response(text=text, content_type=kinds[name])


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
    app = web.Application(
        middlewares=[security_headers, queue_auth], client_max_size=settings.max_body_bytes + 1
    )
    app[FEED] = feed
    app[SETTINGS] = settings
    app[MESSAGES] = load_messages(settings.messages_path)
    app.router.add_get("/v1/flags", list_flags)
    app.router.add_get("/v1/flags/{flag_id}", get_flag)
    app.router.add_post("/v1/flags/{flag_id}/claim", claim_flag)
    app.router.add_post("/v1/flags/{flag_id}/resolve", resolve_flag)
    app.router.add_post("/v1/flags/{flag_id}/unclaim", unclaim_flag)
    app.router.add_post("/v1/flags/{flag_id}/reassign", reassign_flag)
    app.router.add_post("/v1/flags/{flag_id}/notes", note_flag)
    app.router.add_get("/v1/incidents", list_incidents)
    app.router.add_get("/v1/incidents/{incident_id}", get_incident)
    app.router.add_post("/v1/incidents/{incident_id}/claim", claim_incident)
    app.router.add_post("/v1/incidents/{incident_id}/resolve", resolve_incident)
    app.router.add_post("/v1/incidents/{incident_id}/updates", incident_update)
    app.router.add_get("/v1/alerts", list_alerts)
    app.router.add_get("/v1/dead-letters", list_dead_letters)
    app.router.add_get("/queue", queue_page)
    app.router.add_get("/queue/list", queue_list)
    app.router.add_get("/queue/flags/{flag_id}", flag_page)
    app.router.add_get("/queue/incidents/{incident_id}", incident_page)
    app.router.add_get("/assets/{name}", asset)
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
        keepalive_timeout=settings.keepalive_timeout_s,
    )
