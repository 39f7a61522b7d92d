"""The SSE stream served by a real uvicorn in-process, fed by the real projection worker on real
NATS and PostgreSQL: heartbeats on an idle stream, a client that cannot keep up is cut off with
its resume position (a bounded queue, not an unbounded buffer), and resuming from there
replays exactly the rest; a closed stream leaves no subscriber behind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections.changelog import SCAN_SUB
from tieline.projections.worker import Worker
from tieline.services.api.app import create_app
from tieline.services.auth import issue_token, revoke_token

from tests.e2e.sse import open_stream
from tests.integration.conftest import Log, make_event

LIMIT = 3


@pytest.fixture
async def served(settings: Settings, log: Log) -> AsyncIterator[tuple[str, Any]]:
    """(base URL, the app's runtime) of an API with a tiny per-client queue and fast pings."""
    del log  # the streams exist before the API starts
    settings = settings.model_copy(
        update={
            "sse_queue_limit": LIMIT,
            "sse_heartbeat_s": 0.3,
            "sse_poll_s": 0.2,
            "sse_reauth_s": 0.5,
        }
    )
    app = create_app(settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
            await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app.state.runtime
    finally:
        server.should_exit = True
        await task


async def apply_until(worker: Worker, last: int) -> None:
    async with asyncio.timeout(20):
        while worker.stats.last_seq < last:
            await worker.run_once()


async def token_for(settings: Settings, ws: str) -> str:
    return await issue_token(settings, ws, "read", "feed-test")


async def test_slow_client_is_cut_off_with_its_position_and_resumes_exactly(
    settings: Settings, log: Log, served: tuple[str, Any]
) -> None:
    url, runtime = served
    ws = "w-feed"
    token = await token_for(settings, ws)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        source = await open_stream(client, ws, token)
        assert runtime.feed.clients == 1
        await asyncio.sleep(0.8)
        assert any(c.startswith("ping") for c in source.comments), "heartbeats while idle"
        # What a client's stall watchdog is timed by (the web page waits three of them).
        assert source.response.headers["tieline-heartbeat-seconds"] == "0.3"

        # Ten meetings in one projection batch: 20 changes reach the feed at once, more than
        # the client's queue holds, so it is cut off after the first LIMIT.
        last = 0
        for i in range(10):
            met = make_event(
                ws, type="relationship.met", participants=["a", f"p{i}"], depth="brief_chat"
            )
            last = await log.publish(met)
        worker = Worker(settings)
        await worker.start()
        try:
            await apply_until(worker, last)
        finally:
            await worker.close()
        got = [await source.next() for _ in range(LIMIT + 1)]
        assert [e.event for e in got[:LIMIT]] == [
            "event.recorded",
            "relationship.changed",
            "event.recorded",
        ]
        cut = got[LIMIT]
        assert cut.event == "overflow" and cut.json()["resume_from"] == got[LIMIT - 1].id
        assert cut.id == got[LIMIT - 1].id  # EventSource resumes from here by itself
        with pytest.raises(EOFError):
            await source.next(wait_s=5)
        await source.aclose()
        await asyncio.sleep(0.2)
        assert runtime.feed.clients == 0

        again = await open_stream(client, ws, token, last_event_id=source.last_event_id)
        rest = [await again.next() for _ in range(20 - LIMIT)]
        assert await again.quiet_for(0.5) == []
        ids = [e.id for e in got[:LIMIT] + rest]
        assert len(set(ids)) == 20
        seqs = sorted({int(i.split("-")[0]) for i in ids})
        assert seqs == list(range(last - 9, last + 1))
        await again.aclose()


async def test_a_stream_ends_when_its_token_is_revoked(
    settings: Settings, served: tuple[str, Any]
) -> None:
    url, runtime = served
    token = await token_for(settings, "w-revoke")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        source = await open_stream(client, "w-revoke", token)
        await asyncio.sleep(1.0)
        assert source.comments, "still open and pinged while the token is valid"
        conn = await db.connect(settings)
        try:
            assert await revoke_token(conn, token.split("_")[1])
        finally:
            await conn.close()
        # Within the re-check interval plus the principal cache's 5 s.
        ended = await source.next(wait_s=10)
        assert ended.event == "unauthorized"
        with pytest.raises(EOFError):
            await source.next(wait_s=5)
        await source.aclose()
        await asyncio.sleep(0.2)
        assert runtime.feed.clients == 0
        refused = await client.get(
            "/v1/workspaces/w-revoke/stream", headers={"Authorization": f"Bearer {token}"}
        )
        assert refused.status_code == 401


async def test_a_reset_does_not_show_another_workspaces_change_count(
    settings: Settings, log: Log, served: tuple[str, Any]
) -> None:
    """A stream that cannot resume is reset at the feed's position. That position's ``sub``
    counted the change rows of whichever workspace wrote last: a reader of one workspace
    learned how many pairs another's latest meeting moved (here 10, for 5 people)."""
    url, _ = served
    people = [f"v{i}" for i in range(5)]
    met = make_event("w-victim", type="relationship.met", participants=people, depth="brief_chat")
    last = await log.publish(met)
    worker = Worker(settings)
    await worker.start()
    try:
        await apply_until(worker, last)
        await asyncio.sleep(1.0)  # the feed reads the new rows (it polls every 0.2 s)
        token = await token_for(settings, "w-other")
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            source = await open_stream(client, "w-other", token, last_event_id="garbage")
            reset = await source.next(wait_s=5)
            assert (reset.event, reset.id) == ("reset", f"{last}-{SCAN_SUB - 1}")
            # The position still serves: the workspace's next change comes live after it.
            mine = make_event("w-other", type="person.added", person_id="o1", display_name="O")
            seq = await log.publish(mine)
            await apply_until(worker, seq)
            got = await source.next(wait_s=10)
            assert got.event == "event.recorded" and got.id.startswith(f"{seq}-")
            await source.aclose()
    finally:
        await worker.close()
