"""Read-model generations: blue/green rebuilds.

Every read-model table set lives in its own PostgreSQL schema, a *generation*
(``{state}_g{N}``), fed by its own durable consumer (``{consumer}-g{N}``). Exactly one
generation is ``live``; readers follow it. A rebuild creates a ``building`` generation, replays
the whole stream into it while the live one keeps serving, and then switches the pointer in one
transaction. A ``scratch`` generation (what-if, verify, as-of snapshots) is never switched to.
A change of :data:`tieline.projections.schema.READ_MODEL_VERSION` in the code makes the
worker rebuild into a new generation on start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql

GEN_DDL = """
CREATE TABLE IF NOT EXISTS generations (
    gen          int PRIMARY KEY,
    schema_name  text NOT NULL UNIQUE,
    version      int NOT NULL,
    status       text NOT NULL CHECK (status IN ('building', 'live', 'retired', 'scratch')),
    consumer     text NOT NULL,
    params       jsonb,
    note         text,
    -- How many partitioned workers feed it (one checkpoint row each); a generation is built
    -- for one count, another count builds a new generation.
    partitions   int NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    live_at      timestamptz,
    retired_at   timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS generations_one_live ON generations (status)
    WHERE status = 'live';
-- A table from before partitioned workers gets the column once; the check first, since even
-- ADD COLUMN IF NOT EXISTS takes an exclusive lock (and would deadlock with starters).
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'generations'::regclass
                   AND attname = 'partitions' AND NOT attisdropped) THEN
        ALTER TABLE generations ADD COLUMN partitions int NOT NULL DEFAULT 1;
    END IF;
END $$;
"""


@dataclass(frozen=True)
class Generation:
    """One read-model table set and the consumer that feeds it."""

    gen: int
    schema_name: str
    version: int
    status: str
    consumer: str
    params: dict[str, Any] | None = None
    #: Partitioned workers that feed it (projections/partitions.py); 1: one worker.
    partitions: int = 1

    def with_status(self, status: str) -> Generation:
        """The same generation with another status (after a switch)."""
        return dataclasses.replace(self, status=status)


def _row(r: Any) -> Generation:
    values = list(r.values()) if isinstance(r, dict) else list(r)
    return Generation(*values[:7])


COLS = "gen, schema_name, version, status, consumer, params, partitions"


async def ensure_table(conn: AsyncConnection[Any], state_schema: str) -> None:
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tieline:{state_schema}",)
        )
        await conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(state_schema))
        )
        await conn.execute(
            sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(state_schema))
        )
        await conn.execute(GEN_DDL.encode())


async def live(conn: AsyncConnection[Any], state_schema: str) -> Generation | None:
    cur = await conn.execute(
        sql.SQL("SELECT {} FROM {}.generations WHERE status = 'live'").format(
            sql.SQL(COLS), sql.Identifier(state_schema)
        )
    )
    row = await cur.fetchone()
    return _row(row) if row else None


async def get(conn: AsyncConnection[Any], state_schema: str, gen: int) -> Generation | None:
    cur = await conn.execute(
        sql.SQL("SELECT {} FROM {}.generations WHERE gen = %s").format(
            sql.SQL(COLS), sql.Identifier(state_schema)
        ),
        (gen,),
    )
    row = await cur.fetchone()
    return _row(row) if row else None


async def latest_building(
    conn: AsyncConnection[Any], state_schema: str, version: int, partitions: int = 1
) -> Generation | None:
    cur = await conn.execute(
        sql.SQL(
            "SELECT {} FROM {}.generations WHERE status = 'building' AND version = %s "
            "AND partitions = %s ORDER BY gen DESC LIMIT 1"
        ).format(sql.SQL(COLS), sql.Identifier(state_schema)),
        (version, partitions),
    )
    row = await cur.fetchone()
    return _row(row) if row else None


async def create(
    conn: AsyncConnection[Any],
    state_schema: str,
    consumer_base: str,
    version: int,
    status: str,
    params: dict[str, Any] | None = None,
    note: str | None = None,
    schema_name: str | None = None,
    partitions: int = 1,
) -> Generation:
    """Register a new generation (its tables are created by the worker that fills it)."""
    from psycopg.types.json import Jsonb

    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tieline-gen:{state_schema}",)
        )
        cur = await conn.execute(
            sql.SQL("SELECT coalesce(max(gen), 0) + 1 FROM {}.generations").format(
                sql.Identifier(state_schema)
            )
        )
        row = await cur.fetchone()
        assert row is not None
        n = int(next(iter(row.values())) if isinstance(row, dict) else row[0])
        name = schema_name or f"{state_schema}_g{n}"
        await conn.execute(
            sql.SQL(
                "INSERT INTO {}.generations (gen, schema_name, version, status, consumer, "
                "params, note, partitions, live_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                "CASE WHEN %s = 'live' THEN now() END)"
            ).format(sql.Identifier(state_schema)),
            (
                n,
                name,
                version,
                status,
                f"{consumer_base}-g{n}",
                Jsonb(params) if params is not None else None,
                note,
                partitions,
                status,
            ),
        )
    return Generation(n, name, version, status, f"{consumer_base}-g{n}", params, partitions)


async def ensure_building(
    conn: AsyncConnection[Any],
    state_schema: str,
    consumer_base: str,
    version: int,
    partitions: int,
    note: str,
) -> Generation:
    """The newest ``building`` generation of ``version`` and ``partitions``, registered if
    there is none. Checked and created under one lock, so partitioned workers that start
    together agree on one generation."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tieline-building:{state_schema}",)
        )
        found = await latest_building(conn, state_schema, version, partitions)
        if found is None:
            found = await create(
                conn,
                state_schema,
                consumer_base,
                version,
                "building",
                note=note,
                partitions=partitions,
            )
    return found


