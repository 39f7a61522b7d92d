"""Two instances of one projection, one after the other, on real PostgreSQL and NATS.

A worker whose lock connection died (its backend killed, a cut network) has lost the
projection lock, and a standby may take it: the worker now notices within about a second and
stops, where it used to go on applying beside the standby. And a store remembers that nothing
waits in ``pending_retractions_v1`` or ``pending_people_v1`` (almost always so), to spare
every batch a lookup. That memory is its own: another instance of the same projection (a
standby that took over while this one's lock connection was gone, then stopped) can have
added rows meanwhile. The store now forgets what it remembered when the checkpoint is not
where it left it, so such rows are still found."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tieline.events_schema.models import Event
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.subjects import event_subject
from tieline.projections import worker_support
from tieline.projections.classify import classify
from tieline.projections.items import Item
from tieline.projections.schema import ensure_schema
from tieline.projections.store import ProjectionStore
from tieline.projections.strength_model import PARAMS
from tieline.projections.worker import Worker
from tieline.projections.worker_support import LockLost, ProjectionLock

from tests.integration.conftest import Log, make_event, scalar

WS = "tk"
_S = Settings(subject_prefix="takeovertest")
SCHEMA = "takeovertest_live"
_DROP = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA))


class Feed:
    """Events as classified items in stream order."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def add(self, **fields: Any) -> Event:
        e = make_event(WS, **fields)
        self.items.append(self.item(e))
        return e

    def item(self, e: Event) -> Item:
        seq = len(self.items) + 1
        return classify(REGISTRY, _S, seq, event_subject(_S.subject_prefix, e), REGISTRY.encode(e))


def _store() -> ProjectionStore:
    return ProjectionStore(REGISTRY, projection="takeovertest", params=PARAMS)


async def test_a_store_finds_what_another_instance_left_waiting(settings: Settings) -> None:
    feed = Feed()
    for p in ("a", "b"):
        feed.add(type="person.added", person_id=p, display_name=p)
    feed.add(type="relationship.met", participants=["a", "b"], depth="conversation")
    late = make_event(WS, type="relationship.met", participants=["a", "b"], depth="brief_chat")
    first = len(feed.items)
    # Dead-lettered meanwhile: `late`, and the add of "c"; both retracted or forgotten first.
    feed.add(type="event.retracted", retracted_event_id=str(late.event_id))
    feed.add(type="person.forgotten", person_id="c")
    second = len(feed.items)
    feed.items.append(feed.item(late))  # `tieline dlq replay` brings both back
    feed.add(type="person.added", person_id="c", display_name="Carol")
    conn = await db.connect(settings)
    other = await db.connect(settings)
    try:
        await conn.execute(_DROP)
        for c in (conn, other):
            await _fresh(c)
        this = _store()
        await this.apply(conn, feed.items[:first])  # looked: nothing waits
        await _store().apply(other, feed.items[first:second])  # another instance's batch
        waits = "SELECT (SELECT count(*) FROM pending_retractions_v1) + "
        assert await scalar(conn, waits + "(SELECT count(*) FROM pending_people_v1)") == 2
        result = await this.apply(conn, feed.items[second:])
        assert result.applied == 2
        assert await scalar(conn, "SELECT meetings FROM strength_v1") == 1
        assert await scalar(
            conn, "SELECT retracted_by IS NOT NULL FROM events WHERE event_id = %s", late.event_id
        )
        person = "SELECT forgotten, display_name FROM people_v1 WHERE person_id = 'c'"
        cur = await conn.execute(person)
        assert await cur.fetchall() == [(True, None)]
        assert await scalar(conn, waits + "(SELECT count(*) FROM pending_people_v1)") == 0
    finally:
        await conn.execute(_DROP)
        await conn.close()
        await other.close()


async def _fresh(conn: AsyncConnection[Any]) -> None:
    await ensure_schema(conn, SCHEMA)
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(SCHEMA)))


