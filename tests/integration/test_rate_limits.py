"""Rate limits behind a proxy, shared by api processes: two api servers (uvicorn, configured
as the api process configures it) over one database; the client is the address a trusted
proxy forwards, and a limit reached through one server holds on the other.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.state import ensure_state_schema
from tieline.services.api.app import create_app
from tieline.services.auth import create_token
from tieline.services.runtime.run import api_server_config

pytestmark = pytest.mark.integration

WS = "limits"
PEOPLE = f"/v1/workspaces/{WS}/people"
#: Two clients behind the same proxy (documentation addresses, RFC 5737).
CLIENT, OTHER_CLIENT = "203.0.113.7", "198.51.100.9"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def _api_servers(settings: Settings, count: int = 2) -> AsyncIterator[list[str]]:
    """``count`` api servers on their own ports; their base URLs."""
    servers, tasks, urls = [], [], []
    for _ in range(count):
        port = _free_port()
        config = api_server_config(
            settings.model_copy(update={"api_port": port}), create_app(settings)
        )
        server = uvicorn.Server(config)
        servers.append(server)
        tasks.append(asyncio.create_task(server.serve()))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while not all(s.started for s in servers):
            assert time.monotonic() < deadline, "api servers did not start"
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            await asyncio.sleep(0.05)
        yield urls
    finally:
        for s in servers:
            s.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


async def _token(settings: Settings) -> str:
    conn = await db.connect(settings)
    try:
        await ensure_state_schema(conn, settings.database_schema)
        return await create_token(conn, WS, "read", "limits")
    finally:
        await conn.close()


async def _within_one_window() -> None:
    """The limits count in fixed one-minute windows (of the database's clock, the same
    machine's here): start a short sequence well inside one, so it cannot straddle two."""
    left = 60 - time.time() % 60
    if left < 15:
        await asyncio.sleep(left + 0.5)


def _as(client: str, token: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": client}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def test_failed_authentications_are_limited_per_real_client_across_processes(
    settings: Settings,
) -> None:
    settings = settings.model_copy(
        update={"auth_failures_per_minute": 4, "forwarded_allow_ips": "127.0.0.1"}
    )
    token = await _token(settings)
    bad = "tl_000000000000_" + "x" * 30
    async with _api_servers(settings) as (a, b), httpx.AsyncClient(timeout=10) as http:
        await _within_one_window()
        codes = []
        for i in range(4):  # the limit's worth of failures, alternating between the processes
            r = await http.get((a, b)[i % 2] + PEOPLE, headers=_as(CLIENT, bad))
            codes.append(r.status_code)
        assert codes == [401] * 4

        r = await http.get(a + PEOPLE, headers=_as(CLIENT, bad))
        assert r.status_code == 429, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"].endswith("rate-limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60

        # The other process refuses the client too, even with a valid token, once it has
        # reloaded the shared blocklist (every second).
        deadline = time.monotonic() + 5
        while True:
            r = await http.get(b + PEOPLE, headers=_as(CLIENT, token))
            if r.status_code == 429 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 60

        # Keyed on the client the proxy forwarded, not on the proxy: another client behind
        # the same proxy is not affected, on either process.
        for url in (a, b):
            r = await http.get(url + PEOPLE, headers=_as(OTHER_CLIENT, token))
            assert r.status_code == 200, r.text


async def test_forwarded_addresses_from_an_untrusted_peer_are_ignored(
    settings: Settings,
) -> None:
    """Without a trusted proxy, X-Forwarded-For cannot pick a fresh bucket per request."""
    settings = settings.model_copy(update={"auth_failures_per_minute": 3})
    bad = "tl_000000000000_" + "x" * 30
    async with _api_servers(settings, count=1) as (a,), httpx.AsyncClient(timeout=10) as http:
        await _within_one_window()
        codes = [
            (await http.get(a + PEOPLE, headers=_as(f"192.0.2.{i}", bad))).status_code
            for i in range(5)
        ]
    assert codes == [401] * 3 + [429] * 2


async def test_requests_per_token_and_client_are_limited_across_processes(
    settings: Settings,
) -> None:
    settings = settings.model_copy(
        update={"requests_per_minute": 6, "forwarded_allow_ips": "127.0.0.1"}
    )
    token = await _token(settings)
    async with _api_servers(settings) as (a, b), httpx.AsyncClient(timeout=10) as http:
        await _within_one_window()
        codes = [
            (await http.get((a, b)[i % 2] + PEOPLE, headers=_as(CLIENT, token))).status_code
            for i in range(6)
        ]
        assert codes == [200] * 6
        r = await http.get(b + PEOPLE, headers=_as(CLIENT, token))
        assert r.status_code == 429, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # The same token from another client has a bucket of its own.
        r = await http.get(a + PEOPLE, headers=_as(OTHER_CLIENT, token))
        assert r.status_code == 200, r.text
