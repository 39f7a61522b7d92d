"""What an erasure needs from the read side: the archived events a person's key protects,
and a search of the workspace's rows of every table, in the state schema and in every
read-model generation (live, building, retired, scratch), for rows holding given text."""

from __future__ import annotations

import re
from typing import Any

from psycopg import AsyncConnection, sql
from tieline.projections.queries.common import Row


async def events_about(conn: AsyncConnection[Any], ws: str, person: str) -> list[Row]:
    """(type, payload) of the archived events of ``person``: their own person events, every
    relationship event that names them, the introduction steps that name them (a request's
    reason, an outcome's note) and the retractions of events that name them (a reason)."""
    # Four branches, so the first can use the events_person index (an OR of them could not);
    # the last two filter the workspace's events to its introduction steps and retractions.
    cur = await conn.execute(
        """SELECT type, payload FROM events
             WHERE workspace_id = %(ws)s AND payload->>'person_id' = %(p)s
           UNION
           SELECT type, payload FROM events WHERE workspace_id = %(ws)s AND event_id IN (
             SELECT event_id FROM pair_events_v1 WHERE workspace_id = %(ws)s
                AND (person_a = %(p)s OR person_b = %(p)s))
           UNION
           SELECT type, payload FROM events WHERE workspace_id = %(ws)s
              AND type IN ('introduction.requested', 'introduction.outcome')
              AND %(p)s IN (payload->>'requester', payload->>'target', payload->>'introducer')
           UNION
           SELECT type, payload FROM events WHERE workspace_id = %(ws)s
              AND type = 'event.retracted' AND payload->'about' ? %(p)s""",
        {"ws": ws, "p": person},
    )
    return await cur.fetchall()


async def generation_schemas(conn: AsyncConnection[Any], state_schema: str) -> list[str]:
    """Every read-model generation schema that exists: those the ``generations`` table names
    (whatever their status) and any ``{state}_g{N}`` schema left without a row there."""
    cur = await conn.execute(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname LIKE %s",
        (like_escaped(state_schema) + r"\_g%",),
    )
    pattern = re.compile(re.escape(state_schema) + r"_g[0-9]+")
    found = {r["nspname"] for r in await cur.fetchall() if pattern.fullmatch(r["nspname"])}
    cur = await conn.execute(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'generations'",
        (state_schema,),
    )
    if await cur.fetchone() is not None:
        cur = await conn.execute(
            sql.SQL(
                "SELECT g.schema_name FROM {}.generations g "
                "JOIN pg_catalog.pg_namespace n ON n.nspname = g.schema_name"
            ).format(sql.Identifier(state_schema))
        )
        found.update(r["schema_name"] for r in await cur.fetchall())
    return sorted(found)


async def tables_of(conn: AsyncConnection[Any], schemas: list[str]) -> list[tuple[str, str]]:
    """(schema, table) of every ordinary or partitioned table in ``schemas``."""
    cur = await conn.execute(
        """SELECT n.nspname AS schema, c.relname AS table FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p')
           ORDER BY n.nspname, c.relname""",
        (schemas,),
    )
    return [(r["schema"], r["table"]) for r in await cur.fetchall()]


async def _columns(conn: AsyncConnection[Any], schema: str, table: str) -> set[str]:
    cur = await conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s",
        (schema, table),
    )
    return {r["column_name"] for r in await cur.fetchall()}


def like_escaped(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (backslash is LIKE's escape character)."""
    return text.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


def workspace_rows(
    state_schema: str, columns: set[str], ws: str, subject_prefix: str
) -> tuple[sql.Composable, tuple[str, ...]] | None:
    """The condition (on alias ``x``) and its parameters that keep a table's rows to those of
    workspace ``ws``, or None for a table whose rows belong to no workspace (checkpoints,
    generations, migration state). A table is keyed by ``workspace_id``, or reaches it
    through its sync source or webhook delivery, or names it in an event subject."""
    state = sql.Identifier(state_schema)
    if "workspace_id" in columns:
        return sql.SQL("x.workspace_id = %s"), (ws,)
    if "source_id" in columns:
        q = "x.source_id IN (SELECT source_id FROM {}.sync_sources WHERE workspace_id = %s)"
        return sql.SQL(q).format(state), (ws,)
    if "delivery_id" in columns:
        q = (
            "x.delivery_id IN "
            "(SELECT delivery_id FROM {}.webhook_deliveries WHERE workspace_id = %s)"
        )
        return sql.SQL(q).format(state), (ws,)
    if "subject" in columns:  # dead letters: the event's subject names its workspace
        return sql.SQL("x.subject LIKE %s"), (like_escaped(f"{subject_prefix}.ev.{ws}.") + "%",)
    return None


async def rows_containing(
    conn: AsyncConnection[Any],
    state_schema: str,
    patterns: list[str],
    ws: str,
    subject_prefix: str,
) -> tuple[dict[str, int], list[str]]:
    """Rows of workspace ``ws`` per table (``schema.table``: the state schema and every
    generation schema) whose text (the whole row cast to text) matches any of the LIKE
    ``patterns``; and the tables not searched, whose rows belong to no workspace. Other
    workspaces' rows are never searched: a count over them would tell this workspace's
    admin whether another workspace holds a string."""
    schemas = [state_schema, *await generation_schemas(conn, state_schema)]
    found: dict[str, int] = {}
    skipped: list[str] = []
    for schema, table in await tables_of(conn, schemas):
        name = f"{schema}.{table}"
        scope = workspace_rows(
            state_schema, await _columns(conn, schema, table), ws, subject_prefix
        )
        if scope is None:
            skipped.append(name)
            continue
        where, params = scope
        q = sql.SQL("SELECT count(*) AS n FROM {}.{} x WHERE {} AND x::text LIKE ANY(%s)").format(
            sql.Identifier(schema), sql.Identifier(table), where
        )
        cur = await conn.execute(q, (*params, patterns))
        row = await cur.fetchone()
        found[name] = int(row["n"]) if row else 0
    return found, skipped
