"""PostgreSQL connections scoped to tieline's schema (``search_path``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from tieline.plumbing.config import Settings


def conninfo_kwargs(settings: Settings, rm_schema: str | None = None) -> dict[str, Any]:
    """Connection options: a connection sees tieline's state schema and, when given, one
    read-model generation's schema first (so read-model tables resolve to that generation).

    Autocommit is on: every transaction is an explicit ``conn.transaction()`` block, so a
    stray SELECT can never leave an implicit transaction open that swallows a later commit.
    """
    path = f"{rm_schema},{settings.database_schema}" if rm_schema else settings.database_schema
    return {"options": f"-c search_path={path}", "autocommit": True}


async def connect(
    settings: Settings, *, autocommit: bool = True, rm_schema: str | None = None
) -> AsyncConnection[Any]:
    kwargs = conninfo_kwargs(settings, rm_schema)
    kwargs["autocommit"] = autocommit
    return await AsyncConnection.connect(settings.database_url, **kwargs)


def make_pool(
    settings: Settings,
    *,
    min_size: int = 1,
    max_size: int = 10,
    rm_schema: str | None = None,
    synchronous_commit: bool = True,
    configure: Callable[[AsyncConnection[Any]], Awaitable[None]] | None = None,
) -> AsyncConnectionPool[Any]:
    """A pool for read paths; rows come back as dicts. ``synchronous_commit=False``: commits
    return before their WAL is flushed (a crash of PostgreSQL itself may lose the last fraction
    of a second of them, never corrupt anything): only for records that may be lost that way.
    ``configure`` runs once on each new connection (psycopg_pool's hook)."""
    kwargs = conninfo_kwargs(settings, rm_schema)
    if not synchronous_commit:
        kwargs["options"] += " -c synchronous_commit=off"
    kwargs["autocommit"] = True
    kwargs["row_factory"] = dict_row
    return AsyncConnectionPool(
        settings.database_url,
        kwargs=kwargs,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=10,
        configure=configure,
    )
