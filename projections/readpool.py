"""The read side's connection pool that follows the *live* read-model generation."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any

import structlog
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool
from tieline.plumbing.config import Settings
from tieline.plumbing.db import connect, make_pool
from tieline.plumbing.migrations import API_ROLE, WORKSPACE_SETTING
from tieline.projections import generations
from tieline.projections.schema import READ_MODEL_VERSION, ensure_schema

log = structlog.get_logger(__name__)


class LivePool:
    """A pool whose connections see the *live* read-model generation.

    It checks the ``generations`` pointer every ``poll_s`` seconds; after a blue/green switch it
    opens a pool on the new generation and closes the old one, so readers move over without a
    restart. ``max_size`` bounds the owner's pool; ``scoped_max_size`` the api role's
    (:meth:`workspace_connection`), which only the api has (0: none).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        min_size: int = 1,
        max_size: int = 10,
        scoped_max_size: int = 0,
        poll_s: float = 1.0,
        fail_fast: bool = False,
        name: str = "read",
    ) -> None:
        self.settings = settings
        self.fail_fast = fail_fast  # the pools': see plumbing.db.make_pool
        self.name = name  # the owner's pool's label in the metrics; the api role's: -scoped
        self.min_size, self.max_size, self.poll_s = min_size, max_size, poll_s
        self.scoped_max_size = scoped_max_size
        self.generation: Any = None
        self._pool: AsyncConnectionPool[Any] | None = None  # the owner's: system work
        self._scoped: AsyncConnectionPool[Any] | None = None  # the api role's: requests
        #: The workspace each scoped connection's session is set to.
        self._bound: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
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
            self.settings,
            min_size=self.min_size,
            max_size=self.max_size,
            rm_schema=gen.schema_name,
            fail_fast=self.fail_fast,
            name=self.name,
        )
        scoped = None
        if self.scoped_max_size > 0:
            scoped = make_pool(
                self.settings,
                min_size=min(self.min_size, self.scoped_max_size),
                max_size=self.scoped_max_size,
                rm_schema=gen.schema_name,
                configure=_as_api_role,
                fail_fast=self.fail_fast,
                name=f"{self.name}-scoped",
            )
        try:
            await pool.open(wait=True)
            if scoped is not None:
                await scoped.open(wait=True)
        except BaseException:
            # Neither new pool is in use yet: close both, or every failed switch (retried by
            # _watch) would leave an open pool behind, connections and all.
            for p in (pool, scoped):
                if p is not None:
                    await p.close()
            raise
        old = (self._pool, self._scoped)
        self._pool, self._scoped, self.generation = pool, scoped, gen
        for previous in old:
            if previous is not None:
                await previous.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                async with self.connection() as conn:
                    gen = await generations.live(conn, self.settings.database_schema)
                if gen is not None and gen.gen != self.generation.gen:
                    await self._use(gen)
            except Exception as exc:
                log.warning("read_pool.switch_failed", error=repr(exc))
                continue

    def connection(self, timeout: float | None = None) -> Any:
        assert self._pool is not None, "LivePool.open() first"
        return self._pool.connection(timeout=timeout)

    @contextlib.asynccontextmanager
    async def workspace_connection(
        self, workspace_id: str, checkout_s: float | None = None
    ) -> AsyncIterator[Any]:
        """A connection that sees only ``workspace_id``'s rows.

        It comes from the scoped pool, whose every connection runs as the api role (no
        BYPASSRLS, owner of nothing) for its whole life and serves nothing else; the
        workspace is in ``tieline.workspace_id`` for the connection's session, set at every
        checkout before the caller runs anything (no round trip when the connection's last
        checkout was for the same workspace). The row-level security policies
        (projections/schema.py, plumbing/migrations) then hide every other workspace's rows
        even from a query that forgot its ``WHERE workspace_id``.

        Until 2026-11 this was a transaction with both settings ``SET LOCAL`` on the shared
        pool: BEGIN and COMMIT were two of a one-row read's six statements, and one connection
        served both roles, while PostgreSQL re-analyses a prepared statement over a table under
        row-level security when the role changes (docs/performance.md, "HTTP read path after
        the issue 15 run").
        """
        assert self._scoped is not None, "LivePool(scoped_max_size=...), then open() first"
        async with self._scoped.connection(timeout=checkout_s) as conn:
            # The skip below trusts that nothing but this method changes a scoped connection's
            # session: callers run statements and transactions, never a session-level SET,
            # RESET or DISCARD; and the setting is made outside any transaction, so no
            # rollback can undo it. Both checked here at no cost (no round trip).
            idle = conn.info.transaction_status == TransactionStatus.IDLE
            assert conn.autocommit and idle, "a scoped connection must come back idle"
            if self._bound.get(conn) != workspace_id:
                # Forget first: if the SET fails, the next checkout sets it again.
                self._bound.pop(conn, None)
                await conn.execute(
                    "SELECT set_config(%s, %s, false)", (WORKSPACE_SETTING, workspace_id)
                )
                self._bound[conn] = workspace_id
            yield conn

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for p in (self._pool, self._scoped):
            if p is not None:
                await p.close()


async def _as_api_role(conn: Any) -> None:
    """A scoped pool's new connection: the api role for the rest of its session."""
    await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(API_ROLE)))
