"""Helpers for in-process integration tests on real NATS JetStream and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from psycopg import AsyncConnection
from tieline.events_schema.models import Event
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing import db, subjects
from tieline.plumbing.config import Settings
from tieline.plumbing.jetstream import ensure_streams
from tieline.plumbing.subjects import event_subject


def make_event(ws: str, **fields: Any) -> Event:
    """A valid event with envelope defaults filled in."""
    now = datetime.now(UTC).isoformat()
    data = {
        "event_id": str(uuid4()),
        "schema_version": 1,
        "occurred_at": now,
        "recorded_at": now,
        "workspace_id": ws,
        "recorded_by": "test",
        **fields,
    }
    return REGISTRY.decode_obj(data)


class Log:
    """Publishes straight onto the stream (bypassing the services), like a test oracle."""

    def __init__(self, settings: Settings, nc: NatsClient, js: JetStreamContext) -> None:
        self.settings, self.nc, self.js = settings, nc, js

    async def publish(self, event: Event, *, msg_id: str | None = None) -> int:
        ack = await self.js.publish(
            event_subject(self.settings.subject_prefix, event),
            REGISTRY.encode(event),
            headers={"Nats-Msg-Id": msg_id or subjects.msg_id(event)},
            stream=self.settings.stream_name,
        )
        return int(ack.seq)

    async def publish_all(self, events: Iterable[Event]) -> int:
        """Publish ``events`` in order; the last one's sequence (0 for none)."""
        last = 0
        for event in events:
            last = await self.publish(event)
        return last

    async def publish_raw(self, subject: str, data: bytes) -> int:
        ack = await self.js.publish(subject, data, stream=self.settings.stream_name)
        return int(ack.seq)


@pytest.fixture
async def log(settings: Settings) -> AsyncIterator[Log]:
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_streams(js, settings)
    try:
        yield Log(settings, nc, js)
    finally:
        for name in (settings.stream_name, f"{settings.stream_name}_DLQ"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()


def first_generation(settings: Settings) -> tuple[str, str]:
    """(schema, consumer) of the read-model generation a fresh database starts with."""
    return f"{settings.database_schema}_g1", f"{settings.consumer_name}-g1"


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[AsyncConnection[Any]]:
    """A connection that sees the first (live) read-model generation."""
    conn = await db.connect(settings, rm_schema=first_generation(settings)[0])
    try:
        yield conn
    finally:
        await conn.close()


async def scalar(conn: AsyncConnection[Any], query: str, *args: Any) -> Any:
    cur = await conn.execute(query, args)
    row = await cur.fetchone()
    return None if row is None else row[0]


@contextlib.asynccontextmanager
async def live_worker(settings: Settings, until_seq: int) -> AsyncIterator[str]:
    """A live worker that has applied the log up to ``until_seq``; yields its schema."""
    from tieline.projections.worker import Worker

    worker = Worker(settings)
    await worker.start()
    assert worker.generation is not None
    try:
        async with asyncio.timeout(30):
            while worker.stats.last_seq < until_seq:
                await worker.run_once()
        yield worker.generation.schema_name
    finally:
        await worker.close()


async def assert_rebuild_equals(settings: Settings, live: str) -> str:
    """Rebuild the log with the bulk path into a scratch generation and assert that its
    tables equal ``live``'s; return the rebuilt schema."""
    from tieline.projections import replay

    result, rebuilt = await replay.replay(settings, status="scratch", bulk=True)
    await rebuilt.close()
    conn = await db.connect(settings)
    try:
        diffs = await replay.compare(conn, live, result.generation.schema_name)
    finally:
        await conn.close()
    assert [d.table for d in diffs if not d.clean] == [], [d.samples for d in diffs]
    return result.generation.schema_name