async def _lost_lock(
    settings: Settings, log: Log, ws: str, *, all_sessions: bool
) -> tuple[Worker, Worker]:
    """A worker that applied an event, then lost the session of its lock (``all_sessions``:
    every session of its, as in a database restart), and a second worker that took the lock."""
    last = await log.publish(make_event(ws, type="person.added", person_id="a", display_name="A"))
    first, second = Worker(settings), Worker(settings)
    await first.start()
    async with asyncio.timeout(30):
        while first.stats.last_seq < last:
            await first.run_once()
    key = f"tieline-worker:{settings.database_schema}:{first.store.row}"
    assert first.pg is not None
    admin = await db.connect(settings)
    try:
        killed = await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ("
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND objid::bigint = hashtext(%s)::bigint & 4294967295) OR pid = %s",
            (key, first.pg.info.backend_pid if all_sessions else -1),
        )
        assert [r[0] for r in await killed.fetchall()] == [True] * (2 if all_sessions else 1)
    finally:
        await admin.close()
    async with asyncio.timeout(30):
        await second.start()  # a standby until the lock is free: it takes it
    assert second.active
    return first, second


async def test_a_worker_that_lost_its_lock_to_a_standby_stops(settings: Settings, log: Log) -> None:
    """Only the lock's session ends (the worker's other connection lives on): it used to go on
    applying beside the standby."""
    ws = "tk2"
    first, second = await _lost_lock(settings, log, ws, all_sessions=False)
    try:
        async with asyncio.timeout(15):  # the old worker went on for ever
            await first.run()
        with pytest.raises(LockLost):  # and a caller driving it batch by batch is told
            await first.run_once()
        last = await log.publish(make_event(ws, type="person.updated", person_id="a", title="CTO"))
        async with asyncio.timeout(30):
            while second.stats.last_seq < last:
                await second.run_once()
        assert first.stats.last_seq < last
    finally:
        for w in (first, second):
            await w.close()


async def test_a_worker_back_from_a_database_restart_without_its_lock_stops(
    settings: Settings, log: Log
) -> None:
    """Every session of the worker ends (a database restart) and a standby takes the lock
    first: the worker's retry of its batch used to reconnect and apply it without the lock,
    since its lock connection still looked open; now it gives the batch up unacked."""
    ws = "tk3"
    first, second = await _lost_lock(settings, log, ws, all_sessions=True)
    try:
        before = first.stats.last_seq
        last = await log.publish(make_event(ws, type="person.updated", person_id="a", title="X"))
        with pytest.raises(LockLost):
            async with asyncio.timeout(30):
                while True:
                    await first.run_once()
        assert first._stopping.is_set() and not first.active
        assert await second.store.checkpoint(second._conn()) == before  # nothing applied
        async with asyncio.timeout(30):
            while second.stats.last_seq < last:
                await second.run_once()
    finally:
        for w in (first, second):
            await w.close()


async def test_a_lock_taken_by_another_is_not_held_on_a_later_check(settings: Settings) -> None:
    """After its session ended and another instance took the lock, the retake fails; the
    connection the retake opened did not hold the lock but used to stay, so the next
    ``held()`` answered True."""
    key = "tieline-worker:takeovertest:a-lock-test"
    mine, theirs = ProjectionLock(settings, key, "t"), ProjectionLock(settings, key, "t")
    try:
        assert await mine.try_take()
        assert mine.conn is not None
        admin = await db.connect(settings)
        try:
            pid = mine.conn.info.backend_pid
            # The two-argument form returns once the backend has ended (its lock freed).
            await admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        finally:
            await admin.close()
        assert await theirs.try_take()
        assert not await mine.still_held()
        assert not await mine.held()
        assert not await mine.still_held()  # and asks again, rather than believing it
    finally:
        await mine.close()
        await theirs.close()


