"""Deterministic reproductions of a lost delivery (issue 10): the consumer counts messages as
delivered that never reached the worker, so the next fetch returns later sequences.

A worker that applied those later events and acknowledged them (``AckPolicy.ALL``) would
acknowledge the lost ones too, and its checkpoint would have moved past them: they would
never be projected. Each test loses a delivery in a different way, then drains the worker
and checks that every event on the stream is in the read models exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.msg import Msg
from psycopg import AsyncConnection
from tieline.plumbing.config import Settings
from tieline.projections.worker import Worker

from tests.integration.conftest import Log, make_event, scalar
from tests.netproxy import TcpProxy

EVENTS = 60
BATCH = 10


class LossyWorker(Worker):
    """The product worker, with a hook around each fetch that a test arms once."""

    armed: str | None = None  # "drop" | "blackhole" | "cut-after"
    proxy: TcpProxy | None = None
    lost: list[int]

    async def _fetch(self) -> list[Msg] | BaseException:
        mode, self.armed = self.armed, None
        if mode == "blackhole":
            # The server answers this pull request into a dead path, then the path is cut.
            assert self.proxy is not None
            self.proxy.blackhole()
        got = await super()._fetch()
        if mode == "drop" and isinstance(got, list) and got:
            self.lost = [m.metadata.sequence.stream for m in got]
            return []  # the reply never reached the worker
        if mode == "blackhole":
            assert self.proxy is not None
            self.proxy.sever()
        if mode == "cut-after" and isinstance(got, list) and got:
            assert self.proxy is not None
            self.proxy.blackhole()  # the next pull's reply, the ack: lost on the wire
            asyncio.get_running_loop().call_later(0.3, self.proxy.sever)
        return got


async def publish_history(log: Log, ws: str) -> int:
    last = await log.publish(make_event(ws, type="person.added", person_id="a", display_name="A"))
    for i in range(EVENTS - 1):
        last = await log.publish(
            make_event(
                ws, type="relationship.met", participants=["a", f"p{i % 7}"], depth="conversation"
            )
        )
    return last


async def run_with_loss(settings: Settings, log: Log, mode: str, via_proxy: bool) -> LossyWorker:
    """Apply two batches, lose one delivery the way ``mode`` says, then drain."""
    ws = f"lost-{mode}"
    last = await publish_history(log, ws)
    proxy = await TcpProxy(settings.nats_url).start() if via_proxy else None
    worker_settings = settings.model_copy(
        update={"batch_size": BATCH, "nats_url": proxy.url if proxy else settings.nats_url}
    )
    worker = LossyWorker(worker_settings)
    worker.proxy = proxy
    await worker.start()
    try:
        async with asyncio.timeout(60):
            while worker.stats.last_seq < 2 * BATCH:
                await worker.run_once()
            worker.armed = mode
            idle = 0
            # Drain: until the checkpoint reaches the end, and then a little longer, so that a
            # worker that skipped events has every chance to show it.
            while worker.stats.last_seq < last or idle < 3:
                idle = idle + 1 if await worker.run_once() is None else 0
    finally:
        await worker.close()
        if proxy is not None:
            await proxy.close()
    return worker


async def assert_exactly_once(pg: AsyncConnection[Any], log: Log, ws: str) -> None:
    info = await log.js.stream_info(log.settings.stream_name)
    in_stream = int(info.state.messages)
    archived = await scalar(pg, "SELECT count(*) FROM events WHERE workspace_id = %s", ws)
    met = await scalar(
        pg, "SELECT coalesce(sum(meetings), 0) FROM strength_v1 WHERE workspace_id = %s", ws
    )
    assert archived == in_stream == EVENTS, f"archived={archived} in_stream={in_stream}"
    assert met == EVENTS - 1, f"meetings projected={met}, published={EVENTS - 1}"


async def test_a_dropped_pull_reply_is_read_again_not_skipped(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    worker = await run_with_loss(settings, log, "drop", via_proxy=False)
    assert worker.lost, "the hook never dropped a delivery"
    await assert_exactly_once(pg, log, "lost-drop")
    assert worker.stats.gaps >= 1 and worker.stats.resubscribes >= 1


async def test_a_pull_reply_lost_on_the_wire_is_read_again_not_skipped(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    worker = await run_with_loss(settings, log, "blackhole", via_proxy=True)
    assert worker.proxy is not None and worker.proxy.severed >= 1
    await assert_exactly_once(pg, log, "lost-blackhole")


async def test_a_connection_cut_between_fetch_and_apply_loses_nothing(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    worker = await run_with_loss(settings, log, "cut-after", via_proxy=True)
    assert worker.proxy is not None and worker.proxy.severed >= 1
    await assert_exactly_once(pg, log, "lost-cut-after")
