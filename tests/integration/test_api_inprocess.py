"""The HTTP API in-process (FastAPI TestClient, lifespan included) on real NATS and
PostgreSQL: rate limiting of authentication failures, and no secret ever in the logs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.state import ensure_state_schema
from tieline.services.api.app import create_app
from tieline.services.auth import create_token


def _token(settings: Settings, ws: str) -> str:
    async def go() -> str:
        conn = await db.connect(settings)
        try:
            await ensure_state_schema(conn, settings.database_schema)
            return await create_token(conn, ws, "admin", "inproc")
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    settings = settings.model_copy(update={"auth_failures_per_minute": 5})
    with TestClient(create_app(settings)) as c:
        yield c


def test_authentication_failures_are_rate_limited_per_client(client: TestClient) -> None:
    codes = [
        client.get(
            "/v1/workspaces/w/people", headers={"Authorization": f"Bearer guess-{i}"}
        ).status_code
        for i in range(8)
    ]
    assert codes == [401] * 5 + [429] * 3
    assert client.get("/healthz").status_code == 200  # health stays open


def test_no_token_or_secret_appears_in_any_log_line(settings: Settings) -> None:
    token = _token(settings, "logs")
    master = "c2VjcmV0LW1hc3Rlci1rZXktb2YtMzItYnl0ZXMhISE="  # 32 bytes, base64
    settings = settings.model_copy(update={"master_key": master})
    with structlog.testing.capture_logs() as logs, TestClient(create_app(settings)) as c:
        auth = {"Authorization": f"Bearer {token}"}
        c.get("/v1/workspaces/logs/people", headers=auth)
        c.get("/v1/workspaces/logs/people", headers={"Authorization": f"Bearer {token}x"})
        made = c.post(
            "/v1/workspaces/logs/tokens", headers=auth, json={"role": "read", "name": "second"}
        ).json()
    assert made["token"].startswith("tl_")
    text = repr(logs)
    assert logs, "expected some log lines to check"
    for secret in (token, token.split("_", 2)[2], made["token"], master):
        assert secret not in text
