"""Scenario 1: kill -9 the projection worker at random (seeded) points while events are
ingested; after recovery the read models must equal a clean replay and match the oracle.

Events are published straight onto the stream with nats-py (as the embedded NATS's admin
user) with ``Nats-Msg-Id = event_id``; the worker runs as its own process
(``python -m tieline.services.runtime.run worker``, the NATS ``worker`` user) and is killed with
SIGKILL while it is projecting, at least 10 times.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from nats.js import JetStreamContext
from tieline.plumbing.config import Settings
from tieline.projections.worker import Worker
from tieline.services.runtime.supervisor import Stack

from tests.faults.support import (
    EventFactory,
    Feeder,
    Oracle,
    admin_settings,
    assert_verdict,
    base_settings,
    checkpoint_of,
    drain_worker,
    encode,
    nats_admin,
    publish_all,
    rng_for,
    running_stack,
    scaled,
    start_worker_process,
    stream_last_seq,
    subject_of,
    verify,
    wait_for,
    work_in_flight,
)

#: The issue asks for 50k events (~40-60 s per variant on a 2-core machine; every event is
#: projected twice, by the crashing worker and by the clean replay).
EVENTS = scaled(50_000, minimum=2_000)
#: The issue asks for at least 10 kills; the count does not scale with the events.
KILLS = max(10, int(os.environ.get("TIELINE_FAULTS_KILLS", "10")))
#: Ingest is spread over this many seconds so that the kills land while it runs.
INGEST_S = 20.0


async def test_worker_killed_repeatedly_during_ingest_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    name = "worker_crash"
    rng = rng_for("worker_crash")
    settings = base_settings(batch_size=500)
    factory = EventFactory(rng, "crash-ws", people=400)
    objs = [factory.person_added(p) for p in factory.people]
    objs += [factory.interaction() for _ in range(EVENTS - len(objs))]
    oracle = Oracle()
    for o in objs:
        oracle.send(o)
    items = [(o["event_id"], subject_of(settings.subject_prefix, o), encode(o)) for o in objs]

    with running_stack(tmp_path, settings, roles=("worker",)) as stack:
        admin = admin_settings(stack, settings)
        async with nats_admin(admin) as (_, js):
            start_worker_process(stack)
            feeder = Feeder(
                js,
                oracle,
                factory,
                items,
                settings.stream_name,
                settings.subject_prefix,
                rate=len(items) / INGEST_S,
            )
            publishing = asyncio.create_task(feeder.run())
            kills = await _kill_repeatedly(stack, admin, js, rng)
            feeder.stop()
            await publishing
            last = await stream_last_seq(js, settings.stream_name)
            await _until_caught_up(admin, last, within=180)
            stack.stop_processes()
            verdict = await verify(
                name, admin, js, oracle, crashes=kills.crashes, recover_s=max(kills.recover)
            )
    # Every kill counted must have hit the worker with work pending; fewer than KILLS such
    # kills means the scenario did not test what it claims.
    assert kills.in_flight >= KILLS, f"only {kills.in_flight} of {kills.crashes} kills in flight"
    assert_verdict(verdict)


@dataclass
class Kills:
    crashes: int = 0
    in_flight: int = 0  # kills that landed while the checkpoint was behind the stream
    recover: list[float] = field(default_factory=list)


async def _kill_repeatedly(
    stack: Stack, admin: Settings, js: JetStreamContext, rng: random.Random
) -> Kills:
    """SIGKILL the worker while it is projecting (its checkpoint has moved since it started)
    plus a seeded random delay, and restart it right away, until KILLS kills have landed with
    work in flight (at most 3 * KILLS kills). Records how long each restarted worker took to
    commit again."""
    kills = Kills()
    restarted_at = time.monotonic()
    floor = 0  # checkpoint when the current incarnation started
    while kills.in_flight < KILLS and kills.crashes < 3 * KILLS:

        async def progressed(floor: int = floor) -> bool:
            return await checkpoint_of(admin) > floor

        await _wait(progressed, within=180)
        kills.recover.append(time.monotonic() - restarted_at)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        in_flight = await work_in_flight(admin, js)
        await asyncio.to_thread(stack.kill_role, "worker")
        kills.crashes += 1
        kills.in_flight += in_flight
        floor = max(await checkpoint_of(admin), 0)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        start_worker_process(stack)
        restarted_at = time.monotonic()

    async def progressed_last() -> bool:
        return await checkpoint_of(admin) > floor

    await _wait(progressed_last, within=180)
    kills.recover.append(time.monotonic() - restarted_at)
    return kills


async def _wait(predicate: Callable[[], Awaitable[bool]], within: float) -> None:
    # Generous: on a loaded 2-core machine a restarted worker can take tens of seconds.
    await wait_for(predicate, within=within, interval=0.05, what="worker progress")


async def _until_caught_up(admin: Settings, last: int, within: float) -> None:
    async def done() -> bool:
        return await checkpoint_of(admin) >= last

    await wait_for(done, within=within, interval=0.2, what=f"checkpoint to reach {last}")


async def test_crash_between_fetch_and_commit_loses_nothing(tmp_path: Path) -> None:
    """The deterministic reproduction: a worker fetches a batch and dies before committing;
    a new worker must still project that batch."""
    settings = base_settings(batch_size=100)
    rng = rng_for("crash_between_fetch_and_commit")
    factory = EventFactory(rng, "gap-ws", people=10)
    objs = [factory.interaction() for _ in range(400)]
    oracle = Oracle()
    for o in objs:
        oracle.send(o)
    items = [(o["event_id"], subject_of(settings.subject_prefix, o), encode(o)) for o in objs]
    with running_stack(tmp_path, settings, roles=()) as stack:
        admin = admin_settings(stack, settings)
        async with nats_admin(admin) as (_, js):
            await publish_all(js, items, oracle, stream=settings.stream_name, concurrency=32)
            first = Worker(admin)
            await first.start()
            await first.run_once()  # seqs 1-100 applied and acknowledged
            # While it applied them the worker already fetched the next batch (its prefetch):
            assert first._prefetch is not None
            held = await first._prefetch  # seqs 101-200: fetched, then...
            assert not isinstance(held, BaseException)
            assert held[0].metadata.sequence.stream == 101 and len(held) == 100
            first._prefetch = None
            await first.close()  # ...the process dies: no commit, no ack
            second = Worker(admin)
            await second.start()
            try:
                await drain_worker(second, 400, within=30)
            finally:
                await second.close()
            verdict = await verify(
                "crash_between_fetch_and_commit",
                admin,
                js,
                oracle,
                crashes=1,
                recover_s=0,
                replay=False,
            )
    assert_verdict(verdict)
