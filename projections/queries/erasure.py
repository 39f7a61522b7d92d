"""What an erasure needs from the read side: the archived events a person's key protects,
and a search of every table, in the state schema and in every read-model generation
(live, building, retired, scratch), for rows holding given text."""

from __future__ import annotations

import re
from typing import Any

from psycopg import AsyncConnection, sql
from tieline.projections.queries.common import Row


async def events_about(conn: AsyncConnection[Any], ws: str, person: str) -> list[Row]:
    """(type, payload) of the archived events of ``person``: their own person events and
    every relationship event that names them."""
    cur = await conn.execute(
        """SELECT type, payload FROM events WHERE workspace_id = %s AND (
               payload->>'person_id' = %s OR event_id IN (
                 SELECT event_id FROM pair_events_v1 WHERE workspace_id = %s
                    AND (person_a = %s OR person_b = %s)))""",
        (ws, person, ws, person, person),
    )
    return await cur.fetchall()


async def generation_schemas(conn: AsyncConnection[Any], state_schema: str) -> list[str]:
    """Every read-model generation schema that exists: those the ``generations`` table names
    (whatever their status) and any ``{state}_g{N}`` schema left without a row there."""
    cur = await conn.execute(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname LIKE %s",
        (state_schema.replace("\\", "\\\\").replace("_", r"\_").replace("%", r"\%") + r"\_g%",),
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


async def rows_containing(
    conn: AsyncConnection[Any], state_schema: str, patterns: list[str]
) -> dict[str, int]:
    """Rows per table (``schema.table``: the state schema and every generation schema) whose
    text (the whole row cast to text) matches any of the LIKE ``patterns``."""
    schemas = [state_schema, *await generation_schemas(conn, state_schema)]
    found: dict[str, int] = {}
    for schema, table in await tables_of(conn, schemas):
        q = sql.SQL("SELECT count(*) AS n FROM {}.{} x WHERE x::text LIKE ANY(%s)").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        cur = await conn.execute(q, (patterns,))
        row = await cur.fetchone()
        found[f"{schema}.{table}"] = int(row["n"]) if row else 0
    return found
