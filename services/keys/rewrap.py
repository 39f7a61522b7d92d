"""Rotating the master key: every value sealed under an old key is sealed again under the new.

The master key (``TIELINE_MASTER_KEY``) seals four kinds of values in the state schema: the
per-person keys (crypto-shredding), webhook signing secrets (the current one and, during a
webhook rotation, the previous one), CalDAV/CardDAV passwords and the cached calendar and
address-book items of the sync service. A rotation, without downtime:

1. every process runs with the new key as ``TIELINE_MASTER_KEY`` and the old one as
   ``TIELINE_MASTER_KEY_PREVIOUS``: values sealed under either open; new ones are sealed
   under the new key;
2. :func:`rewrap` (``tieline master-key rewrap``) re-seals every value still under a previous
   key, and person keys stored unwrapped (an installation that ran without a master key);
3. once it reports that everything opens under the new key alone, the previous key can go.

Rows are re-sealed in batches of their own transactions, each UPDATE conditional on the value
it read (compare-and-set): a value a running process changed meanwhile is left to that process
(it sealed it under the current key) and looked at again by the verification pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from psycopg import AsyncConnection, sql
from psycopg.errors import DeadlockDetected, SerializationFailure
from psycopg.rows import dict_row
from tieline.plumbing.crypto import MasterKey, key_purpose
from tieline.plumbing.retry import LOCK
from tieline.services.sync.state import item_purpose
from tieline.services.sync.state import secret_purpose as sync_purpose
from tieline.services.webhooks.store import secret_purpose as webhook_purpose

__all__ = ["SEALED", "Count", "Sealed", "rewrap", "verify"]

BATCH = 500
#: What PostgreSQL rolls a batch back for that trying it again can cure (40P01, 40001).
#: (psycopg makes DeadlockDetected an OperationalError, not a TransactionRollback.)
_ROLLED_BACK = (DeadlockDetected, SerializationFailure)


@dataclass(frozen=True)
class Sealed:
    """One column of sealed values: its table, primary key and what each value is sealed for."""

    name: str
    table: str
    keys: tuple[str, ...]
    column: str
    purpose: Callable[[dict[str, Any]], str]
    #: Further columns the purpose is made of.
    reads: tuple[str, ...] = ()
    #: person_keys only: a flag saying whether the value is sealed at all.
    wrapped_flag: str | None = None


SEALED = (
    Sealed(
        "person keys",
        "person_keys",
        ("workspace_id", "person_id"),
        "key",
        lambda r: key_purpose(r["workspace_id"], r["person_id"]),
        wrapped_flag="wrapped",
    ),
    Sealed(
        "webhook secrets",
        "webhook_endpoints",
        ("endpoint_id",),
        "secret",
        lambda r: webhook_purpose(r["workspace_id"], r["endpoint_id"]),
        reads=("workspace_id",),
    ),
    Sealed(
        "replaced webhook secrets",
        "webhook_endpoints",
        ("endpoint_id",),
        "previous_secret",
        lambda r: webhook_purpose(r["workspace_id"], r["endpoint_id"]),
        reads=("workspace_id",),
    ),
    Sealed(
        "sync passwords",
        "sync_sources",
        ("source_id",),
        "secret",
        lambda r: sync_purpose(r["workspace_id"], r["source_id"]),
        reads=("workspace_id",),
    ),
    Sealed(
        "synced items",
        "sync_items",
        ("source_id", "href"),
        "data",
        lambda r: item_purpose(r["source_id"], r["href"]),
    ),
)


@dataclass
class Count:
    """What one pass found in one column."""

    name: str
    #: Opened under the current key alone (nothing to do).
    current: int = 0
    #: Re-sealed under the current key by this pass.
    resealed: int = 0
    #: Under a previous key, or unwrapped, still (verification), or changed by a running
    #: process while this pass read it (left to that process).
    remaining: int = 0
    #: Opened under no key given: a key is missing from TIELINE_MASTER_KEY(_PREVIOUS).
    unreadable: int = 0


def _select(s: Sealed, first: bool) -> sql.Composed:
    """A batch of rows holding a value, in key order, after the last one seen."""
    keys = sql.SQL(", ").join(map(sql.Identifier, s.keys))
    after = sql.SQL(", ").join(sql.Placeholder() * len(s.keys))
    return sql.SQL(
        "SELECT {cols}, {col} AS value FROM {table} WHERE {col} IS NOT NULL{after} "
        "ORDER BY {keys} LIMIT {n}"
    ).format(
        cols=sql.SQL(", ").join(
            map(sql.Identifier, (*s.keys, *s.reads, *filter(None, [s.wrapped_flag])))
        ),
        col=sql.Identifier(s.column),
        table=sql.Identifier(s.table),
        after=sql.SQL("") if first else sql.SQL(" AND ({}) > ({})").format(keys, after),
        keys=keys,
        n=sql.Literal(BATCH),
    )


def _update(s: Sealed) -> sql.Composed:
    """Set the value (and the flag) where the row still holds the value read."""
    flag = (
        sql.SQL(", {} = true").format(sql.Identifier(s.wrapped_flag))
        if s.wrapped_flag
        else sql.SQL("")
    )
    match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in s.keys)
    return sql.SQL("UPDATE {table} SET {col} = %s{flag} WHERE {match} AND {col} = %s").format(
        table=sql.Identifier(s.table), col=sql.Identifier(s.column), flag=flag, match=match
    )


def _open(s: Sealed, row: dict[str, Any], key: MasterKey) -> tuple[bytes | None, bool]:
    """(the plaintext, whether it is under the current key already); (None, False) when no
    key opens it."""
    value = bytes(row["value"])
    if s.wrapped_flag and not row[s.wrapped_flag]:
        return value, False  # stored unwrapped: wrap it
    try:
        return key.opened(s.purpose(row), value)
    except InvalidTag:
        return None, False


async def _pass(conn: AsyncConnection[Any], s: Sealed, key: MasterKey, *, write: bool) -> Count:
    """Read ``s`` in key order, batch by batch; with ``write``, re-seal what needs it. A batch
    rolled back by the server for a deadlock or a serialization failure (a running process
    updating the same rows in another order: the sync service stores items in the order the
    server sent them) is tried again, up to five times, instead of ending the run as if the
    database could not be reached."""
    count = Count(s.name)
    after: tuple[Any, ...] = ()
    while True:
        async for attempt in LOCK.retrying(_ROLLED_BACK, attempts=5):
            with attempt:
                rows, part = await _batch(conn, s, key, after, write=write)
        for field in ("current", "resealed", "remaining", "unreadable"):
            setattr(count, field, getattr(count, field) + getattr(part, field))
        if len(rows) < BATCH:
            return count
        after = tuple(rows[-1][k] for k in s.keys)


async def _batch(
    conn: AsyncConnection[Any], s: Sealed, key: MasterKey, after: tuple[Any, ...], *, write: bool
) -> tuple[list[dict[str, Any]], Count]:
    """One batch of ``s`` after ``after``, in a transaction of its own: its rows, and what it
    found (counted only once it has committed)."""
    part = Count(s.name)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_select(s, not after), after)
        rows = await cur.fetchall()
        updates = []
        for row in rows:
            plain, current = _open(s, row, key)
            if plain is None:
                part.unreadable += 1
            elif current:
                part.current += 1
            elif not write:
                part.remaining += 1
            else:
                sealed = key.seal(s.purpose(row), plain)
                updates.append((sealed, *(row[k] for k in s.keys), row["value"]))
        if updates:  # one pipeline of UPDATEs (psycopg's executemany), not a round trip each
            await cur.executemany(_update(s), updates)
            part.resealed += cur.rowcount
            # A row changed meanwhile kept its new value: the verification looks again.
            part.remaining += len(updates) - cur.rowcount
    return rows, part


async def _passes(conn: AsyncConnection[Any], key: MasterKey, *, write: bool) -> list[Count]:
    # A role under row-level security would see no rows and report success; with this
    # PostgreSQL raises instead (only the owner or a BYPASSRLS role reads every workspace).
    await conn.execute("SET row_security = off")
    return [await _pass(conn, s, key, write=write) for s in SEALED]


async def rewrap(conn: AsyncConnection[Any], key: MasterKey) -> list[Count]:
    """Re-seal under ``key.current`` every sealed value that opens only under a previous key
    (or is stored unwrapped); one count per column."""
    return await _passes(conn, key, write=True)


async def verify(conn: AsyncConnection[Any], key: MasterKey) -> list[Count]:
    """Count, without writing, what opens under the current key, what only under a previous
    one (``remaining``) and what under none."""
    return await _passes(conn, key, write=False)
