"""An EventSource-equivalent client for the tests: httpx streaming, SSE parsed as the WHATWG
HTML standard says (``id``, ``event``, ``data``, ``retry`` fields; ``:`` comments; a blank
line dispatches; an ``id`` sets the last event id even when no event is dispatched)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Sse:
    """One dispatched event."""

    id: str
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class EventSource:
    """Reads one stream in a task of its own (so a test may stop waiting without breaking the
    stream); :meth:`next` returns the next dispatched event, :attr:`last_event_id` is what a
    browser would send back as ``Last-Event-ID`` on reconnect."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.last_event_id = ""
        self.comments: list[str] = []
        self.retry_ms: int | None = None
        self.opened = asyncio.Event()
        self._events: asyncio.Queue[Sse | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())

    async def next(self, wait_s: float = 10.0) -> Sse:
        """The next event; TimeoutError when none comes within ``wait_s`` seconds, EOFError
        when the server closed the stream."""
        got = await asyncio.wait_for(self._events.get(), wait_s)
        if got is None:
            self._events.put_nowait(None)
            raise EOFError("the server closed the stream")
        return got

    async def quiet_for(self, seconds: float) -> list[Sse]:
        """Every event that arrives within ``seconds`` (the test expects none, usually)."""
        await asyncio.sleep(seconds)
        got: list[Sse] = []
        while not self._events.empty():
            item = self._events.get_nowait()
            if item is None:
                self._events.put_nowait(None)
                break
            got.append(item)
        return got

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self.response.aclose()

    async def _read(self) -> None:
        event, data = "", []
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if data:
                        self._events.put_nowait(
                            Sse(self.last_event_id, event or "message", "\n".join(data))
                        )
                    event, data = "", []
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id" and "\0" not in value:
                    self.last_event_id = value
                elif name == "retry" and value.isdigit():
                    self.retry_ms = int(value)
                    self.opened.set()
        finally:
            self._events.put_nowait(None)
            self.opened.set()


async def open_stream(
    client: httpx.AsyncClient,
    ws: str,
    token: str,
    params: dict[str, str] | None = None,
    last_event_id: str | None = None,
) -> EventSource:
    """Open ``/v1/workspaces/{ws}/stream`` and wait for its first message (the client is
    registered with the change feed by then)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    request = client.build_request(
        "GET", f"/v1/workspaces/{ws}/stream", params=params or {}, headers=headers
    )
    response = await client.send(request, stream=True)
    source = EventSource(response)
    if response.status_code == 200:
        await asyncio.wait_for(source.opened.wait(), 10)
    return source


async def events(source: EventSource, n: int, wait_s: float = 15.0) -> list[Sse]:
    return [await source.next(wait_s) for _ in range(n)]
