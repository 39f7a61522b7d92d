"""The sync service's own state in PostgreSQL (the state schema; not rebuildable from the
log): configured sources with their sealed credentials and status, the calendar/address-book
objects last seen per source, and the events the sync has recorded per source (so an edited
or deleted object can be retracted).

The tables are made by the state schema's migrations (plumbing/migrations, revision 0005),
which every process runs at start through ``plumbing.state.ensure_state_schema``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection
from tieline.plumbing.crypto import MasterKey

Row = dict[str, Any]


SOURCE_COLS = """source_id, workspace_id, kind, url, username, owner, window_days, interval_s,
    created_by, created_at, next_run_at, failures, last_success_at, last_error, last_error_at,
    items_seen, last_run"""


def secret_purpose(ws: str, source_id: str) -> str:
    return f"sync/{ws}/{source_id}"


def item_purpose(source_id: str, href: str) -> str:
    return f"sync-item/{source_id}/{href}"


async def create_source(
    conn: AsyncConnection[Any],
    ws: str,
    *,
    kind: str,
    url: str,
    username: str,
    password: str,
    owner: str | None,
    window_days: int,
    interval_s: int,
    master_key: MasterKey,
    actor: str,
) -> Row:
    """Register a source; its password is stored sealed under the master key."""
    source_id = "src_" + secrets.token_hex(8)
    sealed = master_key.seal(secret_purpose(ws, source_id), password.encode())
    cur = await conn.execute(
        f"""INSERT INTO sync_sources (source_id, workspace_id, kind, url, username, secret,
                owner, window_days, interval_s, created_by)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {SOURCE_COLS}""",
        (source_id, ws, kind, url, username, sealed, owner, window_days, interval_s, actor),
    )
    row: Row | None = await cur.fetchone()
    assert row is not None
    return row


async def statuses(conn: AsyncConnection[Any]) -> list[Row]:
    """Every source's status columns, of every workspace (for ``/metrics``)."""
    cur = await conn.execute(
        "SELECT source_id, kind, last_success_at, last_error, items_seen, next_run_at "
        "FROM sync_sources ORDER BY source_id"
    )
    return list(await cur.fetchall())


async def sources(conn: AsyncConnection[Any], ws: str | None = None) -> list[Row]:
    """Every source of ``ws`` (of every workspace when None), oldest first."""
    where, args = ("WHERE workspace_id = %s", (ws,)) if ws else ("", ())
    cur = await conn.execute(
        f"SELECT {SOURCE_COLS} FROM sync_sources {where} ORDER BY created_at, source_id", args
    )
    return list(await cur.fetchall())


async def source(conn: AsyncConnection[Any], ws: str, source_id: str) -> Row | None:
    cur = await conn.execute(
        f"SELECT {SOURCE_COLS} FROM sync_sources WHERE workspace_id = %s AND source_id = %s",
        (ws, source_id),
    )
    row: Row | None = await cur.fetchone()
    return row


async def delete_source(conn: AsyncConnection[Any], ws: str, source_id: str) -> bool:
    """Forget a source with its cached objects (the events it recorded stay on the log)."""
    cur = await conn.execute(
        "DELETE FROM sync_sources WHERE workspace_id = %s AND source_id = %s", (ws, source_id)
    )
    return cur.rowcount > 0


async def request_run(conn: AsyncConnection[Any], ws: str, source_id: str) -> bool:
    """Make a source due now (``tieline sync run``)."""
    cur = await conn.execute(
        "UPDATE sync_sources SET next_run_at = now() WHERE workspace_id = %s AND source_id = %s",
        (ws, source_id),
    )
    return cur.rowcount > 0


async def claim_due(conn: AsyncConnection[Any], lease_s: float, limit: int) -> list[Row]:
    """Lease up to ``limit`` due sources to this process for ``lease_s`` seconds: another
    sync process skips them until the lease ends (and takes them over if this one died)."""
    cur = await conn.execute(
        f"""UPDATE sync_sources SET lease_until = now() + make_interval(secs => %s)
            WHERE source_id IN (
                SELECT source_id FROM sync_sources
                WHERE next_run_at <= now() AND (lease_until IS NULL OR lease_until < now())
                ORDER BY next_run_at LIMIT %s FOR UPDATE SKIP LOCKED)
            RETURNING {SOURCE_COLS}, secret, tokens""",
        (lease_s, limit),
    )
    return list(await cur.fetchall())


async def claim_one(conn: AsyncConnection[Any], source_id: str, lease_s: float) -> Row | None:
    """Lease one source now whether due or not (None while another process holds it)."""
    cur = await conn.execute(
        f"""UPDATE sync_sources SET lease_until = now() + make_interval(secs => %s)
            WHERE source_id = %s AND (lease_until IS NULL OR lease_until < now())
            RETURNING {SOURCE_COLS}, secret, tokens""",
        (lease_s, source_id),
    )
    row: Row | None = await cur.fetchone()
    return row


def password_of(row: Row, master_key: MasterKey) -> str:
    purpose = secret_purpose(row["workspace_id"], row["source_id"])
    return master_key.unseal(purpose, bytes(row["secret"])).decode()


