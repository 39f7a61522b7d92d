"""Health endpoint of the processes that have no HTTP API (people, interactions, the worker,
webhooks, sync), and the per-process metrics port of each api process under ``--api-workers``.

Orchestrators need something to probe. ``TIELINE_HEALTH_PORT`` turns on a minimal HTTP server
in the process's own event loop, so an answer proves that loop is not stuck:

``GET /healthz``
    200 while the process answers at all (liveness: restart it when this stops answering).
``GET /readyz``
    200 when the role's own check passes (connected to NATS; for the write services, started
    and their command subscription's connection up), 503 otherwise; the body says why.

``GET /metrics``
    The process's Prometheus metrics (plumbing/metrics.py), after the role's ``refresh``
    (the worker reads the log's position then, so lag is current at every scrape).

It speaks just enough HTTP/1.1 for probes and scrapes (one request per connection, no
keep-alive, no request body); anything but these three paths is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from tieline.plumbing import metrics

log = structlog.get_logger(__name__)

#: The role's readiness check: (ready, details for the response body).
ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
#: Brings the role's metrics up to date before a scrape renders them.
Refresh = Callable[[], Awaitable[None]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
#: Longest a client may take to send its request line and headers, and a check may take.
_TIMEOUT_S = 5.0


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, path without query) of one request; headers are read and ignored."""
    line = await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass
    parts = line.decode("latin-1").split()
    if len(parts) < 2:
        return "", ""
    return parts[0], parts[1].split("?", 1)[0]


async def _metrics(refresh: Refresh | None) -> tuple[int, bytes, str]:
    if refresh is not None:
        try:
            await asyncio.wait_for(refresh(), _TIMEOUT_S)
        except Exception as exc:  # stale gauges beat no scrape at all
            log.warning("metrics.refresh_failed", error=repr(exc))
    body, content_type = metrics.render()
    return 200, body, content_type


async def _answer(role: str, ready: ReadyCheck, method: str, path: str) -> tuple[int, Any]:
    if path not in ("/healthz", "/readyz"):
        return 404, {"error": f"no such path {path!r}; try /healthz, /readyz or /metrics"}
    if method not in ("GET", "HEAD"):
        return 405, {"error": "only GET"}
    if path == "/healthz":
        return 200, {"status": "ok", "role": role}
    try:
        ok, details = await asyncio.wait_for(ready(), _TIMEOUT_S)
    except Exception as exc:  # a failing check is an answer ("not ready"), not a crash
        ok, details = False, {"error": f"{type(exc).__name__}: {exc}"}
    return (200 if ok else 503), {"ready": ok, "role": role, **details}


async def start_health_server(
    role: str, host: str, port: int, ready: ReadyCheck, refresh: Refresh | None = None
) -> asyncio.Server:
    """Listen on ``host:port`` and answer ``/healthz``, ``/readyz`` and ``/metrics`` for
    ``role``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await asyncio.wait_for(_read_request(reader), _TIMEOUT_S)
            if path == "/metrics" and method in ("GET", "HEAD"):
                status, payload, content_type = await _metrics(refresh)
            else:
                status, body = await _answer(role, ready, method, path)
                payload, content_type = json.dumps(body, default=str).encode(), "application/json"
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head + (payload if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # a probe that went away or never finished its request
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
