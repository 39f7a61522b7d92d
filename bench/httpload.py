"""HTTP load against the API: closed loop (C concurrent clients, as fast as the server answers)
and open loop (a fixed arrival rate, latency measured from each request's scheduled time so a
slow server cannot hide its queueing: no coordinated omission).

The load generator shares the 2 cores with the stack it measures, so it must be cheap: it uses
aiohttp (measured here at a fraction of httpx's CPU per request with 64 connections; httpx's
pool spent ~7 ms of CPU per request, more than the whole server side). ``Http`` wraps it in the
small httpx-like surface the benchmarks use (``post``/``get``, ``status_code``, ``json()``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

from bench.common import rate, self_cpu, summarize


@dataclass
class LoadResult:
    requests: int
    events: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    #: (ack time perf_counter, seq, body index) of each accepted single write, for freshness.
    acks: list[tuple[float, int, int]] = field(default_factory=list)
    #: Open loop only: the server fell too far behind the schedule and sending stopped.
    saturated: bool = False
    unsent: int = 0

    @property
    def events_per_s(self) -> float:
        return rate(self.events, self.seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "errors": self.errors,
            "client_cpu_s": round(self.client_cpu_s, 2),
            "saturated": self.saturated,
            "unsent": self.unsent,
            **summarize(self.latencies),
        }


@dataclass(frozen=True)
class Response:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise HTTPError(f"HTTP {self.status_code}: {self.text[:300]}")


class HTTPError(Exception):
    """A transport failure (``kind`` names the client's exception) or, from
    ``raise_for_status``, an error status."""

    def __init__(self, message: str, kind: str = "HTTPError") -> None:
        super().__init__(message)
        self.kind = kind


#: What a request may raise instead of answering.
TRANSPORT_ERRORS = (asyncio.TimeoutError, HTTPError)


class Http:
    """A keep-alive client with at most ``connections`` connections to ``base_url``."""

    def __init__(self, base_url: str, token: str, connections: int, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.connections = connections
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Http:
        import aiohttp  # the bench extra; imported here so `bench` imports without it

        self._session = aiohttp.ClientSession(
            headers=self.headers,
            connector=aiohttp.TCPConnector(limit=self.connections, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Response:
        import aiohttp

        assert self._session is not None, "use 'async with Http(...)'"
        try:
            async with self._session.request(
                method, self.base_url + path, data=content, headers=headers, params=params
            ) as r:
                return Response(r.status, await r.read())
        except aiohttp.ClientError as exc:
            raise HTTPError(str(exc), type(exc).__name__) from exc

    async def post(
        self, path: str, *, content: bytes, headers: dict[str, str] | None = None
    ) -> Response:
        return await self.request("POST", path, content=content, headers=headers)

    async def get(self, path: str, *, params: dict[str, Any] | None = None) -> Response:
        return await self.request("GET", path, params=params)


def client(base_url: str, token: str, connections: int, timeout: float = 60.0) -> Http:
    return Http(base_url, token, connections, timeout)


def _count_error(errors: dict[str, int], key: str) -> None:
    errors[key] = errors.get(key, 0) + 1


async def closed_loop(
    http: Http,
    path: str,
    bodies: Iterable[bytes],
    *,
    concurrency: int,
    content_type: str = "application/json",
    events_per_body: Callable[[Response], int] | None = None,
) -> LoadResult:
    """POST every body with ``concurrency`` clients in parallel."""
    it: Iterator[bytes] = iter(bodies)
    res = LoadResult(0, 0, 0.0)
    headers = {"content-type": content_type}

    async def worker() -> None:
        for body in it:
            s = time.perf_counter()
            try:
                r = await http.post(path, content=body, headers=headers)
            except TRANSPORT_ERRORS as exc:
                _count_error(res.errors, getattr(exc, "kind", type(exc).__name__))
                continue
            res.latencies.append(time.perf_counter() - s)
            res.requests += 1
            if r.status_code >= 300:
                _count_error(res.errors, str(r.status_code))
                continue
            res.events += events_per_body(r) if events_per_body else 1

    c0 = self_cpu()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.seconds = time.perf_counter() - t0
    res.client_cpu_s = self_cpu() - c0
    return res


async def open_loop(
    http: Http,
    path: str,
    bodies: list[bytes],
    *,
    per_s: float,
    content_type: str = "application/json",
    max_outstanding: int = 256,
    give_up_behind_s: float = 5.0,
    on_ack: Callable[[float, int, int], None] | None = None,
    lines_per_body: int = 1,
) -> LoadResult:
    """POST ``bodies`` at a steady ``per_s``; latency from the scheduled send time.

    At most ``max_outstanding`` requests are in flight (one per connection, so nothing waits
    inside the client's pool). When the server cannot keep up and sending falls more than
    ``give_up_behind_s`` behind schedule, the rest is not sent: ``saturated`` says so, and the
    latencies of what was sent show the queueing.

    ``on_ack(t, seq, index)`` is called as each write is acknowledged (freshness probes).
    With ``lines_per_body`` > 1 the bodies are JSON Lines batches (``POST .../events/batch``)
    sent at ``per_s / lines_per_body`` bodies per second, so events still arrive at ``per_s``;
    each line's ``seq`` comes from the batch answer and ``index`` counts lines.
    """
    res = LoadResult(0, 0, 0.0)
    headers = {"content-type": content_type}
    slots = asyncio.Semaphore(max_outstanding)
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int, body: bytes, scheduled: float) -> None:
        try:
            r = await http.post(path, content=body, headers=headers)
        except TRANSPORT_ERRORS as exc:
            _count_error(res.errors, getattr(exc, "kind", type(exc).__name__))
            return
        finally:
            slots.release()
        done = time.perf_counter()
        res.latencies.append(done - scheduled)
        res.requests += 1
        if r.status_code >= 300:
            _count_error(res.errors, str(r.status_code))
            return
        body = r.json()
        lines = body["results"] if lines_per_body > 1 else [body]
        for k, line in enumerate(lines):
            seq = line.get("seq")
            if seq is None:
                continue
            res.events += 1
            index = i * lines_per_body + k
            res.acks.append((done, int(seq), index))
            if on_ack is not None:
                on_ack(done, int(seq), index)

    c0 = self_cpu()
    t0 = time.perf_counter()
    for i, body in enumerate(bodies):
        scheduled = t0 + i * lines_per_body / per_s
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > give_up_behind_s:
            res.saturated = True
            res.unsent = (len(bodies) - i) * lines_per_body
            break
        await slots.acquire()
        tasks.append(asyncio.create_task(one(i, body, scheduled)))
    sent_for = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    # Achieved rate over the sending window (a server that falls behind shows as errors and
    # latency, not as a stretched window).
    res.seconds = sent_for if res.saturated else max(sent_for, len(bodies) * lines_per_body / per_s)
    res.client_cpu_s = self_cpu() - c0
    return res
