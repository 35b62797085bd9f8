"""Signed webhooks out: a durable outbox in the queue's SQLite database and the delivery loop.

**Outbox.** `QueueStore.on_change` is `Outbox.enqueue`: every queue change a webhook can announce
(flag.opened, flag.escalated, flag.resolved, incident.opened, incident.updated, incident.closed,
security_alert.raised) adds one row per subscribed endpoint *in the transaction of the change*,
so a change is never committed without its message, nor a message without its change. Both
runners write the queue through the same store (the embedded service, the Kafka queue sink), so
both deliver.

**Delivery.** The loop (`WebhookDelivery`, started with the queue's web app) posts due messages,
at most `webhook_concurrency` at once and only the oldest pending message per (endpoint, client):
a client's messages arrive in the order they were written (a flag's opened before its resolved).
A 2xx answer delivers; anything else (status, timeout, refused connection) is retried after
``min(webhook_retry_max_delay_s, webhook_retry_base_s * 2 ** (attempt - 1))`` seconds, scaled by a
random factor ``1 ± webhook_retry_jitter``. With the defaults: 5 s, 10 s, 20 s, 40 s, 80 s,
160 s, 320 s, 640 s, 1280 s, 2560 s, then hourly, 20 attempts over about 10.4 hours, so a
receiver down for an hour (or ten) loses nothing. After the last attempt the message is
dead-lettered (state ``dead``): shown on /ops, counted, and ``frustration webhooks replay
--since ...`` puts it (and delivered ones, for a receiver that lost data) back in line, with the
same ``webhook-id`` so a receiver can drop what it already has.

**Signing** follows Standard Webhooks: headers ``webhook-id`` (``msg_...``, the same on every
attempt), ``webhook-timestamp`` (epoch seconds of the attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body`` with the base64 key of the endpoint's
``whsec_`` secret). The body (shape ``standard``) is ``{"type", "timestamp", "data"}`` with the
public flag / incident / alert JSON as data; ``zendesk`` and ``slack`` shapes are in
`streams.queue.helpdesk`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import random
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from streams.metrics import FrustrationMetrics
from streams.queue import helpdesk
from streams.queue.store import QueueStore
from streams.queue.wording import load_messages
from streams.settings import Settings, WebhookEndpoint

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id           TEXT NOT NULL,
    endpoint         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    order_key        TEXT NOT NULL,
    body             BLOB NOT NULL,
    created_at       REAL NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_at          REAL NOT NULL,
    last_attempt_at  REAL,
    last_error       TEXT,
    delivered_at     REAL,
    UNIQUE (endpoint, msg_id)
);
CREATE INDEX IF NOT EXISTS webhook_outbox_heads
    ON webhook_outbox (state, endpoint, order_key, seq);
CREATE INDEX IF NOT EXISTS webhook_outbox_created ON webhook_outbox (created_at);
"""

USER_AGENT = "frustration-signals-webhooks/1"


# -- Standard Webhooks signing ---------------------------------------------------------------------
def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256(id.timestamp.body)>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def retry_delay_s(attempts: int, settings: Settings, rand: Callable[[], float]) -> float:
    """Seconds before the next attempt after `attempts` failed ones (exponential, capped,
    jittered by 1 ± `webhook_retry_jitter`)."""
    base = min(
        settings.webhook_retry_max_delay_s,
        settings.webhook_retry_base_s * 2.0 ** min(attempts - 1, 60),
    )
    return base * (1.0 + settings.webhook_retry_jitter * (2.0 * rand() - 1.0))


def retry_schedule_s(settings: Settings) -> list[float]:
    """The retry delays without jitter, one per retry (what the README documents)."""
    return [
        min(settings.webhook_retry_max_delay_s, settings.webhook_retry_base_s * 2.0 ** (n - 1))
        for n in range(1, settings.webhook_max_attempts)
    ]


@dataclass(frozen=True, slots=True)
class Message:
    """One outbox row (one event for one endpoint)."""

    seq: int
    msg_id: str
    endpoint: str
    event_type: str
    order_key: str
    body: bytes
    created_at: float
    attempts: int

    @classmethod
    def of(cls, row: sqlite3.Row) -> Message:
        return cls(
            row["seq"],
            row["msg_id"],
            row["endpoint"],
            row["event_type"],
            row["order_key"],
            bytes(row["body"]),
            row["created_at"],
            row["attempts"],
        )


