"""Issue 10's third deterministic reproduction: nats-server is killed (SIGKILL) and started
again on its data directory while the worker holds a fetched, unapplied batch and has the
next pull outstanding. The worker must end with every event applied exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.msg import Msg
from tieline.projections.worker import Worker
from tieline.services.runtime.embedded import EmbeddedNats

from tests.faults.support import (
    EventFactory,
    Oracle,
    admin_settings,
    assert_verdict,
    base_settings,
    checkpoint_of,
    encode,
    nats_admin,
    publish_all,
    rng_for,
    running_stack,
    stream_last_seq,
    subject_of,
    verify,
)

EVENTS = 3_000
BATCH = 200


class BrokerKillingWorker(Worker):
    """After its third non-empty fetch, kill nats-server and start it again before the
    batch is applied (the prefetch of the next batch is then in flight or lost)."""

    broker: EmbeddedNats
    fetches = 0
    kills = 0
    behind_at_kill = 0

    async def _fetch(self) -> list[Msg] | BaseException:
        got = await super()._fetch()
        if isinstance(got, list) and got:
            self.fetches += 1
            if self.fetches in (3, 7):
                self.kills += 1
                # Work in flight: this batch is fetched and not applied (so not acked).
                self.behind_at_kill = got[-1].metadata.sequence.stream - self.stats.last_seq
                await asyncio.to_thread(self.broker.kill)
                await asyncio.to_thread(self.broker.start)
        return got


async def test_broker_killed_with_a_batch_outstanding_loses_nothing(tmp_path: Path) -> None:
    rng = rng_for("lost_delivery_broker")
    settings = base_settings(batch_size=BATCH)
    factory = EventFactory(rng, "kill-ws", people=60)
    objs = [factory.interaction() for _ in range(EVENTS)]
    oracle = Oracle()
    for o in objs:
        oracle.send(o)
    items = [(o["event_id"], subject_of(settings.subject_prefix, o), encode(o)) for o in objs]
    with running_stack(tmp_path, settings, roles=()) as stack:
        assert stack.nats is not None
        admin = admin_settings(stack, settings)
        async with nats_admin(admin) as (_, js):
            await publish_all(js, items, oracle, stream=settings.stream_name)
            last = await stream_last_seq(js, settings.stream_name)
        worker = BrokerKillingWorker(admin)
        worker.broker = stack.nats
        await worker.start()
        try:
            async with asyncio.timeout(180):
                while worker.stats.last_seq < last:
                    await worker.run_once()
        finally:
            await worker.close()
        assert await checkpoint_of(admin) == last
        async with nats_admin(admin) as (_, js):
            verdict = await verify(
                "lost_delivery_broker", admin, js, oracle, crashes=worker.kills, recover_s=0.0
            )
    print(verdict.line)
    assert worker.kills == 2, "the broker was not killed twice"
    assert worker.behind_at_kill > 0, "no batch was outstanding when the broker died"
    assert_verdict(verdict)
