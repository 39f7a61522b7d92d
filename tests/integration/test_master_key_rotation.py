"""Rotating the master key against real PostgreSQL: person keys (wrapped and unwrapped),
webhook secrets (current and replaced), sync passwords and synced items sealed under the old
key open under the new key alone after ``rewrap``; nothing is lost, a second pass has nothing
to do, and a value no given key opens is reported, never overwritten."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from cryptography.exceptions import InvalidTag
from psycopg import sql
from psycopg.rows import dict_row
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import KeyStore, MasterKey
from tieline.plumbing.migrations import API_ROLE
from tieline.plumbing.state import ensure_state_schema
from tieline.services.keys.rewrap import rewrap, verify
from tieline.services.sync import state as sync_state
from tieline.services.webhooks import store
from tieline.services.webhooks.rotation import rotate_secret
from tieline.services.webhooks.store import secret_purpose
from typer.testing import CliRunner

from tests.conftest import Servers, unique_settings

WS, OTHER_WS = "w-keys", "w-keys-plain"
OLD, NEW = MasterKey(os.urandom(32)), MasterKey(os.urandom(32))
BOTH = MasterKey(NEW.current, (OLD.current,))


@dataclass
class Sealed:
    """What the old key sealed, in plain text, to compare after the rotation."""

    person_keys: dict[str, bytes | None]
    plain_keys: dict[str, bytes | None]
    endpoint_id: str
    secrets: tuple[str, str]
    source_id: str
    password: str
    items: list[tuple[str, str]]


@pytest.fixture
def settings(servers: Servers) -> Settings:
    return unique_settings(servers)


async def _seal_with_old_key(settings: Settings, conn: Any) -> Sealed:
    pool = db.make_pool(settings, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        people = [f"p{i}" for i in range(1203)]  # more than two batches of 500
        person_keys = await KeyStore(pool, OLD).keys(WS, people, create=True)
        plain_keys = await KeyStore(pool, None).keys(OTHER_WS, ["q1", "q2"], create=True)
        await KeyStore(pool, OLD).destroy(WS, "gone")  # a destroyed key: nothing to seal
    finally:
        await pool.close()
    endpoint = await store.create_endpoint(
        conn, WS, "http://127.0.0.1:9/h", ["relationship.changed"], None, "first", OLD, "t"
    )
    await rotate_secret(conn, WS, endpoint["endpoint_id"], "second", OLD, 3600.0)
    source = await sync_state.create_source(
        conn, WS, kind="caldav", url="http://127.0.0.1:9/dav", username="u", password="pw",
        owner=None, window_days=90, interval_s=900, master_key=OLD, actor="t",
    )  # fmt: skip
    items = [(f"/cal/{i}.ics", f"BEGIN:VEVENT {i}") for i in range(3)]
    changed = [(href, "etag", data) for href, data in items]
    await sync_state.store_changes(conn, source["source_id"], "cal", changed, [], "tok", OLD)
    return Sealed(
        person_keys, plain_keys, endpoint["endpoint_id"], ("second", "first"),
        source["source_id"], "pw", items,
    )  # fmt: skip


async def _readable_under(settings: Settings, conn: Any, key: MasterKey, sealed: Sealed) -> None:
    """Every value the old key sealed opens, unchanged, under ``key``."""
    pool = db.make_pool(settings, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        store_ = KeyStore(pool, key)
        assert await store_.keys(WS, list(sealed.person_keys), fresh=True) == sealed.person_keys
        assert await store_.keys(OTHER_WS, ["q1", "q2"], fresh=True) == sealed.plain_keys
    finally:
        await pool.close()
    cur = await conn.execute(
        "SELECT secret, previous_secret FROM webhook_endpoints WHERE endpoint_id = %s",
        (sealed.endpoint_id,),
    )
    row = await cur.fetchone()
    purpose = secret_purpose(WS, sealed.endpoint_id)
    opened = (key.unseal(purpose, row["secret"]), key.unseal(purpose, row["previous_secret"]))
    assert tuple(v.decode() for v in opened) == sealed.secrets
    cur = await conn.execute(
        "SELECT workspace_id, source_id, secret FROM sync_sources WHERE source_id = %s",
        (sealed.source_id,),
    )
    assert sync_state.password_of(await cur.fetchone(), key) == sealed.password
    assert await sync_state.items(conn, sealed.source_id, key) == sealed.items


def _counts(counts: list[Any], field: str) -> dict[str, int]:
    return {c.name: getattr(c, field) for c in counts}


@contextlib.asynccontextmanager
async def _sealed(settings: Settings) -> AsyncIterator[tuple[Any, Sealed]]:
    """A connection to a new state schema holding values sealed under the old key."""
    conn = await db.connect(settings)
    conn.row_factory = dict_row
    try:
        await ensure_state_schema(conn, settings.database_schema)
        yield conn, await _seal_with_old_key(settings, conn)
    finally:
        await conn.close()


async def test_rewrap_moves_everything_to_the_new_key(settings: Settings) -> None:
    async with _sealed(settings) as (conn, sealed):
        with pytest.raises(InvalidTag):  # before: the new key alone does not open them
            await _readable_under(settings, conn, NEW, sealed)
        before = await verify(conn, BOTH)
        expected = {
            "person keys": 1205,
            "webhook secrets": 1,
            "replaced webhook secrets": 1,
            "sync passwords": 1,
            "synced items": 3,
        }
        assert _counts(before, "remaining") == expected
        assert _counts(await rewrap(conn, BOTH), "resealed") == expected
        after = await verify(conn, NEW)  # the new key alone
        assert _counts(after, "current") == expected
        assert not any(c.remaining or c.unreadable for c in after)
        await _readable_under(settings, conn, NEW, sealed)
        assert not any(c.resealed for c in await rewrap(conn, BOTH))  # nothing left to do
        stranger = await verify(conn, MasterKey(os.urandom(32)))
        assert _counts(stranger, "unreadable") == expected  # the unwrapped ones wrapped too


async def test_a_value_no_given_key_opens_is_reported_and_left_alone(settings: Settings) -> None:
    async with _sealed(settings) as (conn, sealed):
        counts = await rewrap(conn, NEW)  # the old key was not given as a previous one
        assert _counts(counts, "unreadable") == {
            "person keys": 1203,
            "webhook secrets": 1,
            "replaced webhook secrets": 1,
            "sync passwords": 1,
            "synced items": 3,
        }
        assert _counts(counts, "resealed") == {
            "person keys": 2,  # only the unwrapped ones, which need no key to read
            "webhook secrets": 0,
            "replaced webhook secrets": 0,
            "sync passwords": 0,
            "synced items": 0,
        }
        await _readable_under(settings, conn, BOTH, sealed)  # nothing was overwritten


def test_the_command_rewraps_and_says_when_the_previous_key_can_go(settings: Settings) -> None:
    from tieline.services.cli.main import app

    async def seal() -> None:
        async with _sealed(settings):
            pass

    asyncio.run(seal())
    env = {
        "TIELINE_DATABASE_URL": settings.database_url,
        "TIELINE_DATABASE_SCHEMA": settings.database_schema,
        "TIELINE_MASTER_KEY": base64.b64encode(NEW.current).decode(),
        "TIELINE_MASTER_KEY_PREVIOUS": base64.b64encode(OLD.current).decode(),
    }
    runner = CliRunner()
    check = runner.invoke(app, ["master-key", "rewrap", "--check", "--json"], env=env)
    assert check.exit_code == 1, check.output
    assert '"previous_key_needed": true' in check.output
    done = runner.invoke(app, ["master-key", "rewrap"], env=env)
    assert done.exit_code == 0, done.output
    assert "opens under the current master key alone" in done.output
    alone = {**env, "TIELINE_MASTER_KEY_PREVIOUS": ""}
    again = runner.invoke(app, ["master-key", "rewrap", "--check"], env=alone)
    assert again.exit_code == 0, again.output


async def test_a_value_changed_while_rewrap_runs_keeps_the_change(settings: Settings) -> None:
    """A running process re-seals a sync password (under the new key) between rewrap's read
    and its write: rewrap's write does not overwrite it and counts it as left to verify."""
    async with _sealed(settings) as (conn, sealed):
        purpose = sync_state.secret_purpose(WS, sealed.source_id)

        @dataclass(frozen=True)
        class Racing(MasterKey):
            def seal(self, for_: str, plaintext: bytes) -> bytes:
                if for_ == purpose:  # another process, on a connection of its own
                    with psycopg.connect(settings.database_url, autocommit=True) as other:
                        other.execute(
                            f"UPDATE {settings.database_schema}.sync_sources SET secret = %s "
                            "WHERE source_id = %s",
                            (NEW.seal(purpose, b"changed"), sealed.source_id),
                        )
                return super().seal(for_, plaintext)

        counts = await rewrap(conn, Racing(NEW.current, (OLD.current,)))
        passwords = next(c for c in counts if c.name == "sync passwords")
        assert (passwords.resealed, passwords.remaining) == (0, 1)
        after = await verify(conn, NEW)
        assert not any(c.remaining or c.unreadable for c in after)
        cur = await conn.execute(
            "SELECT workspace_id, source_id, secret FROM sync_sources WHERE source_id = %s",
            (sealed.source_id,),
        )
        assert sync_state.password_of(await cur.fetchone(), NEW) == "changed"