def request_of(
    endpoint: WebhookEndpoint,
    message: Message,
    now: float,
    messages: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body (in the endpoint's shape) and the signed headers of one attempt."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    body = message.body
    if endpoint.shape != "standard":
        data = orjson.loads(message.body)["data"]
        if endpoint.shape == "zendesk":
            shaped, key = helpdesk.zendesk_ticket(message.event_type, data, messages)
            headers["Idempotency-Key"] = key
        else:
            shaped = helpdesk.slack_message(message.event_type, data)
        body = orjson.dumps(shaped)
    if endpoint.authorization is not None:
        headers["Authorization"] = endpoint.authorization.get_secret_value()
    timestamp = int(now)
    headers["webhook-id"] = message.msg_id
    headers["webhook-timestamp"] = str(timestamp)
    headers["webhook-signature"] = sign(
        endpoint.secret.get_secret_value(), message.msg_id, timestamp, body
    )
    return body, headers


class Outbox:
    """The webhook outbox: rows in the queue database, written with the queue's changes."""

    def __init__(self, store: QueueStore, settings: Settings) -> None:
        self.db = store.db
        self.settings = settings
        self.endpoints = {e.name: e for e in settings.webhooks}
        self.db.executescript(_SCHEMA)
        if self.endpoints:  # without endpoints a queue change costs nothing extra
            store.on_change = self.enqueue

    def enqueue(self, event_type: str, order_key: str, data: dict[str, Any]) -> None:
        """One message per endpoint that wants `event_type` (called inside the store's
        transaction; see `QueueStore.on_change`)."""
        targets = [e for e in self.endpoints.values() if event_type in e.events]
        if event_type.startswith("flag.") and data.get("incident_id") is not None:
            # A client grouped under an incident: the incident's ticket stands for it.
            targets = [e for e in targets if e.shape != "zendesk"]
        if not targets:
            return
        now = time.time()
        msg_id = f"msg_{uuid.uuid4().hex}"
        stamp = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
        body = orjson.dumps({"type": event_type, "timestamp": stamp, "data": data})
        self.db.executemany(
            "INSERT INTO webhook_outbox (msg_id, endpoint, event_type, order_key, body, "
            "created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(msg_id, e.name, event_type, order_key, body, now, now) for e in targets],
        )

    # -- the delivery loop's side -----------------------------------------------------------------
    def due(self, now: float, limit: int, busy: set[tuple[str, str]]) -> list[Message]:
        """The oldest pending message of each (endpoint, client) whose time has come, skipping
        those in flight (`busy`) and endpoints no longer configured."""
        rows = self.db.execute(
            "SELECT o.* FROM webhook_outbox o JOIN (SELECT MIN(seq) AS seq FROM webhook_outbox "
            "WHERE state = 'pending' GROUP BY endpoint, order_key) h ON o.seq = h.seq "
            "WHERE o.next_at <= ? ORDER BY o.next_at, o.seq LIMIT ?",
            (now, limit + len(busy)),
        )
        out = []
        for row in rows:
            message = Message.of(row)
            if message.endpoint in self.endpoints and (
                (message.endpoint, message.order_key) not in busy
            ):
                out.append(message)
        return out[:limit]

    def delivered(self, message: Message, now: float) -> None:
        self.db.execute(
            "UPDATE webhook_outbox SET state = 'delivered', attempts = attempts + 1, "
            "last_attempt_at = ?, delivered_at = ?, last_error = NULL WHERE seq = ?",
            (now, now, message.seq),
        )

    def failed(self, message: Message, now: float, error: str, next_at: float | None) -> None:
        """A failed attempt: retry at `next_at`, or (None) dead-letter the message."""
        if next_at is None:
            self.db.execute(
                "UPDATE webhook_outbox SET state = 'dead', attempts = attempts + 1, "
                "last_attempt_at = ?, last_error = ? WHERE seq = ?",
                (now, error[:200], message.seq),
            )
        else:
            self.db.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, last_attempt_at = ?, "
                "last_error = ?, next_at = ? WHERE seq = ?",
                (now, error[:200], next_at, message.seq),
            )

    def purge(self, now: float) -> int:
        """Forget delivered messages older than `webhook_keep_delivered_s`."""
        cur = self.db.execute(
            "DELETE FROM webhook_outbox WHERE state = 'delivered' AND delivered_at < ?",
            (now - self.settings.webhook_keep_delivered_s,),
        )
        return cur.rowcount

    # -- operators -------------------------------------------------------------------------------
    def depth(self, now: float) -> tuple[int, float]:
        """Pending messages and the age of the oldest."""
        n, oldest = self.db.execute(
            "SELECT COUNT(*), MIN(created_at) FROM webhook_outbox WHERE state = 'pending'"
        ).fetchone()
        return n, (max(0.0, now - oldest) if oldest is not None else 0.0)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("pending", "delivered", "dead"), 0)
        for state, n in self.db.execute(
            "SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state"
        ):
            counts[state] = n
        return counts

    def dead(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT seq, msg_id, endpoint, event_type, created_at, attempts, last_attempt_at, "
            "last_error FROM webhook_outbox WHERE state = 'dead' ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [dict(r) for r in rows]

    def replay(self, since: float, *, endpoint: str | None = None, dead_only: bool = False) -> int:
        """Put messages written at or after `since` (dead ones, or also delivered ones) back in
        line for delivery, attempts reset, same webhook-id. Returns how many."""
        states = ("dead",) if dead_only else ("dead", "delivered")
        marks = ",".join("?" * len(states))
        sql = (
            "UPDATE webhook_outbox SET state = 'pending', attempts = 0, next_at = ?, "
            f"delivered_at = NULL WHERE created_at >= ? AND state IN ({marks})"
        )
        args: list[Any] = [time.time(), since, *states]
        if endpoint is not None:
            sql += " AND endpoint = ?"
            args.append(endpoint)
        return self.db.execute(sql, args).rowcount


class WebhookDelivery:
    """Posts due outbox messages; one instance per process, on the event loop's thread (the
    same thread that writes the store)."""

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        metrics: FrustrationMetrics,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.metrics = metrics
        self.rand = rand
        self.busy: set[tuple[str, str]] = set()
        self.messages = load_messages(settings.messages_path)  # the case page's templates

    async def deliver_due(self, session: aiohttp.ClientSession) -> int:
        """One round: post every due head (up to the concurrency); returns how many were tried."""
        messages = self.outbox.due(time.time(), self.settings.webhook_concurrency, self.busy)
        if messages:
            await asyncio.gather(*(self._attempt(session, m) for m in messages))
        return len(messages)

    async def _post(self, session: aiohttp.ClientSession, message: Message) -> str | None:
        """One attempt; None when the receiver answered 2xx, else what went wrong."""
        endpoint = self.outbox.endpoints[message.endpoint]
        try:
            body, headers = request_of(endpoint, message, time.time(), self.messages)
        except Exception as exc:  # a shape that cannot be built: a failed attempt, not a stall
            log.exception("webhook %s: cannot build the request", message.msg_id)
            return f"cannot build the request: {type(exc).__name__}"
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
            async with session.post(
                endpoint.url, data=body, headers=headers, timeout=timeout
            ) as answer:
                await answer.read()
                return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]

    async def _attempt(self, session: aiohttp.ClientSession, message: Message) -> None:
        key = (message.endpoint, message.order_key)
        self.busy.add(key)
        try:
            error = await self._post(session, message)
            now = time.time()
            if error is None:
                self.outbox.delivered(message, now)
                self.metrics.webhook_attempt("success")
                self.metrics.webhook_delivery_latency_seconds.observe(
                    max(0.0, now - message.created_at)
                )
                return
            self.metrics.webhook_attempt("failure")
            attempts = message.attempts + 1
            if attempts >= self.settings.webhook_max_attempts:
                self.outbox.failed(message, now, error, None)
                self.metrics.webhook_dead_letters.inc()
                log.warning(
                    "webhook %s to %s dead-lettered after %d attempts: %s",
                    message.msg_id,
                    message.endpoint,
                    attempts,
                    error,
                )
            else:
                delay = retry_delay_s(attempts, self.settings, self.rand)
                self.outbox.failed(message, now, error, now + delay)
        finally:
            self.busy.discard(key)

    def refresh_gauges(self, now: float | None = None) -> None:
        depth, age = self.outbox.depth(time.time() if now is None else now)
        self.metrics.set_webhook_outbox(depth, age)

    async def run(self) -> None:
        """Deliver until cancelled; quiet rounds wait `webhook_poll_interval_s`."""
        last_purge = 0.0
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    tried = await self.deliver_due(session)
                    now = time.time()
                    if now - last_purge > 3600:
                        self.outbox.purge(now)
                        last_purge = now
                except Exception:  # keep delivering; the message stays in the outbox
                    log.exception("webhook delivery round failed")
                    tried = 0
                if not tried:
                    await asyncio.sleep(self.settings.webhook_poll_interval_s)


