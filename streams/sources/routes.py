"""The HTTP routes of the source adapters, added to the embedded service's app.

Routes (prefix ``/segment`` for the Segment HTTP Tracking API, ``/posthog`` for PostHog capture)::

    POST /segment/v1/batch                    Segment / RudderStack / Jitsu batch   (write key)
    POST /segment/v1/{track,page,screen,identify,group,alias}   one message           (write key)
    POST /segment/v1/{t,p,s,i,g,a,b}          analytics.js's short paths (b: batch)
    POST /posthog/batch/, /posthog/capture/, /posthog/e/, /posthog/i/v0/e/,
         /posthog/track/, /posthog/engage/    PostHog capture (gzip too)          (project token)
    POST /posthog/flags/, /posthog/decide/    answers "no feature flags" (posthog-js asks)
    GET  /posthog/array/{token}/config        answers "no remote config" (posthog-js asks)

Each authenticates (the write key as Basic-auth user name, the PostHog project token in the body:
both must equal the ingest key `api_key`), converts the body with the mapping file and hands the
events to `accept`, the same function `POST /v1/events` uses for validated events, so validation,
dead letters, metrics and the detector path are the same. The answer is 200 (the SDKs treat
anything else as a failure and retry: a batch with rejected items is not retried, the rejected
items are dead-lettered and counted); 400 only for a body that cannot be read at all, 401 for a
wrong key, 413 for a body over `max_body_bytes` (compressed or not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from signals.wire import dead_letter_record
from streams.embedded.ingest import DecodedBatch
from streams.embedded.runner import IngestCounts
from streams.metrics import FrustrationMetrics
from streams.queue.api import json_response, secret_ok
from streams.settings import Settings
from streams.sources import posthog, segment
from streams.sources.common import BadBody, Converted, inflate, load_json
from streams.sources.mapping import SourceMapping, load_mapping

#: Hands one request's validated events and dead letters over (wall time of receipt).
Accept = Callable[[DecodedBatch, float], IngestCounts]

SEGMENT_PREFIX = "/segment"
POSTHOG_PREFIX = "/posthog"
#: What posthog-js asks the server before it starts autocapture: autocapture allowed (it stays
#: off until a config says so), gzip bodies, the $elements list (not the chain string), and
#: nothing else switched on (no recordings, surveys or heatmaps are collected here).
POSTHOG_REMOTE_CONFIG: dict[str, Any] = {
    "autocapture_opt_out": False,
    "supportedCompression": ["gzip", "gzip-js"],
    "elementsChainAsString": False,
    "sessionRecording": False,
    "heatmaps": False,
    "surveys": False,
    "capturePerformance": False,
    "autocaptureExceptions": False,
}
POSTHOG_CAPTURE_PATHS = ("/batch/", "/capture/", "/e/", "/i/v0/e/", "/track/", "/engage/")


class _TooLarge(Exception):
    pass


def _cors(request: web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if not origin:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "authorization, content-type, content-encoding",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


async def _read(request: web.Request, max_bytes: int) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > max_bytes:
            raise _TooLarge
    return bytes(body)


class SourceRoutes:
    """The handlers, over one service's settings, metrics, mapping and `accept`."""

    def __init__(
        self,
        settings: Settings,
        metrics: FrustrationMetrics,
        accept: Accept,
        mapping: SourceMapping | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.accept = accept
        self.mapping = load_mapping(settings.source_mapping_path) if mapping is None else mapping

    def _answer(self, request: web.Request, status: int, data: dict[str, Any]) -> web.Response:
        self.metrics.ingest_request(status)
        if "error" in data:
            # The Segment-API clients read an error's `code` and `message` (RudderStack's fails
            # with a KeyError without them).
            data = {**data, "code": status, "message": data["error"]}
        return json_response(data, status, _cors(request))

    def _bad_body(
        self, request: web.Request, source: str, raw: bytes, exc: BadBody
    ) -> web.Response:
        # Counted and dead-lettered like a /v1/events body that is not JSON.
        self.accept(
            DecodedBatch(dead_letters=[dead_letter_record(raw, exc.error, f"{source} body")]),
            time.time(),
        )
        self.metrics.source_events_seen(source, "invalid", 1)
        return self._answer(request, 400, {"error": str(exc)})

    def _hand_over(self, converted: Converted, received_at: float) -> dict[str, Any]:
        not_after_ms = int((received_at + self.settings.max_clock_skew_s) * 1000)
        batch = converted.to_batch(self.settings.max_event_bytes, not_after_ms)
        counts = self.accept(batch, received_at)
        source = converted.source
        self.metrics.source_events_seen(source, "mapped", len(batch.events))
        self.metrics.source_events_seen(source, "invalid", len(batch.rejected))
        self.metrics.source_events_seen(source, "unmapped", converted.unmapped)
        self.metrics.source_events_seen(source, "corroborating", converted.corroborating)
        answer: dict[str, Any] = {
            "accepted": len(batch.events) - counts.late,
            "rejected": batch.rejected,
            "unmapped": converted.unmapped,
        }
        if counts.late:
            answer["late"] = counts.late  # valid, but older than the client's own allowance
        return answer

    # -- Segment ----------------------------------------------------------------------------------
    async def segment(self, request: web.Request) -> web.Response:
        settings = self.settings
        header_key = segment.write_key(request.headers.get("Authorization"))
        header_ok = header_key is not None and secret_ok(header_key, settings.api_key)
        if header_key is not None and not header_ok:
            return self._answer(request, 401, {"error": "missing or wrong write key"})
        call = segment.SHORT_PATHS.get(request.match_info.get("call", ""), None)
        try:
            raw = await _read(request, settings.max_body_bytes)
        except _TooLarge:
            return self._answer(request, 413, {"error": "body too large"})
        try:
            body = load_json(
                inflate(raw, request.headers.get("Content-Encoding"), settings.max_body_bytes)
            )
        except BadBody as exc:
            if not (header_ok or settings.api_key is None):
                return self._answer(request, 401, {"error": "missing or wrong write key"})
            return self._bad_body(request, "segment", raw, exc)
        # analytics.js sends the write key in the body (text/plain, no preflight), not a header.
        given = header_key if header_key is not None else segment.body_write_key(body)
        if not secret_ok(given, settings.api_key):
            return self._answer(request, 401, {"error": "missing or wrong write key"})
        try:
            converted = segment.convert(body, self.mapping, call)
        except BadBody as exc:
            return self._bad_body(request, "segment", raw, exc)
        result = self._hand_over(converted, time.time())
        return self._answer(request, 200, {"success": True, **result})

    # -- PostHog ----------------------------------------------------------------------------------
    async def posthog(self, request: web.Request) -> web.Response:
        settings = self.settings
        query_token = request.query.get("token") or request.query.get("api_key")
        try:
            raw = await _read(request, settings.max_body_bytes)
        except _TooLarge:
            return self._answer(request, 413, {"error": "body too large"})
        try:
            body = inflate(raw, request.headers.get("Content-Encoding"), settings.max_body_bytes)
            events, token = posthog.events_of(posthog.decode(body, request.content_type))
        except BadBody as exc:
            # Only a caller holding the key (here: in the query) may fill the dead letters.
            if not secret_ok(query_token, settings.api_key):
                return self._answer(request, 401, {"error": "missing or wrong project token"})
            return self._bad_body(request, "posthog", raw, exc)
        token = token or query_token
        if not posthog.tokens_ok(events, token, lambda t: secret_ok(t, settings.api_key)):
            return self._answer(request, 401, {"error": "missing or wrong project token"})
        result = self._hand_over(posthog.convert(events, self.mapping), time.time())
        return self._answer(request, 200, {"status": 1, **result})

    async def posthog_flags(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "featureFlags": {},
                "featureFlagPayloads": {},
                "errorsWhileComputingFlags": False,
                **POSTHOG_REMOTE_CONFIG,
            },
            200,
            _cors(request),
        )

    async def posthog_config(self, request: web.Request) -> web.Response:
        return json_response(POSTHOG_REMOTE_CONFIG, 200, {"Access-Control-Allow-Origin": "*"})

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=_cors(request))