async def ensure_live(
    conn: AsyncConnection[Any],
    state_schema: str,
    consumer_base: str,
    version: int,
    partitions: int = 1,
) -> Generation:
    """The live generation, creating generation 1 (fed by ``partitions`` workers) on a fresh
    database."""
    await ensure_table(conn, state_schema)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tieline-live:{state_schema}",)
        )
        current = await live(conn, state_schema)
        if current is None:
            current = await create(
                conn, state_schema, consumer_base, version, "live", partitions=partitions
            )
    return current


async def switch(conn: AsyncConnection[Any], state_schema: str, new: Generation) -> bool:
    """Make ``new`` the live generation and retire the old one, atomically. True when ``new``
    is live afterwards (nothing to do when it was already: partitioned workers may each try);
    False, changing nothing, when its stored row says it is no longer being built (retired
    or dropped since the caller looked), which only the row read under the lock can tell."""
    s = sql.Identifier(state_schema)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tieline-live:{state_schema}",)
        )
        # FOR UPDATE: an operator's retire (which takes no advisory lock) waits for us, or we
        # see it.
        cur = await conn.execute(
            sql.SQL("SELECT status FROM {}.generations WHERE gen = %s FOR UPDATE").format(s),
            (new.gen,),
        )
        row = await cur.fetchone()
        status = None if row is None else (row["status"] if isinstance(row, dict) else row[0])
        if status not in ("building", "live"):
            return False
        if status == "live":
            return True
        current = await live(conn, state_schema)
        if current is not None:
            await _carry_scan_state(conn, current.schema_name, new.schema_name)
        await conn.execute(
            sql.SQL(
                "UPDATE {}.generations SET status = 'retired', "
                "retired_at = now() WHERE status = 'live'"
            ).format(s)
        )
        await conn.execute(
            sql.SQL(
                "UPDATE {}.generations SET status = 'live', live_at = now() WHERE gen = %s"
            ).format(s),
            (new.gen,),
        )
        await conn.execute("SELECT pg_notify('tieline_generation', %s)", (str(new.gen),))
    return True


async def _carry_scan_state(conn: AsyncConnection[Any], old: str, new: str) -> None:
    """The follow-up scan goes on in the new generation where it stopped in the old one: the
    same window (no tie that fell due in between is missed) and positions above the old
    one's (webhooks and live clients have seen those). The old row is locked (a scan running
    there finishes first) and marked retired, so no later scan of the old generation, by a
    process that has not noticed the switch yet, writes what the new one will."""
    cur = await conn.execute(
        "SELECT count(*) AS n FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = 'live_state' AND column_name IN ('scan_seq', 'scan_sub', 'retired')",
        (old,),
    )
    row = await cur.fetchone()
    names = {"n": sql.Identifier(new), "o": sql.Identifier(old)}
    if row is None or (row["n"] if isinstance(row, dict) else row[0]) < 3:
        # An old generation's code kept no scan position: carry the window only.
        await conn.execute(
            sql.SQL(
                "UPDATE {n}.live_state n SET scanned_until = o.scanned_until FROM "
                "{o}.live_state o WHERE n.id = 1 AND o.id = 1 AND o.scanned_until IS NOT NULL"
            ).format(**names)
        )
        return
    await conn.execute(
        sql.SQL("SELECT 1 FROM {o}.live_state WHERE id = 1 FOR UPDATE").format(**names)
    )
    # The live generation's scan state is the one that holds (a generation switched back in
    # takes it too, and scans again).
    await conn.execute(
        sql.SQL(
            "UPDATE {n}.live_state n SET scanned_until = o.scanned_until, "
            "scan_seq = o.scan_seq, scan_sub = o.scan_sub, retired = false "
            "FROM {o}.live_state o WHERE n.id = 1 AND o.id = 1"
        ).format(**names)
    )
    await conn.execute(
        sql.SQL("UPDATE {o}.live_state SET retired = true WHERE id = 1").format(**names)
    )


async def drop(conn: AsyncConnection[Any], state_schema: str, gen: Generation) -> None:
    """Drop a generation's tables (retired or scratch) and forget it."""
    if gen.status == "live":
        raise ValueError("refusing to drop the live generation")
    async with conn.transaction():
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(gen.schema_name))
        )
        await conn.execute(
            sql.SQL("DELETE FROM {}.generations WHERE gen = %s").format(
                sql.Identifier(state_schema)
            ),
            (gen.gen,),
        )
