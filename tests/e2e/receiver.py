"""A real webhook receiver for the tests: an aiohttp server on loopback that verifies every
request's Standard Webhooks signature with the reference implementation (the
``standardwebhooks`` package), answers with failures on purpose when told to, and can go away
and come back on the same port."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    """One request as it arrived."""

    at: float  # time.monotonic()
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    verified: Any  # the parsed payload, or None when the signature did not verify
    answered: int


@dataclass
class Receiver:
    """``fail_next`` requests are answered ``fail_status``; the rest 204."""

    secret: str | None = None
    fail_next: int = 0
    fail_status: int = 500
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        """Go away: the port refuses connections until :meth:`start` again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        verified = None
        if self.secret is not None:
            try:
                verified = Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError:
                verified = None
        status = 204
        if self.fail_next > 0:
            self.fail_next -= 1
            status = self.fail_status
        got = Received(
            time.monotonic(), headers.get("webhook-id", ""), headers, body, verified, status
        )
        async with self._arrived:
            self.requests.append(got)
            self._arrived.notify_all()
        return web.Response(status=status)

    async def wait_for(self, n: int, wait_s: float = 30.0) -> list[Received]:
        """Until ``n`` requests have arrived in all; returns them all."""
        async with asyncio.timeout(wait_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= n)
        return list(self.requests)
