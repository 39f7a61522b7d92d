"""PostgreSQL connections scoped to tieline's schema (``search_path``)."""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from services.config import Settings


def conninfo_kwargs(settings: Settings, rm_schema: str | None = None) -> dict[str, Any]:
    """Connection options: a connection sees tieline's state schema and, when given, one
    read-model generation's schema first (so read-model tables resolve to that generation).

    Autocommit is on: every transaction is an explicit ``conn.transaction()`` block, so a
    stray SELECT can never leave an implicit transaction open that swallows a later commit.
    """
    path = f"{rm_schema},{settings.database_schema}" if rm_schema else settings.database_schema
    return {"options": f"-c search_path={path}", "autocommit": True}


async def connect(settings: Settings, *, autocommit: bool = True,
                  rm_schema: str | None = None) -> AsyncConnection[Any]:
    kwargs = conninfo_kwargs(settings, rm_schema)
    kwargs["autocommit"] = autocommit
    return await AsyncConnection.connect(settings.database_url, **kwargs)


def make_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 10, rm_schema: str | None = None,
    synchronous_commit: bool = True,
) -> AsyncConnectionPool[Any]:
    """A pool for read paths; rows come back as dicts. ``synchronous_commit=False``: commits
    return before their WAL is flushed (a crash of PostgreSQL itself may lose the last fraction
    of a second of them, never corrupt anything): only for records that may be lost that way."""
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
    )


class LivePool:
    """A pool whose connections see the *live* read-model generation.

    It checks the ``generations`` pointer every ``poll_s`` seconds; after a blue/green switch it
    opens a pool on the new generation and closes the old one, so readers move over without a
    restart.
    """

    def __init__(self, settings: Settings, *, min_size: int = 1, max_size: int = 10,
                 poll_s: float = 1.0) -> None:
        self.settings = settings
        self.min_size, self.max_size, self.poll_s = min_size, max_size, poll_s
        self.generation: Any = None
        self._pool: AsyncConnectionPool[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self, wait: bool = True) -> None:
        from projections import generations
        from projections.schema import READ_MODEL_VERSION, ensure_schema

        conn = await connect(self.settings)
        try:
            gen = await generations.ensure_live(conn, self.settings.database_schema,
                                                self.settings.consumer_name, READ_MODEL_VERSION)
            await ensure_schema(conn, gen.schema_name)
        finally:
            await conn.close()
        await self._use(gen)
        self._task = asyncio.create_task(self._watch())

    async def _use(self, gen: Any) -> None:
        pool = make_pool(self.settings, min_size=self.min_size, max_size=self.max_size,
                         rm_schema=gen.schema_name)
        await pool.open(wait=True)
        old, self._pool, self.generation = self._pool, pool, gen
        if old is not None:
            await old.close()

    async def _watch(self) -> None:
        from projections import generations

        while True:
            await asyncio.sleep(self.poll_s)
            try:
                async with self.connection() as conn:
                    gen = await generations.live(conn, self.settings.database_schema)
                if gen is not None and gen.gen != self.generation.gen:
                    await self._use(gen)
            except Exception:
                continue

    def connection(self, timeout: float | None = None) -> Any:
        assert self._pool is not None, "LivePool.open() first"
        return self._pool.connection(timeout=timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._pool is not None:
            await self._pool.close()
