"""The error answers the running stack cannot be made to give on demand, in-process on real
NATS JetStream and PostgreSQL (FastAPI TestClient, lifespan included): too many failed
authentications (429), a projection that does not reach ``min_seq`` in time (503), a
write-side service that is not running (503), PostgreSQL going away under a running API (503),
an unexpected failure (500); each one an RFC 9457 problem document. And CORS: an allowed
origin gets its headers on answers and errors alike, another origin gets none."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import nats
import pytest
from fastapi.testclient import TestClient
from tieline.plumbing.config import Settings
from tieline.services.api.app import create_app

from tests.conftest import make_token
from tests.e2e.test_contract import assert_problem
from tests.netproxy import TcpProxy

WS = "problems"


def _token(settings: Settings, ws: str = WS, role: str = "admin") -> str:
    return make_token(settings, ws, role, "problems")


def problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """``r`` is a problem document of ``status`` and type ``slug``."""
    assert r.status_code == status, r.text
    body = assert_problem(status, r.headers.get("content-type", ""), r.text)
    assert body["type"].endswith("/" + slug), body
    return body


@pytest.fixture
def app_client(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = settings.model_copy(
        update={"min_seq_wait_s": 0.3, "cors_origins": ["https://app.example.org"]}
    )
    auth = {"Authorization": f"Bearer {_token(settings)}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c, auth


def test_too_many_failed_authentications_are_a_problem_with_retry_after(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"auth_failures_per_minute": 3})
    with TestClient(create_app(settings)) as c:
        bad = {"Authorization": "Bearer tl_000000000000_" + "x" * 30}
        for _ in range(3):
            problem(c.get(f"/v1/workspaces/{WS}/people", headers=bad), 401, "unauthorized")
        r = c.get(f"/v1/workspaces/{WS}/people", headers=bad)
        problem(r, 429, "rate-limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60


def _publish_one(settings: Settings) -> int:
    """One message straight onto the stream (no projection worker runs here): the log has
    seq 1, the projection stays at 0."""

    async def go() -> int:
        from tieline.plumbing.jetstream import ensure_streams

        nc = await nats.connect(settings.nats_url)
        try:
            js = nc.jetstream()
            await ensure_streams(js, settings)
            ack = await js.publish(f"{settings.subject_prefix}.ev.{WS}.x", b"{}")
            return int(ack.seq)
        finally:
            await nc.drain()

    return asyncio.run(go())


def test_min_seq_within_the_log_but_not_projected_in_time_is_503_with_retry_after(
    app_client: tuple[TestClient, dict[str, str]], settings: Settings
) -> None:
    c, auth = app_client
    seq = _publish_one(settings)
    t0 = time.monotonic()
    r = c.get(f"/v1/workspaces/{WS}/people", params={"min_seq": seq}, headers=auth)
    body = problem(r, 503, "unavailable")
    assert time.monotonic() - t0 >= 0.3  # it did wait (min_seq_wait_s)
    assert r.headers["retry-after"] == "1"
    assert body["errors"] == [{"loc": ["query", "min_seq"], "msg": "not applied yet (at 0)"}]
    beyond = c.get(f"/v1/workspaces/{WS}/people", params={"min_seq": seq + 1}, headers=auth)
    assert problem(beyond, 422, "min-seq-beyond-log")["last_seq"] == seq


def test_introductions_check_waits_for_min_seq_like_every_read(
    app_client: tuple[TestClient, dict[str, str]], settings: Settings
) -> None:
    """/introductions/check took no ``min_seq``: it answered 200 at once from a projection
    that had not applied the write, so a check right after recording a meeting could answer
    from before it. It waits and refuses as every other read does."""
    c, auth = app_client
    seq = _publish_one(settings)
    url = f"/v1/workspaces/{WS}/introductions/check"
    who = {"introducer": "ada", "a": "grace", "b": "linus"}
    t0 = time.monotonic()
    r = c.get(url, params={**who, "min_seq": seq}, headers=auth)
    body = problem(r, 503, "unavailable")
    assert time.monotonic() - t0 >= 0.3  # it did wait (min_seq_wait_s)
    assert body["errors"] == [{"loc": ["query", "min_seq"], "msg": "not applied yet (at 0)"}]
    beyond = c.get(url, params={**who, "min_seq": seq + 1}, headers=auth)
    assert problem(beyond, 422, "min-seq-beyond-log")["last_seq"] == seq
    # Without min_seq it answers at once from what is projected (nothing here).
    assert c.get(url, params=who, headers=auth).json()["can_introduce"] is False


def test_a_write_service_that_is_not_running_is_503(
    app_client: tuple[TestClient, dict[str, str]],
) -> None:
    c, auth = app_client
    r = c.post(f"/v1/workspaces/{WS}/people", json={"display_name": "Ada"}, headers=auth)
    body = problem(r, 503, "unavailable")
    assert "people service" in body["detail"] and r.headers["retry-after"] == "1"


def test_an_unexpected_failure_is_a_500_problem_that_still_carries_cors_headers(
    app_client: tuple[TestClient, dict[str, str]],
) -> None:
    """A bug (here: the access log raising) answers a 500 problem, not a traceback, and the
    CORS headers are on it, so a browser page can read it."""
    c, auth = app_client
    rt = c.app.state.runtime  # type: ignore[attr-defined]

    async def broken(*_: Any) -> None:
        raise RuntimeError("an unexpected bug")

    rt.audit.record = broken
    headers = {**auth, "Origin": "https://app.example.org"}
    r = c.get(f"/v1/workspaces/{WS}/people", headers=headers)
    body = problem(r, 500, "internal")
    assert "unexpected bug" not in r.text and body["detail"]
    assert r.headers["access-control-allow-origin"] == "https://app.example.org"


class _ProxyThread:
    """A TCP proxy to PostgreSQL on an event loop of its own thread, cut on demand."""

    def __init__(self, target: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = TcpProxy(target)
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_postgresql_going_away_under_a_running_api_is_503(settings: Settings) -> None:
    proxied = _ProxyThread(settings.database_url)
    try:
        parts = urlsplit(settings.database_url)
        port = urlsplit(proxied.proxy.url).port
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        url = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))
        settings = settings.model_copy(update={"database_url": url})
        auth = {"Authorization": f"Bearer {_token(settings)}"}
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            assert c.get(f"/v1/workspaces/{WS}/people", headers=auth).status_code == 200
            proxied.close()
            r = c.get(f"/v1/workspaces/{WS}/people/ada", headers=auth)
            problem(r, 503, "unavailable")
            assert r.headers["retry-after"] == "1"
    finally:
        if proxied.thread.is_alive():
            proxied.close()


# -- CORS ---------------------------------------------------------------------------------


def test_cors_preflight_answers_an_allowed_origin_and_not_another(
    app_client: tuple[TestClient, dict[str, str]],
) -> None:
    c, _ = app_client
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    ok = c.options(
        f"/v1/workspaces/{WS}/events", headers={**ask, "Origin": "https://app.example.org"}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "POST" in ok.headers["access-control-allow-methods"]
    allowed = ok.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "access-control-allow-credentials" not in ok.headers
    no = c.options(f"/v1/workspaces/{WS}/events", headers={**ask, "Origin": "https://evil.test"})
    assert no.status_code == 400
    assert "access-control-allow-origin" not in no.headers


def test_cors_simple_request_gets_headers_only_for_an_allowed_origin(
    app_client: tuple[TestClient, dict[str, str]],
) -> None:
    c, auth = app_client
    ok = c.get(f"/v1/workspaces/{WS}/people", headers={**auth, "Origin": "https://app.example.org"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "retry-after" in ok.headers["access-control-expose-headers"].lower()
    refused = c.get(f"/v1/workspaces/{WS}/people", headers={"Origin": "https://app.example.org"})
    problem(refused, 401, "unauthorized")  # errors too carry the headers a page needs
    assert refused.headers["access-control-allow-origin"] == "https://app.example.org"
    other = c.get(f"/v1/workspaces/{WS}/people", headers={**auth, "Origin": "https://evil.test"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_no_cors_origin_is_allowed_by_default(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIELINE_CORS_ORIGINS", raising=False)
    assert Settings().cors_origins == [] and settings.cors_origins == []
    with TestClient(create_app(settings)) as c:
        r = c.options(
            "/healthz",
            headers={"Origin": "https://app.example.org", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in r.headers
