"""The read side's connection pool that follows the *live* read-model generation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from tieline.plumbing.config import Settings
from tieline.plumbing.db import connect, make_pool
from tieline.plumbing.migrations import API_ROLE, WORKSPACE_SETTING
from tieline.projections import generations
from tieline.projections.schema import READ_MODEL_VERSION, ensure_schema


class LivePool:
    """A pool whose connections see the *live* read-model generation.

    It checks the ``generations`` pointer every ``poll_s`` seconds; after a blue/green switch it
    opens a pool on the new generation and closes the old one, so readers move over without a
    restart.
    """

    def __init__(
        self, settings: Settings, *, min_size: int = 1, max_size: int = 10, poll_s: float = 1.0
    ) -> None:
        self.settings = settings
        self.min_size, self.max_size, self.poll_s = min_size, max_size, poll_s
        self.generation: Any = None
        self._pool: AsyncConnectionPool[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self, wait: bool = True) -> None:
        conn = await connect(self.settings)
        try:
            gen = await generations.ensure_live(
                conn,
                self.settings.database_schema,
                self.settings.consumer_name,
                READ_MODEL_VERSION,
                # A fresh database's first generation is built for the configured workers,
                # whichever process starts first.
                partitions=self.settings.projection_workers,
            )
            await ensure_schema(conn, gen.schema_name)
        finally:
            await conn.close()
        await self._use(gen)
        self._task = asyncio.create_task(self._watch())

    async def _use(self, gen: Any) -> None:
        pool = make_pool(
            self.settings, min_size=self.min_size, max_size=self.max_size, rm_schema=gen.schema_name
        )
        await pool.open(wait=True)
        old, self._pool, self.generation = self._pool, pool, gen
        if old is not None:
            await old.close()

    async def _watch(self) -> None:
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

    @contextlib.asynccontextmanager
    async def workspace_connection(
        self, workspace_id: str, checkout_s: float | None = None
    ) -> AsyncIterator[Any]:
        """A connection inside a transaction that sees only ``workspace_id``'s rows.

        The transaction runs as the api role (no BYPASSRLS, owner of nothing) with the
        workspace in ``tieline.workspace_id``, both ``SET LOCAL``: the row-level security
        policies (projections/schema.py, plumbing/migrations) then hide every other
        workspace's rows even from a query that forgot its ``WHERE workspace_id``. Both end
        with the transaction, so the pooled connection goes back as it came.
        """
        async with self.connection(timeout=checkout_s) as conn:
            # BEGIN and both SETs in one round trip (no parameters: the values are quoted
            # here). psycopg sees the open transaction, so a ``conn.transaction()`` inside
            # becomes a savepoint of it.
            await conn.execute(
                sql.SQL("BEGIN; SET LOCAL ROLE {}; SET LOCAL {} = {}").format(
                    sql.Identifier(API_ROLE),
                    sql.SQL(WORKSPACE_SETTING),
                    sql.Literal(workspace_id),
                )
            )
            try:
                yield conn
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._pool is not None:
            await self._pool.close()
