"""`frustration serve`: the embedded service over HTTP (aiohttp).

Routes of its own::

    POST /v1/events                 ingest: one event, a JSON array, or NDJSON      (API key)
    GET  /collector.js              the browser collector
    POST /segment/v1/..., /posthog/...   Segment / RudderStack / PostHog bodies (streams.sources)

and the support queue's (streams.queue.api: /v1/flags, /v1/incidents, /v1/alerts, /queue, /ops,
/metrics, /healthz, /readyz), over the embedded runner's queue feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from streams.embedded.ingest import DecodedBatch, decode_body_async
from streams.embedded.runner import EmbeddedRunner, IngestCounts
from streams.metrics import FrustrationMetrics
from streams.queue.api import (
    SETTINGS,
    bearer,
    build_queue_app,
    check_bind,
    is_loopback,
    json_response,
    secret_ok,
)
from streams.queue.store import QueueStore
from streams.settings import Settings
from streams.sources.routes import add_source_routes

log = logging.getLogger(__name__)


def json_dumps(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


RUNNER: web.AppKey[EmbeddedRunner] = web.AppKey("runner", EmbeddedRunner)


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """The collector's sites (`cors_origins`); with none configured, pages on this machine."""
    if allowed:
        return origin.rstrip("/") in {o.rstrip("/") for o in allowed}
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and is_loopback((parts.hostname or "").strip("[]"))


def _cors_headers(request: web.Request) -> dict[str, str]:
    # sendBeacon sends credentials, so '*' is not enough: name the page's origin, and only for
    # the sites configured (never an echo of whatever a page claims to be).
    origin = request.headers.get("Origin")
    if not origin or not origin_allowed(origin, request.app[SETTINGS].cors_origins):
        return {"Vary": "Origin"} if origin else {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "authorization, content-type, x-api-key",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


# -- ingest ---------------------------------------------------------------------------------------
async def post_events(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    settings = request.app[SETTINGS]
    cors = _cors_headers(request)

    def answer(status: int, data: dict[str, Any]) -> web.Response:
        runner.metrics.ingest_request(status)
        return json_response(data, status, cors)

    key = bearer(request) or request.headers.get("X-Api-Key") or request.query.get("api_key")
    if not secret_ok(key, settings.api_key):
        return answer(401, {"error": "missing or wrong API key"})
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return answer(413, {"error": f"body larger than {settings.max_body_bytes} bytes"})
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > settings.max_body_bytes:
            return answer(413, {"error": f"body larger than {settings.max_body_bytes} bytes"})
    received_at = time.time()
    not_after_ms = int((received_at + settings.max_clock_skew_s) * 1000)
    raw_body = bytes(body)
    del body
    batch = await decode_body_async(
        raw_body, settings.max_event_bytes, not_after_ms, settings.max_items_listed
    )
    # Journaled (durably) before the answer: a 202 is a promise that survives a crash.
    counts = accept_events(runner, batch, received_at)
    result: dict[str, Any] = {
        "accepted": len(batch.events) - counts.late,
        "rejected": batch.rejected,
    }
    if counts.late:
        result["late"] = counts.late  # valid, but older than the client's own allowance
    if batch.rejected_count > len(batch.rejected):
        result["rejected_total"] = batch.rejected_count
        result["rejected_by_reason"] = dict(batch.rejected_by_reason)
    if not batch.events:
        result["error"] = "no valid event in the body"
    # Never more bytes than the request (beyond a small floor): shorten the list if need be.
    limit = max(len(raw_body), 1024)
    while batch.rejected and len(json_dumps(result)) > limit:
        batch.rejected.pop()
        result["rejected_total"] = batch.rejected_count
        result["rejected_by_reason"] = dict(batch.rejected_by_reason)
    return answer(400 if not batch.events else 202, result)


def accept_events(runner: EmbeddedRunner, batch: DecodedBatch, received_at: float) -> IngestCounts:
    """One request's validated events and dead letters into the runner: every ingest route
    (ours, Segment's, PostHog's) hands over here. The events are journaled before this returns."""
    runner.feed.record_invalid(batch.dead_letters, batch.rejected_by_reason or None)
    return runner.ingest(batch.events, received_at, batch.raw)


async def options_events(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=_cors_headers(request))


# -- the browser collector -----------------------------------------------------------------------
async def collector_js(request: web.Request) -> web.Response:
    text = resources.files("streams.embedded").joinpath("static/collector.js").read_text()
    return web.Response(
        text=text,
        content_type="application/javascript",
        headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"},
    )


# -- the app -------------------------------------------------------------------------------------
async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    runner = app[RUNNER]

    async def loop() -> None:
        interval = runner.settings.release_interval_s
        last_tick = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                if time.monotonic() - last_tick >= 1.0:
                    last_tick = time.monotonic()
                    runner.tick()  # advance, checkpoint when due, gauges
                else:
                    runner.advance()  # quiet clients' time moves on: flags within a second
            except Exception:  # keep the service up; the error is logged and counted by /readyz
                log.exception("housekeeping failed")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Everything accepted was pushed into the engine synchronously; keep it for the next start.
    runner.close()
    runner.store.close()


def build_app(settings: Settings, metrics: FrustrationMetrics | None = None) -> web.Application:
    """The service's web app: the support queue's, with ingest and the embedded runner."""
    check_bind(settings)  # before anything is created on disk
    runner = EmbeddedRunner(settings, QueueStore(settings.db_path), metrics)
    app = build_queue_app(settings, runner.feed)
    app[RUNNER] = runner
    app.cleanup_ctx.append(_housekeeping)
    app.router.add_post("/v1/events", post_events)
    app.router.add_route("OPTIONS", "/v1/events", options_events)
    app.router.add_get("/collector.js", collector_js)
    add_source_routes(app, settings, runner.metrics, lambda b, at: accept_events(runner, b, at))
    return app
