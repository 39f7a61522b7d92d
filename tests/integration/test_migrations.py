"""Migrations of the state tables (plumbing/migrations): a database that the release before
migrations created is upgraded in place and keeps its tokens, keys and access log; a second
upgrade changes nothing; processes starting together migrate once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, sql
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.migrations.runner import head
from tieline.plumbing.state import ensure_state_schema, migrate, state_revision
from tieline.services.auth import create_token, verify_token

pytestmark = pytest.mark.integration

#: The previous release's schema, verbatim: ``STATE_DDL`` of plumbing/state.py as it was before
#: migrations (commit e18ae38), which every process ran at start with ``ensure_state_schema``.
PREVIOUS_RELEASE_DDL = """
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id      text PRIMARY KEY,
    workspace_id  text NOT NULL,
    role          text NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    name          text NOT NULL,
    secret_sha256 text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX IF NOT EXISTS api_tokens_ws ON api_tokens (workspace_id);

-- One data key per person. Destroying it (key = NULL) is erasure: every ciphertext of that
-- person's personal data, in the log and everywhere else, becomes unreadable.
CREATE TABLE IF NOT EXISTS person_keys (
    workspace_id  text NOT NULL,
    person_id     text NOT NULL,
    key           bytea,
    wrapped       boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    PRIMARY KEY (workspace_id, person_id)
);

-- Who read whose personal data, when, through which endpoint.
CREATE TABLE IF NOT EXISTS access_log (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    workspace_id  text NOT NULL,
    actor         text NOT NULL,
    endpoint      text NOT NULL,
    person_ids    text[] NOT NULL
);
CREATE INDEX IF NOT EXISTS access_log_ws_at ON access_log (workspace_id, at);

-- Webhook endpoints an admin registered; the signing secret is sealed under the master key
-- and never returned after creation. After too many consecutive failed attempts (or a 410)
-- an endpoint is disabled, with the reason.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    endpoint_id          text PRIMARY KEY,
    workspace_id         text NOT NULL,
    url                  text NOT NULL,
    kinds                text[] NOT NULL,
    description          text,
    secret               bytea NOT NULL,
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    consecutive_failures int NOT NULL DEFAULT 0,
    disabled_at          timestamptz,
    disabled_reason      text
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_ws ON webhook_endpoints (workspace_id);

-- One delivery per (endpoint, change-log position): the message (its id is the webhook-id,
-- the same on every attempt), its state and retry schedule. The body is kept as sent.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               bigserial PRIMARY KEY,
    delivery_id      text NOT NULL UNIQUE,
    endpoint_id      text NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    workspace_id     text NOT NULL,
    position         text NOT NULL,
    kind             text NOT NULL,
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    manual           boolean NOT NULL DEFAULT false,
    last_status      int,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (endpoint_id, position)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);

-- Every attempt of a delivery: when, how long, the receiver's status or the error.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  text NOT NULL REFERENCES webhook_deliveries (delivery_id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    duration_ms  double precision,
    status_code  int,
    error        text,
    manual       boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
"""


#: The write side's tables as its services made them before migrations (``WRITE_DDL`` of
#: services/write_state.py on main at 90bc06e, run by ``ensure_write_schema``).
WRITE_SIDE_DDL_BEFORE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS write_events (
    event_id      uuid PRIMARY KEY,
    workspace_id  text NOT NULL,
    type          text NOT NULL,
    digest        text,            -- NULL: learnt from the log, the client's body is unknown
    seq           bigint,          -- NULL: taken, publish not confirmed yet
    retracted_by  uuid,
    taken_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS write_introductions (
    workspace_id      text NOT NULL,
    introduction_id   uuid NOT NULL,
    requester         text NOT NULL,
    introducer        text NOT NULL,
    target            text NOT NULL,
    requester_consent boolean,
    target_consent    boolean,
    made_event_id     uuid,
    PRIMARY KEY (workspace_id, introduction_id)
);
-- One row per stream once the write-side tables hold everything the log held when they were
-- created (see WriteState.backfill).
CREATE TABLE IF NOT EXISTS write_backfill (
    stream     text PRIMARY KEY,
    upto_seq   bigint NOT NULL,
    done_at    timestamptz NOT NULL DEFAULT now()
);
"""