async def test_a_lock_session_too_slow_to_answer_is_ended_and_the_lock_taken_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ping that times out (a slow server; here the lock's session is busy in a long query)
    closes the connection, but its backend goes on, holding the lock, until the server
    notices. The retake found the lock taken and the worker stopped for nothing, to wait as a
    standby for its own old session. Now it ends that session (its own: same pid and start
    time) and takes the lock again."""
    monkeypatch.setattr(worker_support, "LOCK_PING_S", 0.5)
    key = f"tieline-worker:{settings.database_schema}:slow-lock-test"
    mine, theirs = ProjectionLock(settings, key, "t"), ProjectionLock(settings, key, "t")
    admin, old = await db.connect(settings), 0
    try:
        assert await mine.try_take() and mine.conn is not None
        old = mine.conn.info.backend_pid
        # The session is busy past the ping's deadline, and its backend does not look at the
        # socket while it sleeps: closing the connection leaves it holding the lock.
        mine.conn.pgconn.send_query(b"SELECT pg_sleep(60)")
        assert mine.conn.pgconn.flush() == 0
        assert await mine.still_held()
        assert mine.conn is not None and mine.conn.info.backend_pid != old
        assert not await theirs.try_take()
        alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
        assert await scalar(admin, alive, old) == 0
    finally:
        if old:
            await admin.execute("SELECT pg_terminate_backend(%s)", (old,))
        await admin.close()
        await mine.close()
        await theirs.close()


async def test_every_session_tells_the_server_to_drop_it_when_its_network_dies(
    settings: Settings,
) -> None:
    """An orphaned backend (its client gone, the path between them dead) keeps its locks, the
    projection lock among them, until the server drops it: two hours of TCP keepalive by
    default. Sessions ask for about 25 s, from ``db.connect`` and from the pools alike; the
    client side likewise, and connects time out. ``options`` in DATABASE_URL reach the
    server too (they used to be dropped)."""
    own = str(conninfo_to_dict(settings.database_url).get("options") or "")
    url = make_conninfo(settings.database_url, options=f"{own} -c statement_timeout=4321".strip())
    tuned = settings.model_copy(update={"database_url": url})
    pool = db.make_pool(tuned, min_size=1, max_size=1, synchronous_commit=False)
    await pool.open()
    try:
        conn = await db.connect(tuned)
        try:
            await _asks_for_keepalives(conn)
        finally:
            await conn.close()
        async with pool.connection() as pooled:
            await _asks_for_keepalives(pooled)
            cur = await pooled.execute("SHOW synchronous_commit")
            assert await cur.fetchone() == {"synchronous_commit": "off"}
    finally:
        await pool.close()


async def test_pgoptions_reaches_the_server_beside_the_keepalives(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq reads PGOPTIONS only when the caller passes no ``options``; tieline always
    passes its own, so an operator's PGOPTIONS used to be ignored without a word."""
    url = conninfo_to_dict(settings.database_url)
    url.pop("options", None)  # PGOPTIONS applies only where the URL sets none
    plain = settings.model_copy(update={"database_url": make_conninfo(**url)})
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=4321")
    conn = await db.connect(plain)
    try:
        await _asks_for_keepalives(conn)
    finally:
        await conn.close()


async def _asks_for_keepalives(conn: AsyncConnection[Any]) -> None:
    cur = await conn.execute(
        "SELECT name, setting, reset_val, source FROM pg_settings WHERE name IN ("
        "'tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count', "
        "'tcp_user_timeout', 'statement_timeout') ORDER BY name"
    )
    rows = [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in await cur.fetchall()]
    tcp = not (conn.info.host or "/").startswith("/")  # on a Unix socket they read 0
    want = [("statement_timeout", "4321", "client")] + [
        (name, value, "client")
        for name, value in (
            ("tcp_keepalives_count", "3"),
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_user_timeout", "25000"),
        )
    ]
    assert [(n, r, src) for n, _, r, src in rows] == want
    if tcp:  # in effect on this connection, not only asked for
        assert [s for _, s, _, _ in rows] == [v for _, v, _ in want]
    params = conn.info.get_parameters()
    assert params["connect_timeout"] == "10" and params["tcp_user_timeout"] == "25000"
    assert (params["keepalives_idle"], params["keepalives_count"]) == ("10", "3")
