"""A real webhook receiver for tests: aiohttp on 127.0.0.1, in a thread with its own event loop,
verifying every delivery with the reference verifier of the `standardwebhooks` package.

It can answer the first `fail_first` deliveries with 500, go down (`stop`) and come back on the
same port (`start`). Every request is recorded: path, headers, body, whether the signature
verified, and the status it got.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.integration.service_fixture import free_port


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def msg_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    secret: str
    fail_first: int = 0
    port: int = field(default_factory=free_port)
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="hooks")
        self.thread.start()
        self.runner: web.AppRunner | None = None
        self.verifier = Webhook(self.secret)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            self.verifier.verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        with self.lock:
            if not verified:
                status = 400
            elif self.fail_first > 0:
                self.fail_first -= 1
                status = 500
            else:
                status = 204
            self.deliveries.append(Delivery(request.path, headers, body, verified, status))
        return web.Response(status=status)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def accepted(self, path: str | None = None) -> list[Delivery]:
        with self.lock:
            return [
                d
                for d in self.deliveries
                if 200 <= d.status < 300 and (path is None or d.path == path)
            ]

    def all(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)