async def _previous_release(settings: Settings) -> AsyncConnection[Any]:
    """A connection to a schema made exactly as the previous release made it."""
    conn = await db.connect(settings)
    schema = sql.Identifier(settings.database_schema)
    async with conn.transaction():
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
        await conn.execute(PREVIOUS_RELEASE_DDL.encode())
    return conn


async def _catalog(conn: AsyncConnection[Any], schema: str) -> list[Any]:
    """The schema's columns, indexes, policies and RLS flags: its shape, to compare."""
    cur = await conn.execute(
        """SELECT 'column', table_name, column_name || ' ' || data_type FROM
               information_schema.columns WHERE table_schema = %(s)s
           UNION ALL SELECT 'index', tablename, indexdef FROM pg_indexes WHERE schemaname = %(s)s
           UNION ALL SELECT 'policy', tablename, policyname || ' ' || qual FROM pg_policies
               WHERE schemaname = %(s)s
           UNION ALL SELECT 'rls', relname, relrowsecurity::text FROM pg_class
               WHERE relnamespace = %(s)s::regnamespace AND relkind = 'r'
           ORDER BY 1, 2, 3""",
        {"s": schema},
    )
    return await cur.fetchall()


async def test_upgrade_of_previous_release_keeps_tokens_keys_and_access_log(
    settings: Settings,
) -> None:
    conn = await _previous_release(settings)
    schema = settings.database_schema
    try:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        token = await create_token(conn, "acme", "admin", "before-upgrade")
        await conn.execute(
            "INSERT INTO person_keys (workspace_id, person_id, key, wrapped) "
            "VALUES ('acme', 'ada', %s, false)",
            (b"k" * 32,),
        )
        await conn.execute(
            "INSERT INTO access_log (workspace_id, actor, endpoint, person_ids) "
            "VALUES ('acme', 'token:x', '/people', ARRAY['ada'])"
        )
        assert await state_revision(conn, schema) is None

        # What every process does at start (the api, the services, tieline up, bootstrap).
        await ensure_state_schema(conn, schema)

        assert await state_revision(conn, schema) == head()
        principal = await verify_token(conn, token)
        assert principal is not None
        assert (principal.workspace_id, principal.role, principal.name) == (
            "acme",
            "admin",
            "before-upgrade",
        )
        cur = await conn.execute("SELECT workspace_id, person_id, key FROM person_keys")
        assert await cur.fetchall() == [("acme", "ada", b"k" * 32)]
        cur = await conn.execute("SELECT actor, person_ids FROM access_log")
        assert await cur.fetchall() == [("token:x", ["ada"])]
        # The upgrade did its work on the kept tables: row-level security and the new table.
        cur = await conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace "
            "AND relrowsecurity ORDER BY relname",
            (schema,),
        )
        assert [r[0] for r in await cur.fetchall()] == [
            "access_log",
            "api_tokens",
            "person_keys",
            "sync_sources",
            "webhook_attempts",
            "webhook_deliveries",
            "webhook_endpoints",
            "write_events",
            "write_introductions",
            "write_merges",
        ]
        cur = await conn.execute("SELECT count(*) FROM rate_limits")
        assert await cur.fetchone() == (0,)
    finally:
        await conn.close()


