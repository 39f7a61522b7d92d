"""A scripted webhook receiver for the sender's integration tests: a plain asyncio HTTP/1.1
server on loopback (no framework between the test and the bytes), so a test can hold a request
open until it says so, answer with any status and headers, or trickle its answer one byte at a
time the way a misbehaving receiver would."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Arrived:
    """One request as it arrived (its body read in full)."""

    webhook_id: str
    body: bytes
    host: str = ""  # the Host header


@dataclass
class HookReceiver:
    """Answers requests in the order of ``script`` ((status, headers) each; 204 when it runs
    out). ``hold``: every request waits for ``release`` before its answer. ``trickle``: the
    answer's status line is sent a byte every ``trickle_s`` seconds, and never finished."""

    script: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    hold: bool = False
    trickle: bool = False
    trickle_s: float = 0.2
    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[Arrived] = field(default_factory=list)
    open_now: int = 0  # requests that arrived and are not answered yet
    most_open: int = 0  # the most requests that were open at once
    _server: asyncio.Server | None = None
    _closing: bool = False
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def start(self) -> HookReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    async def close(self) -> None:
        self._closing = True  # a trickling answer stops at its next byte
        self.release.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def wait_for(self, n: int, wait_s: float = 20.0) -> list[Arrived]:
        """Until ``n`` requests have arrived in all (TimeoutError after ``wait_s``)."""
        async with asyncio.timeout(wait_s), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= n)
        return list(self.requests)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
            )
            body = await reader.readexactly(int(fields.get("content-length", "0")))
            async with self._changed:
                self.requests.append(
                    Arrived(fields.get("webhook-id", ""), body, fields.get("host", ""))
                )
                self.open_now += 1
                counted = True
                self.most_open = max(self.most_open, self.open_now)
                self._changed.notify_all()
            await self._answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over: nothing to answer
        finally:
            self.open_now -= 1 if counted else 0
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        if self.trickle:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100_000:
                if self._closing:
                    return
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(self.trickle_s)
        if self.hold:
            await self.release.wait()
        status, headers = self.script.popleft() if self.script else (204, {})
        lines = [f"HTTP/1.1 {status} Whatever", "Content-Length: 0", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
