"""Row-level security, the second wall between workspaces: the api's read connections run as a
role without BYPASSRLS, with the workspace set per transaction (``SET LOCAL``), so a query
that forgot its ``WHERE workspace_id`` still returns only the caller's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, sql
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.migrations import API_ROLE
from tieline.plumbing.state import ensure_state_schema
from tieline.projections.readpool import LivePool
from tieline.projections.schema import SHARED_TABLES, WORKSPACE_TABLES
from tieline.services.api.runtime import REQUEST_WORKSPACE, Connections
from tieline.services.auth import create_token

pytestmark = pytest.mark.integration

WORKSPACES = ("acme", "rival")


async def _seed(conn: AsyncConnection[Any], workspace: str) -> None:
    """One person, one token, one key and one access-log entry of ``workspace`` (written as
    the owner, as the worker and the write services do)."""
    await conn.execute(
        """INSERT INTO people_v1 (workspace_id, person_id, added_event_id, added_at,
               updated_at, last_seq) VALUES (%s, %s, %s, now(), now(), 1)""",
        (workspace, f"{workspace}-person", uuid.uuid4()),
    )
    await create_token(conn, workspace, "read", f"{workspace}-token")
    await conn.execute(
        "INSERT INTO person_keys (workspace_id, person_id, key, wrapped) VALUES (%s, %s, %s, "
        "false)",
        (workspace, f"{workspace}-person", b"k" * 32),
    )
    await conn.execute(
        "INSERT INTO access_log (workspace_id, actor, endpoint, person_ids) "
        "VALUES (%s, 'token:t', '/people', ARRAY['p'])",
        (workspace,),
    )


@pytest.fixture
async def connections(settings: Settings) -> AsyncIterator[Connections]:
    """The api's connections (its read pool only: no NATS needed) over two seeded
    workspaces."""
    conns = Connections(settings)
    await conns.pool.open()
    async with conns.system() as conn:
        await ensure_state_schema(conn, settings.database_schema)
        for ws in WORKSPACES:
            await _seed(conn, ws)
    try:
        yield conns
    finally:
        await conns.pool.close()
        await conns.audit_pool.close()


UNFILTERED = {
    "people_v1": "SELECT workspace_id FROM people_v1",
    "api_tokens": "SELECT workspace_id FROM api_tokens",
    "person_keys": "SELECT workspace_id FROM person_keys",
    "access_log": "SELECT workspace_id FROM access_log",
}


async def _workspaces_seen(conn: AsyncConnection[Any], query: str) -> set[str]:
    cur = await conn.execute(query)
    return {row["workspace_id"] for row in await cur.fetchall()}


async def test_a_query_without_its_workspace_filter_returns_only_the_callers_rows(
    connections: Connections,
) -> None:
    # The owner (worker, write services) sees every workspace: the rows are there.
    async with connections.system() as conn:
        for query in UNFILTERED.values():
            assert await _workspaces_seen(conn, query) == set(WORKSPACES)

    # What a route's `async with rt.connections.connection()` gets once `require` has bound
    # the caller's workspace.
    for ws in WORKSPACES:
        bound = REQUEST_WORKSPACE.set(ws)
        try:
            async with connections.connection() as conn:
                for table, query in UNFILTERED.items():
                    assert await _workspaces_seen(conn, query) == {ws}, table
                cur = await conn.execute(
                    "SELECT current_user AS role, rolbypassrls, rolsuper FROM pg_roles "
                    "WHERE rolname = current_user"
                )
                assert await cur.fetchone() == {
                    "role": API_ROLE,
                    "rolbypassrls": False,
                    "rolsuper": False,
                }
        finally:
            REQUEST_WORKSPACE.reset(bound)


async def test_a_scoped_transaction_cannot_write_into_another_workspace(
    connections: Connections,
) -> None:
    bound = REQUEST_WORKSPACE.set("acme")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            async with connections.connection() as conn:
                await create_token(conn, "rival", "admin", "smuggled")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            async with connections.connection() as conn:
                await conn.execute("DROP TABLE people_v1")
    finally:
        REQUEST_WORKSPACE.reset(bound)
    # The role and the workspace ended with the transaction: the pooled connection is the
    # owner's again, unscoped.
    async with connections.system() as conn:
        cur = await conn.execute("SELECT current_user = session_user AS same")
        assert (await cur.fetchone())["same"]
        assert await _workspaces_seen(conn, UNFILTERED["api_tokens"]) == set(WORKSPACES)


async def test_a_transaction_that_names_no_workspace_sees_no_rows(settings: Settings) -> None:
    pool = LivePool(settings)
    await pool.open()
    try:
        async with pool.connection() as conn:
            await ensure_state_schema(conn, settings.database_schema)
            await _seed(conn, "acme")
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(API_ROLE)))
                for query in UNFILTERED.values():
                    assert await _workspaces_seen(conn, query) == set()
    finally:
        await pool.close()


async def test_every_table_keyed_on_a_workspace_has_a_policy(settings: Settings) -> None:
    """Guards tables added later (a new read model or state table): one with a
    ``workspace_id`` column and no row-level security fails here."""
    pool = LivePool(settings)
    await pool.open()  # the live generation's read-model tables
    try:
        async with pool.connection() as conn:
            await ensure_state_schema(conn, settings.database_schema)
            generation = pool.generation.schema_name
        conn = await db.connect(settings)
        try:
            cur = await conn.execute(
                """SELECT c.table_schema || '.' || c.table_name, k.relrowsecurity,
                          EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = k.oid)
                   FROM information_schema.columns c
                   JOIN pg_class k ON k.oid = (quote_ident(c.table_schema) || '.'
                                               || quote_ident(c.table_name))::regclass
                   WHERE c.table_schema = ANY(%s) AND c.column_name = 'workspace_id'
                     AND k.relkind = 'r'
                   ORDER BY 1""",
                ([settings.database_schema, generation],),
            )
            rows = await cur.fetchall()
        finally:
            await conn.close()
    finally:
        await pool.close()
    assert len(rows) >= 11, rows  # 5 state tables + 6 read-model tables at least
    unprotected = [name for name, enabled, policy in rows if not (enabled and policy)]
    assert unprotected == []


async def test_the_api_role_reads_no_table_of_a_generation_that_names_any_workspace(
    settings: Settings,
) -> None:
    """The api role may read a generation's workspace tables (under their policies) and the
    tables of stream positions, nothing else: the dead letters name any workspace in their
    subjects and details, and a table added later is not readable until it is listed."""
    pool = LivePool(settings)
    await pool.open()
    try:
        async with pool.connection() as conn:
            await ensure_state_schema(conn, settings.database_schema)
            generation = pool.generation.schema_name
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {}.dead_letters (projection, stream_seq, subject, reason, "
                    "detail) VALUES ('p', 1, 'tieline.events.rival.person.added', 'poison', "
                    "'rival''s payload')"
                ).format(sql.Identifier(generation))
            )
            cur = await conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r' "
                "AND has_table_privilege(%s, c.oid, 'SELECT') ORDER BY 1",
                (generation, API_ROLE),
            )
            readable = {r["relname"] for r in await cur.fetchall()}
            bound = REQUEST_WORKSPACE.set("acme")
            try:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    async with conn.transaction():
                        await conn.execute(
                            sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(API_ROLE))
                        )
                        await conn.execute(
                            sql.SQL("SELECT detail FROM {}.dead_letters").format(
                                sql.Identifier(generation)
                            )
                        )
            finally:
                REQUEST_WORKSPACE.reset(bound)
    finally:
        await pool.close()
    assert readable == set(WORKSPACE_TABLES) | set(SHARED_TABLES)
    assert "dead_letters" not in readable
