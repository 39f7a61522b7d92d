"""PostgreSQL connections scoped to tieline's schema (``search_path``)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from services.config import Settings


def conninfo_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection options: every connection sees only tieline's schema by default.

    Autocommit is on: every transaction is an explicit ``conn.transaction()`` block, so a
    stray SELECT can never leave an implicit transaction open that swallows a later commit.
    """
    return {"options": f"-c search_path={settings.database_schema}", "autocommit": True}


async def connect(settings: Settings, *, autocommit: bool = True) -> AsyncConnection[Any]:
    kwargs = conninfo_kwargs(settings)
    kwargs["autocommit"] = autocommit
    return await AsyncConnection.connect(settings.database_url, **kwargs)


def make_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 10
) -> AsyncConnectionPool[Any]:
    """A pool for read paths; rows come back as dicts."""
    kwargs = conninfo_kwargs(settings)
    kwargs["autocommit"] = True
    kwargs["row_factory"] = dict_row
    return AsyncConnectionPool(
        settings.database_url,
        kwargs=kwargs,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=10,
    )
