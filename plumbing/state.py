"""Tables that hold the services' own state (not rebuildable from the log): API tokens,
per-person encryption keys, the access log, webhooks and the shared rate-limit counters.

Their DDL lives in Alembic revisions (plumbing/migrations/versions/); every process brings the
schema to this release's revision at start through :func:`ensure_state_schema`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo
from tieline.plumbing.migrations import API_ROLE, API_ROLE_DDL, runner

#: What the api role may do on the state tables, inside its workspace-scoped transactions
#: (row-level security limits it to the workspace's rows). Granted at every start rather than
#: by a migration: the role is per PostgreSQL cluster, so a schema restored elsewhere
#: (``pg_restore --no-privileges``) gets its grants back there. A table the api does not use
#: in a scoped transaction (``rate_limits``, ``alembic_version``) is not listed.
API_GRANTS = {
    "api_tokens": "SELECT, INSERT, UPDATE",
    "person_keys": "SELECT, INSERT, UPDATE",
    "access_log": "SELECT, INSERT",
    "webhook_endpoints": "SELECT, INSERT, UPDATE, DELETE",
    "webhook_deliveries": "SELECT, INSERT, UPDATE, DELETE",
    "webhook_attempts": "SELECT, INSERT, DELETE",
    "sync_sources": "SELECT, INSERT, UPDATE, DELETE",
}
API_SEQUENCES = ("access_log_id_seq", "webhook_deliveries_id_seq", "webhook_attempts_id_seq")


def conninfo_of(conn: AsyncConnection[Any]) -> str:
    """Parameters for another connection like ``conn`` (its dsn leaves the password out)."""
    password = conn.pgconn.password
    return make_conninfo(conn.info.dsn, password=password.decode() if password else None)


async def state_revision(conn: AsyncConnection[Any], schema: str) -> str | None:
    """The Alembic revision ``schema`` is at, or None when it was never migrated."""
    cur = await conn.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'alembic_version'",
        (schema,),
    )
    if await cur.fetchone() is None:
        return None
    cur = await conn.execute(
        sql.SQL("SELECT version_num FROM {}.alembic_version").format(sql.Identifier(schema))
    )
    found = await cur.fetchone()
    if found is None:
        return None
    return str(found["version_num"] if isinstance(found, dict) else found[0])


async def migrate(conn: AsyncConnection[Any], schema: str) -> runner.Upgrade:
    """Upgrade ``schema`` to this release's newest revision (Alembic, on a connection of its
    own in a thread, made from ``conn``'s parameters); returns the revisions before/after."""
    return await asyncio.to_thread(runner.upgrade, conninfo_of(conn), schema)


async def ensure_state_schema(conn: AsyncConnection[Any], schema: str) -> None:
    """Bring the schema and its state tables to this release's revision (idempotent, safe to
    race: the migration holds the schema's advisory lock, later starters find it done).

    A database made by a release before migrations is upgraded in place: the baseline
    revision's DDL is ``IF NOT EXISTS``, so existing tables and their rows are kept.
    """
    if await state_revision(conn, schema) != runner.head():
        await migrate(conn, schema)
    await grant_api_role(conn, schema)


async def grant_api_role(conn: AsyncConnection[Any], schema: str) -> None:
    """Make the api role (where the login may) and grant it :data:`API_GRANTS` on ``schema``
    (idempotent; under the schema's lock, since concurrent GRANTs on one table fail)."""
    s, role = sql.Identifier(schema), sql.Identifier(API_ROLE)
    statements = [
        sql.SQL(API_ROLE_DDL),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {};").format(s, role),
        *(
            sql.SQL("GRANT {} ON {} TO {};").format(
                sql.SQL(rights), sql.Identifier(schema, table), role
            )
            for table, rights in API_GRANTS.items()
        ),
        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {};").format(
            sql.SQL(", ").join(sql.Identifier(schema, q) for q in API_SEQUENCES), role
        ),
    ]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tieline:{schema}",))
        await conn.execute(sql.Composed(statements))