async def finish_ok(
    conn: AsyncConnection[Any], source_id: str, stats: dict[str, Any], items: int
) -> None:
    """A run succeeded: clear the error and the backoff, plan the next run."""
    await conn.execute(
        """UPDATE sync_sources SET lease_until = NULL, failures = 0, last_success_at = now(),
               last_error = NULL, last_error_at = NULL, items_seen = %s, last_run = %s,
               next_run_at = now() + make_interval(secs => interval_s)
           WHERE source_id = %s""",
        (items, orjson.dumps(stats).decode(), source_id),
    )


async def finish_failed(
    conn: AsyncConnection[Any], source_id: str, error: str, backoff_max_s: float
) -> None:
    """A run failed: keep the error, retry after an exponential backoff (capped)."""
    await conn.execute(
        """UPDATE sync_sources SET lease_until = NULL, failures = failures + 1,
               last_error = %s, last_error_at = now(),
               next_run_at = now() + make_interval(secs => least(%s::float8,
                   least(interval_s, 30) * power(2, least(failures, 16))))
           WHERE source_id = %s""",
        (error[:2000], backoff_max_s, source_id),
    )


# -- cached objects -------------------------------------------------------------------------


async def store_changes(
    conn: AsyncConnection[Any],
    source_id: str,
    collection: str,
    changed: list[tuple[str, str | None, str]],
    deleted: list[str],
    token: str | None,
    master_key: MasterKey,
) -> None:
    """Apply one collection's changes and its new sync token in one transaction: a crash
    leaves the old token with the old objects, so the next pull asks again."""
    async with conn.transaction():
        if deleted:
            await conn.execute(
                "DELETE FROM sync_items WHERE source_id = %s AND href = ANY(%s)",
                (source_id, deleted),
            )
        rows = [
            (
                source_id,
                href,
                collection,
                etag,
                master_key.seal(item_purpose(source_id, href), data.encode()),
            )
            for href, etag, data in changed
        ]
        if rows:
            async with conn.cursor() as cur:
                await cur.executemany(
                    """INSERT INTO sync_items (source_id, href, collection, etag, data)
                       VALUES (%s, %s, %s, %s, %s) ON CONFLICT (source_id, href)
                       DO UPDATE SET etag = excluded.etag, data = excluded.data,
                           collection = excluded.collection""",
                    rows,
                )
        await conn.execute(
            "UPDATE sync_sources SET tokens = tokens || jsonb_build_object(%s::text, %s::text) "
            "WHERE source_id = %s",
            (collection, token, source_id),
        )


async def drop_collections(conn: AsyncConnection[Any], source_id: str, keep: list[str]) -> None:
    """Forget the objects of collections the server no longer lists."""
    await conn.execute(
        "DELETE FROM sync_items WHERE source_id = %s AND NOT (collection = ANY(%s))",
        (source_id, keep),
    )


async def items(
    conn: AsyncConnection[Any], source_id: str, master_key: MasterKey
) -> list[tuple[str, str]]:
    """(href, data) of every object cached for a source."""
    cur = await conn.execute(
        "SELECT href, data FROM sync_items WHERE source_id = %s ORDER BY href", (source_id,)
    )
    return [
        (
            r["href"],
            master_key.unseal(item_purpose(source_id, r["href"]), bytes(r["data"])).decode(),
        )
        for r in await cur.fetchall()
    ]


async def recorded(conn: AsyncConnection[Any], source_id: str) -> list[Row]:
    cur = await conn.execute(
        "SELECT event_id::text AS event_id, href, occurred_at FROM sync_recorded "
        "WHERE source_id = %s",
        (source_id,),
    )
    return list(await cur.fetchall())


async def mark_recorded(
    conn: AsyncConnection[Any], source_id: str, rows: list[tuple[str, str, datetime]]
) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO sync_recorded (source_id, event_id, href, occurred_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(source_id, e, h, t) for e, h, t in rows],
        )


async def mark_retracted(conn: AsyncConnection[Any], source_id: str, event_ids: list[str]) -> None:
    await conn.execute(
        "DELETE FROM sync_recorded WHERE source_id = %s AND event_id = ANY(%s::uuid[])",
        (source_id, event_ids),
    )


# -- address books --------------------------------------------------------------------------


async def cached_etags(
    conn: AsyncConnection[Any], source_id: str
) -> dict[str, dict[str, str | None]]:
    """collection -> href -> ETag of every object cached for a source."""
    cur = await conn.execute(
        "SELECT collection, href, etag FROM sync_items WHERE source_id = %s", (source_id,)
    )
    out: dict[str, dict[str, str | None]] = {}
    for r in await cur.fetchall():
        out.setdefault(r["collection"], {})[r["href"]] = r["etag"]
    return out


async def known_contacts(conn: AsyncConnection[Any], source_id: str) -> dict[str, str]:
    """vCard UID -> the person it was matched to."""
    cur = await conn.execute(
        "SELECT uid, person_id FROM sync_contacts WHERE source_id = %s", (source_id,)
    )
    return {r["uid"]: r["person_id"] for r in await cur.fetchall()}


async def remember_contacts(
    conn: AsyncConnection[Any], source_id: str, uids: dict[str, str]
) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO sync_contacts (source_id, uid, person_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (source_id, uid) DO UPDATE SET person_id = excluded.person_id",
            [(source_id, u, p) for u, p in uids.items()],
        )