async def test_upgrade_keeps_the_write_sides_tables_made_before_migrations(
    settings: Settings,
) -> None:
    conn = await _previous_release(settings)
    schema = settings.database_schema
    try:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(WRITE_SIDE_DDL_BEFORE_MIGRATIONS.encode())
        event_id = "6f1c1f7e-3b0a-4c57-9a4e-0d2f8c1b2a33"
        await conn.execute(
            "INSERT INTO write_events (event_id, workspace_id, type, digest, seq) "
            "VALUES (%s, 'acme', 'person.added', 'abc', 7)",
            (event_id,),
        )
        await conn.execute("INSERT INTO write_backfill (stream, upto_seq) VALUES ('T', 7)")

        await ensure_state_schema(conn, schema)

        assert await state_revision(conn, schema) == head()
        cur = await conn.execute("SELECT event_id::text, workspace_id, seq FROM write_events")
        assert await cur.fetchall() == [(event_id, "acme", 7)]
        # Revision 0007: an id is unique per workspace; another one may use it for its own.
        await conn.execute(
            "INSERT INTO write_events (event_id, workspace_id, type) "
            "VALUES (%s, 'other', 'person.added')",
            (event_id,),
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute(
                "INSERT INTO write_events (event_id, workspace_id, type) "
                "VALUES (%s, 'acme', 'person.added')",
                (event_id,),
            )
        cur = await conn.execute("SELECT stream, upto_seq FROM write_backfill")
        assert await cur.fetchall() == [("T", 7)]
    finally:
        await conn.close()


async def test_second_upgrade_changes_nothing(settings: Settings) -> None:
    conn = await db.connect(settings)
    schema = settings.database_schema
    try:
        first = await migrate(conn, schema)
        assert (first.before, first.after, first.changed) == (None, head(), True)
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        token = await create_token(conn, "acme", "read", "kept")
        shape = await _catalog(conn, schema)
        assert shape, "the catalog query found the schema"

        again = await migrate(conn, schema)

        assert (again.before, again.after, again.changed) == (head(), head(), False)
        assert await _catalog(conn, schema) == shape
        assert await verify_token(conn, token) is not None
    finally:
        await conn.close()


async def test_processes_starting_together_migrate_once(settings: Settings) -> None:
    conns = [await db.connect(settings) for _ in range(4)]
    try:
        await asyncio.gather(*(ensure_state_schema(c, settings.database_schema) for c in conns))
        cur = await conns[0].execute(
            sql.SQL("SELECT version_num FROM {}.alembic_version").format(
                sql.Identifier(settings.database_schema)
            )
        )
        assert await cur.fetchall() == [(head(),)]
    finally:
        for c in conns:
            await c.close()


def test_tieline_migrate_command(settings: Settings) -> None:
    """The commands docs/operations.md gives for an upgrade."""
    env = {**os.environ, **settings.env("database_url", "database_schema")}
    tieline = [sys.executable, "-m", "tieline.services.cli.main"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*tieline, *args], env=env, capture_output=True, text=True, timeout=120
        )

    check = run("migrate", "--check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"at revision None, this release's is {head()}" in check.stdout
    done = run("migrate")
    assert done.returncode == 0, done.stderr
    assert f"upgraded from revision None to {head()}" in done.stdout
    again = run("migrate")
    assert f"already at revision {head()}; nothing to do" in again.stdout
    assert run("migrate", "--check").returncode == 0


async def test_an_owner_without_createrole_migrates_once_the_api_role_is_made_for_it(
    settings: Settings,
) -> None:
    """As on a managed PostgreSQL (CloudNativePG's app user): the login owns its tables but
    may not create roles; the operator made ``tieline_api`` and the membership once
    (deploy/k8s/base/postgres.yaml ``postInitApplicationSQL``), and the migrations and the
    read-model DDL then run as that login."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from tieline.plumbing.migrations import API_ROLE
    from tieline.projections.schema import ensure_schema

    owner = f"tl_owner_{settings.database_schema}"
    password = "owner-password-for-the-test"
    su = await db.connect(settings)
    try:
        await su.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOCREATEROLE NOSUPERUSER PASSWORD {}").format(
                sql.Identifier(owner), sql.Literal(password)
            )
        )
        dbname = conninfo_to_dict(settings.database_url).get("dbname") or "postgres"
        await su.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(str(dbname)), sql.Identifier(owner)
            )
        )
        # What the operator's postInitApplicationSQL does (the role may exist already: it is
        # one per PostgreSQL cluster).
        cur = await su.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (API_ROLE,))
        if await cur.fetchone() is None:
            await su.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(API_ROLE)))
        await su.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(API_ROLE), sql.Identifier(owner))
        )
        conninfo = make_conninfo(settings.database_url, user=owner, password=password)
        conn = await AsyncConnection.connect(conninfo, autocommit=True)
        try:
            cur = await conn.execute(
                "SELECT rolcreaterole, rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            assert await cur.fetchone() == (False, False)
            await ensure_state_schema(conn, settings.database_schema)
            await ensure_schema(conn, f"{settings.database_schema}_g1")
            assert await state_revision(conn, settings.database_schema) == head()
            # The api's scoped transaction works as this login.
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(API_ROLE)))
                await conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.api_tokens").format(
                        sql.Identifier(settings.database_schema)
                    )
                )
        finally:
            await conn.close()
    finally:
        for schema in (settings.database_schema, f"{settings.database_schema}_g1"):
            await su.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
        await su.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(owner)))
        await su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(owner)))
        await su.close()