def add_source_routes(
    app: web.Application, settings: Settings, metrics: FrustrationMetrics, accept: Accept
) -> SourceRoutes:
    """Add the Segment and PostHog routes to `app` (the mapping file is read now)."""
    routes = SourceRoutes(settings, metrics, accept)
    router = app.router
    router.add_post(f"{SEGMENT_PREFIX}/v1/batch", routes.segment)
    router.add_route("OPTIONS", f"{SEGMENT_PREFIX}/v1/batch", routes.options)
    calls = "|".join(c for c in segment.SHORT_PATHS if c != "batch")
    router.add_post(f"{SEGMENT_PREFIX}/v1/{{call:{calls}}}", routes.segment)
    router.add_route("OPTIONS", f"{SEGMENT_PREFIX}/v1/{{call:{calls}}}", routes.options)
    for path in POSTHOG_CAPTURE_PATHS:
        for variant in (path, path.rstrip("/")):
            router.add_post(POSTHOG_PREFIX + variant, routes.posthog)
            router.add_route("OPTIONS", POSTHOG_PREFIX + variant, routes.options)
    for path in ("/flags/", "/decide/"):
        for variant in (path, path.rstrip("/")):
            router.add_post(POSTHOG_PREFIX + variant, routes.posthog_flags)
            router.add_get(POSTHOG_PREFIX + variant, routes.posthog_flags)
            router.add_route("OPTIONS", POSTHOG_PREFIX + variant, routes.options)
    router.add_get(POSTHOG_PREFIX + "/array/{token}/config", routes.posthog_config)
    return routes
