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
from tieline.plumbing.migrations import runner


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
    if await state_revision(conn, schema) == runner.head():
        return  # the common case at every process start: no Alembic, one query
    await migrate(conn, schema)
