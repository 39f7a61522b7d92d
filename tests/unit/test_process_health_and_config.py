"""The health endpoint of the processes without an HTTP API (services/runtime/health.py) and
the start-up check that names every setting a deployed process is missing (run.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.embedded import find_free_port
from tieline.services.runtime.health import start_health_server
from tieline.services.runtime.run import check_settings, missing_settings


async def get(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_health_answers_liveness_and_the_roles_readiness() -> None:
    state = {"ok": False}

    async def ready() -> tuple[bool, dict[str, Any]]:
        if state.get("boom"):
            raise ConnectionError("broker gone")
        return state["ok"], {"nats": "connected" if state["ok"] else "down"}

    port = find_free_port()
    server = await start_health_server("people", "127.0.0.1", port, ready)
    try:
        assert await get(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == (
            200,
            b'{"status": "ok", "role": "people"}',
        )
        status, body = await get(port, b"GET /readyz?verbose=1 HTTP/1.1\r\n\r\n")
        assert status == 503 and b'"nats": "down"' in body
        state["ok"] = True
        assert (await get(port, b"GET /readyz HTTP/1.1\r\n\r\n"))[0] == 200
        state["boom"] = True
        status, body = await get(port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert status == 503 and b"broker gone" in body
        assert (await get(port, b"GET /nowhere HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await get(port, b"POST /healthz HTTP/1.1\r\n\r\n"))[0] == 405
        assert await get(port, b"HEAD /healthz HTTP/1.1\r\n\r\n") == (200, b"")
    finally:
        server.close()


async def test_health_port_serves_metrics_after_the_roles_refresh() -> None:
    """``/metrics`` on the health port: Prometheus text, brought up to date by the role's
    refresh first; a failing refresh still answers (with the last values)."""
    from prometheus_client.parser import text_string_to_metric_families
    from tieline.plumbing import metrics

    calls = {"n": 0}

    async def refresh() -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("stream info failed")
        metrics.DLQ_MESSAGES.set(7 + calls["n"])

    async def ready() -> tuple[bool, dict[str, Any]]:
        return True, {}

    port = find_free_port()
    server = await start_health_server("worker", "127.0.0.1", port, ready, refresh)
    try:
        for expected in (8.0, 8.0, 10.0):
            status, body = await get(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert status == 200
            values = {
                s.name: s.value
                for f in text_string_to_metric_families(body.decode())
                for s in f.samples
            }
            assert values["tieline_dlq_messages"] == expected
    finally:
        server.close()


def test_strict_config_names_every_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "DATABASE_URL", "MASTER_KEY"):
        monkeypatch.delenv(f"TIELINE_{name}", raising=False)
    monkeypatch.setenv("TIELINE_STRICT_CONFIG", "true")
    monkeypatch.setenv("TIELINE_NATS_URL", "nats://nats:4222")
    monkeypatch.setenv("TIELINE_NATS_USER", "people")
    assert missing_settings("people", Settings()) == [
        "TIELINE_NATS_PASSWORD",
        "TIELINE_DATABASE_URL",
        "TIELINE_MASTER_KEY",
    ]
    assert "TIELINE_MASTER_KEY" not in missing_settings("worker", Settings())
    with pytest.raises(SystemExit, match="TIELINE_NATS_PASSWORD, TIELINE_DATABASE_URL"):
        check_settings("worker", Settings())
    monkeypatch.setenv("TIELINE_STRICT_CONFIG", "false")
    # Without strict mode the defaults stand, but a user without a password is still refused.
    assert missing_settings("people", Settings()) == ["TIELINE_NATS_PASSWORD"]
    monkeypatch.delenv("TIELINE_NATS_USER")
    assert missing_settings("people", Settings()) == []
