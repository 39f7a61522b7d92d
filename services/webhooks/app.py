"""The ``webhooks`` process (a role under ``tieline up``'s supervisor).

Three loops:

* **hand-over**: a durable JetStream pull consumer (``webhooks``) on the event stream. For each
  fetched batch it waits until the live projection has applied the batch's last sequence, reads
  the change-log rows those events caused, records one delivery per matching endpoint (a
  disabled endpoint's are held until it is enabled again: services/webhooks/store.py)
  (unique per endpoint and position, so a redelivered message adds nothing), and only then
  acknowledges. A crash at any point redelivers the messages: at least once, never lost. The
  consumer starts at new messages when it is first created: endpoints get changes from then on.
* **sending**: claims due deliveries and attempts them (services/webhooks/sender.py), at most
  ``webhook_concurrency`` at a time; a slot that frees up is filled at once, so one slow
  receiver never holds up the deliveries to other endpoints.
* **upkeep**, every ``follow_up_scan_s``: the follow-up scan (``follow_up.due`` rows, with their
  deliveries in the same transaction), trimming change-log rows older than
  ``live_retention_s`` that have been handed over, and forgetting finished deliveries older
  than ``webhook_log_retention_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import master_key_of
from tieline.plumbing.jetstream import connect_nats, ensure_streams
from tieline.plumbing.metrics import WEBHOOK_EVENTS_WITHOUT_CHANGES
from tieline.plumbing.state import ensure_state_schema
from tieline.projections.changelog import SCAN_SUB, scan_follow_ups, trim
from tieline.projections.queries.common import checkpoint
from tieline.projections.queries.live import changes_at, payload, resume_bounds
from tieline.projections.readpool import LivePool
from tieline.services.webhooks import store
from tieline.services.webhooks.sender import Sender

log = structlog.get_logger(__name__)

#: The durable consumer's name (its NATS permissions name it: services/runtime/nats_auth.py).
CONSUMER = "webhooks"
FETCH = 500


def deliveries_for(
    rows: list[dict[str, Any]], endpoints: list[dict[str, Any]]
) -> list[tuple[str, str, str, str, str]]:
    """(endpoint, workspace, position, kind, body) for every row an endpoint subscribes to."""
    by_ws: dict[str, list[dict[str, Any]]] = {}
    for e in endpoints:
        by_ws.setdefault(e["workspace_id"], []).append(e)
    out = []
    for row in rows:
        for e in by_ws.get(row["workspace_id"], ()):
            if row["kind"] in e["kinds"]:
                data = payload(row)
                body = store.body_of(row["kind"], row["at"], data)
                out.append(
                    (e["endpoint_id"], row["workspace_id"], data["position"], row["kind"], body)
                )
    return out


class WebhookService:
    """Composition of the webhooks process (connects nothing until :meth:`start`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.live = LivePool(settings, min_size=1, max_size=4, name="webhooks-read")
        self.state = db.make_pool(
            settings, min_size=1, max_size=settings.webhook_concurrency + 2, name="webhooks"
        )
        self.sender = Sender(
            settings,
            self.state,
            master_key_of(settings),
        )
        self.nc: NatsClient | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stopping = asyncio.Event()
        self._wake = self.sender.wake  # new deliveries, or a sending slot free again
        self.handed_over = 0  # the last stream sequence whose changes were handed over
        self._samples: deque[tuple[float, int]] = deque()  # (monotonic time, checkpoint)
        self._trimmed = 0

    async def start(self) -> None:
        self.nc = await connect_nats(self.settings, name="tieline-webhooks")
        js = self.nc.jetstream()
        await ensure_streams(js, self.settings)
        await self.live.open(wait=True)
        await self.state.open(wait=True)
        async with self.state.connection() as conn:
            await ensure_state_schema(conn, self.settings.database_schema)
        config = js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.NEW,
            ack_wait=60.0,
            max_ack_pending=FETCH * 4,
            max_deliver=-1,
        )
        self._sub = await js.pull_subscribe(
            f"{self.settings.subject_prefix}.ev.>",
            durable=CONSUMER,
            stream=self.settings.stream_name,
            config=config,
        )
        log.info("webhooks.started")

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._forever(self.hand_over_once, "hand_over")),
            asyncio.create_task(self._forever(self.send_once, "send")),
            asyncio.create_task(self._forever(self.upkeep_once, "upkeep")),
        ]
        try:
            await self._stopping.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.sender.close()
        await self.state.close()
        await self.live.close()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    async def _forever(self, step: Any, name: str) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS or PostgreSQL restarting: try again shortly
                log.warning("webhooks.retry", loop=name, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)

    # -- hand-over ------------------------------------------------------------------------

    async def hand_over_once(self) -> None:
        assert self._sub is not None
        try:
            msgs = await self._sub.fetch(FETCH, timeout=1.0)
        except (TimeoutError, NatsTimeout):
            return
        if not msgs:
            return
        seqs = [m.metadata.sequence.stream for m in msgs]
        await self._wait_projected(max(seqs), msgs)
        async with self.live.connection() as conn:
            rows = await changes_at(conn, min(seqs), max(seqs), SCAN_SUB)
            trimmed, _ = await resume_bounds(conn, self.live.generation.consumer)
        self._report_missing(seqs, trimmed)
        if rows:
            async with self.state.connection() as conn, conn.transaction():
                eps = await store.subscribed_endpoints(
                    conn, sorted({r["workspace_id"] for r in rows})
                )
                await store.enqueue(conn, deliveries_for(rows, eps))
        for m in msgs:
            await m.ack()
        self.handed_over = max(self.handed_over, max(seqs))
        self._wake.set()

    def _report_missing(self, seqs: list[int], trimmed: int) -> None:
        """Events at or below the trim point may have no change rows (the projection left
        them out, or they were trimmed): their webhooks cannot be sent. Said loudly (a log
        line and a metric that an alert watches) instead of acknowledged in silence. The
        process trims only what it handed over, so its own trims never land here."""
        missed = [s for s in seqs if s <= trimmed]
        if not missed:
            return
        WEBHOOK_EVENTS_WITHOUT_CHANGES.inc(len(missed))
        log.warning(
            "webhooks.events_without_changes",
            events=len(missed),
            first_seq=min(missed),
            last_seq=max(missed),
            trimmed_seq=trimmed,
            why="no change-log rows: recorded more than 24 h before projected, a bulk "
            "rebuild, or trimmed; no webhook was sent for them",
        )

    async def _wait_projected(self, seq: int, msgs: list[Msg]) -> None:
        """Until the live projection has applied ``seq`` (its change-log rows are there);
        tells JetStream the messages are in progress meanwhile, so none is redelivered."""
        last_touch = time.monotonic()
        while True:
            async with self.live.connection() as conn:
                if await checkpoint(conn, self.live.generation.consumer) >= seq:
                    return
            if time.monotonic() - last_touch > 10:
                for m in msgs:
                    await m.in_progress()
                last_touch = time.monotonic()
            await asyncio.sleep(0.05)

    # -- sending --------------------------------------------------------------------------

    async def send_once(self) -> None:
        """Fill the free sending slots with due deliveries (their attempts run on without
        being waited for); when none started, wait for new deliveries, a slot that frees up
        or a quarter of a second (for deliveries whose retry time comes)."""
        self._wake.clear()  # before claiming: a wake-up from here on is not lost
        if await self.sender.send_due():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=0.25)

    # -- upkeep ---------------------------------------------------------------------------

    async def upkeep_once(self) -> None:
        await self.scan()
        await self.trim()
        async with self.state.connection() as conn:
            await store.forget_old(conn, self.settings.webhook_log_retention_s)
        await asyncio.sleep(self.settings.follow_up_scan_s)

    async def scan(self) -> int:
        """The follow-up scan, with the deliveries of what it found in its transaction."""
        async with self.live.connection() as conn, conn.transaction():
            rows = await scan_follow_ups(conn, self.live.generation.consumer)
            if not rows:
                return 0
            cur = await conn.execute(
                "SELECT seq, sub, workspace_id, kind, data, at FROM changes_v1 "
                "WHERE seq = %s AND sub >= %s ORDER BY sub",
                (rows[0][0], rows[0][1]),
            )
            found = list(await cur.fetchall())
            wss = sorted({r["workspace_id"] for r in found})
            eps = await store.subscribed_endpoints(conn, wss)
            await store.enqueue(conn, deliveries_for(found, eps))
        self._wake.set()
        return len(found)

    async def trim(self) -> int:
        """Delete change-log rows older than the retention that were handed over."""
        async with self.live.connection() as conn:
            seen = await checkpoint(conn, self.live.generation.consumer)
        now = time.monotonic()
        self._samples.append((now, seen))
        through = 0
        while self._samples and now - self._samples[0][0] >= self.settings.live_retention_s:
            through = self._samples.popleft()[1]
        through = min(through, self.handed_over)
        if through <= self._trimmed:
            return 0
        async with self.live.connection() as conn:
            deleted = await trim(conn, through)
        self._trimmed = through
        log.info("webhooks.change_log_trimmed", through_seq=through, rows=deleted)
        return deleted


def create_app(settings: Settings) -> WebhookService:
    """Composition root of the webhooks process."""
    return WebhookService(settings)


async def serve(
    settings: Settings, make: Callable[[Settings], WebhookService] = create_app
) -> None:
    """Run the webhooks process that ``make`` builds until SIGTERM/SIGINT."""
    import signal

    service = make(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.start()
    try:
        await service.run()
    finally:
        await service.close()
