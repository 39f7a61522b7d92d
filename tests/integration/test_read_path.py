"""The api's read path after the issue 15 run (docs/performance.md, "HTTP read path after the
issue 15 run"): fewer round trips per read, the same guarantees.

* the scoped pool's connections keep the api role and switch workspace at each checkout, so a
  connection reused for another workspace sees only that one's rows;
* access-log entries of concurrent reads share one INSERT, and each ``record`` returns only
  once its own entry is in PostgreSQL;
* ``?min_seq`` waiters share one checkpoint read instead of each polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from tieline.plumbing.config import Settings
from tieline.plumbing.migrations import API_ROLE
from tieline.plumbing.state import ensure_state_schema
from tieline.projections.readpool import LivePool
from tieline.services.api.runtime import AuditLog, Connections, ReadYourWrites
from tieline.services.auth import Principal

pytestmark = pytest.mark.integration

WORKSPACES = ("acme", "rival")


async def _seed(pool: LivePool) -> None:
    async with pool.connection() as conn:
        await ensure_state_schema(conn, pool.settings.database_schema)
        for ws in WORKSPACES:
            await conn.execute(
                """INSERT INTO people_v1 (workspace_id, person_id, added_event_id, added_at,
                       updated_at, last_seq) VALUES (%s, %s, %s, now(), now(), 1)""",
                (ws, f"{ws}-person", uuid.uuid4()),
            )


@pytest.fixture
async def one_connection(settings: Settings) -> AsyncIterator[LivePool]:
    """A live pool of one connection per side: every checkout reuses the same connection."""
    pool = LivePool(settings, min_size=1, max_size=1, scoped_max_size=1)
    await pool.open()
    await _seed(pool)
    try:
        yield pool
    finally:
        await pool.close()


async def _seen(conn: Any) -> tuple[set[str], str]:
    cur = await conn.execute("SELECT workspace_id FROM people_v1")
    rows = {r["workspace_id"] for r in await cur.fetchall()}
    cur = await conn.execute("SELECT current_user AS role")
    return rows, (await cur.fetchone())["role"]


async def test_a_reused_scoped_connection_sees_only_the_workspace_of_each_checkout(
    one_connection: LivePool,
) -> None:
    used = set()
    for ws in ("acme", "acme", "rival", "acme", "rival", "rival"):
        async with one_connection.workspace_connection(ws) as conn:
            used.add(id(conn))
            assert await _seen(conn) == ({ws}, API_ROLE)
    assert len(used) == 1  # the same connection each time: the switch is what was tested


async def test_a_failed_statement_leaves_the_scoped_connection_scoped(
    one_connection: LivePool,
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        async with one_connection.workspace_connection("acme") as conn:
            await conn.execute("DROP TABLE people_v1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        async with one_connection.workspace_connection("acme") as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO access_log (workspace_id, actor, endpoint, person_ids) "
                "VALUES ('rival', 'token:t', 'smuggled', ARRAY['p'])"
            )
    async with one_connection.workspace_connection("rival") as conn:
        assert await _seen(conn) == ({"rival"}, API_ROLE)
    # The owner's side is another pool: unscoped, every workspace, the login's own role.
    async with one_connection.connection() as conn:
        rows, role = await _seen(conn)
        assert rows == set(WORKSPACES) and role != API_ROLE


@pytest.fixture
async def connections(settings: Settings) -> AsyncIterator[Connections]:
    conns = Connections(settings)
    await conns.pool.open()
    await conns.audit_pool.open()
    async with conns.system() as conn:
        await ensure_state_schema(conn, settings.database_schema)
    try:
        yield conns
    finally:
        await conns.audit_pool.close()
        await conns.pool.close()


async def test_concurrent_access_log_entries_share_inserts_and_each_is_stored_on_return(
    connections: Connections,
) -> None:
    audit = AuditLog(connections)
    who = Principal(token_id="t1", workspace_id="acme", role="read", name="reader")
    inserts = 0
    real = audit._insert_many

    async def counted(entries: list[Any]) -> list[None]:
        nonlocal inserts
        inserts += 1
        return await real(entries)

    audit._inserts._run = counted

    async def read(i: int) -> int:
        await audit.record("acme", who, f"GET {i}", [f"p{i}", "ada"])
        # Returned: the entry is in PostgreSQL now, whatever else is still pending.
        async with connections.system() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM access_log WHERE endpoint = %s", (f"GET {i}",)
            )
            return int((await cur.fetchone())["n"])

    found = await asyncio.gather(*(read(i) for i in range(60)))
    assert found == [1] * 60
    assert inserts < 60  # reads that finished together shared an INSERT
    async with connections.system() as conn:
        cur = await conn.execute(
            "SELECT endpoint, actor, person_ids FROM access_log WHERE workspace_id = 'acme' "
            "ORDER BY id"
        )
        rows = await cur.fetchall()
    assert [r["endpoint"] for r in rows] == [f"GET {i}" for i in range(60)]
    assert all(r["actor"] == who.actor for r in rows)
    assert [r["person_ids"] for r in rows] == [[f"p{i}", "ada"] for i in range(60)]


@contextlib.contextmanager
def counting_system(connections: Connections) -> Iterator[list[int]]:
    """Count the owner-side checkouts of ``connections`` (the real ones, counted)."""
    calls = [0]
    real = connections.system

    def system(timeout: float | None = None) -> Any:
        calls[0] += 1
        return real(timeout)

    connections.system = system  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        connections.system = real  # type: ignore[method-assign]


async def test_waiters_share_one_checkpoint_read(
    settings: Settings, connections: Connections
) -> None:
    waiter = ReadYourWrites(settings, connections)
    consumer = connections.pool.generation.consumer
    with counting_system(connections) as calls:
        seen = await asyncio.gather(*(waiter.polled(consumer) for _ in range(50)))
        assert calls == [1]
        assert len(set(seen)) == 1
        await asyncio.sleep(ReadYourWrites.POLL_S * 1.5)
        await waiter.polled(consumer)  # older than POLL_S: read again
        assert calls == [2]


async def test_after_a_generation_switch_scoped_connections_are_new_and_scoped(
    one_connection: LivePool,
) -> None:
    async with one_connection.workspace_connection("acme") as conn:
        before = conn
    # What the generation watcher does on a blue/green switch (here onto the same generation):
    # new pools on both sides, the old ones closed.
    await one_connection._use(one_connection.generation)
    assert before.closed
    async with one_connection.workspace_connection("rival") as conn:
        assert conn is not before
        assert await _seen(conn) == ({"rival"}, API_ROLE)


async def test_a_failed_generation_switch_closes_the_new_pools_and_keeps_serving(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A switch whose scoped pool cannot open (roles revoked, no connection slots left) leaves
    no new pool open behind it (the watcher retries every poll), and the old pools serve."""
    from tieline.projections import readpool

    pool = LivePool(settings, min_size=1, max_size=1, scoped_max_size=1)
    await pool.open()
    await _seed(pool)
    created: list[Any] = []
    real = readpool.make_pool

    def failing_scoped(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)
        created.append(made)
        if kwargs.get("configure") is not None:

            async def fail_open(*_a: Any, **_k: Any) -> None:
                raise psycopg.OperationalError("the scoped pool could not open (test)")

            made.open = fail_open
        return made

    monkeypatch.setattr(readpool, "make_pool", failing_scoped)
    try:
        for _ in range(3):
            with pytest.raises(psycopg.OperationalError):
                await pool._use(pool.generation)
        assert len(created) == 6
        assert all(p.closed for p in created)
        async with pool.workspace_connection("acme") as conn:
            assert await _seen(conn) == ({"acme"}, API_ROLE)
    finally:
        await pool.close()