def run_with_app(app: web.Application, delivery: WebhookDelivery | None) -> None:
    """Run `delivery` while `app` serves (nothing without endpoints). Stopped on shutdown, which
    aiohttp runs before the cleanup contexts, so the loop is gone before the store closes."""
    if delivery is None:
        return
    tasks: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        tasks.append(asyncio.create_task(delivery.run()))

    async def stop(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup.append(start)
    app.on_shutdown.append(stop)


def ops_html(outbox: Outbox | None, limit: int = 20) -> str:
    """The /ops section: outbox counts and dead-lettered deliveries."""
    if outbox is None or not outbox.endpoints:
        return ""
    counts = outbox.counts()
    rows = (
        "".join(
            f"<tr><td><code>{escape(d['msg_id'])}</code></td><td>{escape(d['endpoint'])}</td>"
            f"<td>{escape(d['event_type'])}</td>"
            f"<td>{datetime.fromtimestamp(d['created_at'], UTC):%Y-%m-%d %H:%M:%S}Z</td>"
            f"<td>{d['attempts']}</td><td>{escape(d['last_error'] or '')}</td></tr>"
            for d in outbox.dead(limit)
        )
        or "<tr><td colspan=6 class=muted>no dead-lettered delivery</td></tr>"
    )
    return (
        f"<h2 id=webhooks>Webhooks</h2><p>{counts['pending']} waiting, {counts['delivered']} "
        f"delivered, {counts['dead']} dead-lettered (re-send: <code>frustration webhooks replay "
        "--since ...</code>)</p><table class=webhook-dead><tr><th>webhook-id</th><th>endpoint</th>"
        "<th>event</th><th>written</th><th>attempts</th><th>last error</th></tr>"
        f"{rows}</table>"
    )