async def test_a_role_under_row_level_security_is_refused_not_shown_nothing(
    settings: Settings,
) -> None:
    """The api's role sees only the rows of the workspace it names: rewrap as that role would
    find nothing to do and report success. It is refused instead."""
    async with _sealed(settings) as (conn, _):
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(API_ROLE)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            await verify(conn, BOTH)


async def _waits_for_a_lock(watcher: Any, backend_pid: int) -> None:
    for _ in range(500):
        cur = await watcher.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
            (backend_pid,),
        )
        if await cur.fetchone():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("rewrap never waited for the other transaction's row lock")


async def test_a_batch_rolled_back_for_a_deadlock_is_tried_again(settings: Settings) -> None:
    """A running process (the sync service stores items in the order the server sent them)
    updates two synced items in the reverse of rewrap's key order. The two transactions
    deadlock and PostgreSQL rolls back the one that waited first, rewrap's: its batch is tried
    again, instead of the run ending with "cannot reach PostgreSQL"."""
    async with _sealed(settings) as (conn, sealed):
        first, last = sealed.items[0][0], sealed.items[-1][0]  # hrefs, in key order
        update = (
            f"UPDATE {settings.database_schema}.sync_items SET data = data"
            " WHERE source_id = %s AND href = %s"
        )
        other = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
        watcher = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
        try:
            async with other.transaction():
                await other.execute(update, (sealed.source_id, last))
                running = asyncio.create_task(rewrap(conn, BOTH))
                await _waits_for_a_lock(watcher, conn.info.backend_pid)
                # Waits for rewrap's lock on the first item: a cycle. Rewrap's backend has
                # waited longer, so its deadlock check (after deadlock_timeout) runs first.
                await other.execute(update, (sealed.source_id, first))
            counts = await asyncio.wait_for(running, timeout=60)
        finally:
            await other.close()
            await watcher.close()
        items = next(c for c in counts if c.name == "synced items")
        assert (items.resealed, items.remaining, items.unreadable) == (3, 0, 0)
        assert not any(c.remaining or c.unreadable for c in await verify(conn, NEW))
        await _readable_under(settings, conn, NEW, sealed)
