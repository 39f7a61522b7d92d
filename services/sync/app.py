"""The ``sync`` process (a role under ``tieline up``'s supervisor).

Every ``sync_poll_s`` it leases the sources that are due (``state.claim_due``: a lease, so
two sync processes never run one source at once, and a crashed process's sources are taken
over when its lease ends) and runs up to ``sync_concurrency`` of them at a time. A run that
fails (wrong password, server unreachable, the write side not answering) records its error on
the source and backs off exponentially; the other sources go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient
from tieline.plumbing import db, metrics
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import KeyStore, master_key_of
from tieline.plumbing.jetstream import connect_nats
from tieline.plumbing.state import ensure_state_schema
from tieline.projections.readpool import LivePool
from tieline.services.sync import state
from tieline.services.sync.commands import CommandBus
from tieline.services.sync.engine import Engine, RunStats
from tieline.services.webhooks.ssrf import Policy

log = structlog.get_logger(__name__)


def sync_policy(settings: Settings) -> Policy:
    """The addresses sources may point at (the webhooks' SSRF rules, with the sync's own
    settings): public addresses over https; loopback and private ones when allowed."""
    return Policy(settings.sync_allow_loopback, settings.sync_allow_private)


class SyncService:
    """Composition of the sync process (connects nothing until :meth:`start`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.master_key = master_key_of(settings)
        self.live = LivePool(settings, min_size=1, max_size=4, name="sync-read")
        self.state = db.make_pool(
            settings, min_size=1, max_size=settings.sync_concurrency + 2, name="sync"
        )
        self.nc: NatsClient | None = None
        self.engine: Engine | None = None
        self._slots = asyncio.Semaphore(settings.sync_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.master_key is None:
            raise SystemExit("tieline sync: TIELINE_MASTER_KEY is needed (credentials are sealed)")
        self.nc = await connect_nats(self.settings, name="tieline-sync")
        await self.state.open(wait=True)
        async with self.state.connection() as conn:
            await ensure_state_schema(conn, self.settings.database_schema)
        await self.live.open(wait=True)
        self.engine = Engine(
            self.state,
            self.live,
            KeyStore(self.state, self.master_key),
            CommandBus(self.settings, self.nc),
            self.master_key,
            self.settings.sync_timeout_s,
            sync_policy(self.settings),
        )

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        await self.live.close()
        await self.state.close()

    async def refresh_metrics(self) -> None:
        """The per-source gauges (plumbing/metrics.py) as of now, for a ``/metrics`` scrape."""
        async with self.state.connection() as conn:
            metrics.observe_sync_sources(await state.statuses(conn))

    async def run_row(self, row: dict[str, Any]) -> RunStats | None:
        """Run one leased source and record how it went; never raises for the source's own
        failure (that is the source's status)."""
        assert self.engine is not None
        sid = row["source_id"]
        try:
            stats = await self.engine.run(row)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            log.warning("sync.source_failed", source_id=sid, error=error)
            async with self.state.connection() as conn:
                await state.finish_failed(conn, sid, error, self.settings.sync_backoff_max_s)
            return None
        async with self.state.connection() as conn:
            await state.finish_ok(conn, sid, stats.as_dict(), stats.objects)
        log.info("sync.source_done", source_id=sid, **stats.as_dict())
        return stats

    async def _guarded(self, row: dict[str, Any]) -> None:
        async with self._slots:
            await self.run_row(row)

    async def tick(self) -> int:
        """Lease the due sources and start them; returns how many were started."""
        async with self.state.connection() as conn:
            rows = await state.claim_due(
                conn, self.settings.sync_lease_s, self.settings.sync_concurrency
            )
        for row in rows:
            task = asyncio.create_task(self._guarded(row))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(rows)

    async def loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # PostgreSQL away for a moment: try again next poll
                log.warning("sync.tick_failed", error=repr(exc))
            await asyncio.sleep(self.settings.sync_poll_s)


async def serve(settings: Settings, make: Callable[[Settings], SyncService] = SyncService) -> None:
    """Run the sync process until cancelled."""
    service = make(settings)
    await service.start()
    log.info("sync.started")
    try:
        await service.loop()
    finally:
        await service.close()
