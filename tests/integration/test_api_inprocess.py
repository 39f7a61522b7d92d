"""The HTTP API in-process (FastAPI TestClient, lifespan included) on real NATS and
PostgreSQL: rate limiting of authentication failures, and no secret ever in the logs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient
from tieline.plumbing.config import Settings
from tieline.services.api.app import create_app

from tests.conftest import make_token
from tests.integration.conftest import Log, make_event


def _token(settings: Settings, ws: str) -> str:
    return make_token(settings, ws, "admin", "inproc")


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


async def test_readiness_reports_lag_and_fails_on_it_only_when_asked(
    settings: Settings, log: Log
) -> None:
    """A projection that lags (no worker runs here) keeps the API ready by default, so a big
    import does not take every replica out of its load balancer; ``?max_lag=N`` is the
    opt-in check for monitors that want it."""
    for name in ("ada", "grace", "alan"):
        await log.publish(make_event("lag", type="person.added", person_id=name, display_name=name))
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        projection = ready.json()["checks"]["projection"]
        assert projection["lag"] == 3 and projection["stream_seq"] == 3
        assert c.get("/readyz", params={"max_lag": 3}).status_code == 200
        behind = c.get("/readyz", params={"max_lag": 2})
        assert behind.status_code == 503 and behind.json()["ready"] is False
        assert c.get("/readyz", params={"max_lag": -1}).status_code == 422
