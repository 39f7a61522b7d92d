"""Scenario 3: kill and restart PostgreSQL while the worker projects.

The worker must hold its batch, back off, reconnect and resume from its checkpoint, and must
never acknowledge to JetStream what it has not committed. The latter is checked directly:
while PostgreSQL is down the consumer's ack floor is sampled; then the worker is frozen
(SIGSTOP), PostgreSQL is started again and the committed checkpoint read before the worker can
commit anything new; every ack floor seen during the outage must be <= that checkpoint.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from nats.js import JetStreamContext
from tieline.plumbing.config import Settings

from tests.faults.support import (
    EventFactory,
    Feeder,
    Oracle,
    Target,
    admin_settings,
    assert_verdict,
    base_settings,
    checkpoint_of,
    encode,
    has_committed,
    live_target,
    nats_admin,
    rng_for,
    running_stack,
    scaled,
    signal_role,
    start_worker_process,
    stream_last_seq,
    subject_of,
    until_in_flight,
    verify,
    wait_for,
)

EVENTS = scaled(8_000, minimum=2_000)
INGEST_S = 12.0
#: How each outage ends the server: SIGKILL of the whole server (crash), or a fast shutdown.
OUTAGES = ("kill", "stop", "kill")


async def ack_floor(js: JetStreamContext, settings: Settings, target: Target) -> int:
    """The highest ack floor among the stream's consumers (the worker creates a fresh pull
    consumer at its checkpoint on every start, so it is not found by a fixed name)."""
    del target
    floors = [int(c.ack_floor.stream_seq) for c in await js.consumers_info(settings.stream_name)]
    return max(floors, default=0)


async def test_database_restarts_during_projection_lose_and_double_nothing(
    tmp_path: Path,
) -> None:
    rng = rng_for("database_restart")
    settings = base_settings(batch_size=500)
    factory = EventFactory(rng, "db-ws", people=400)
    objs = [factory.person_added(p) for p in factory.people]
    objs += [factory.interaction() for _ in range(EVENTS - len(objs))]
    oracle = Oracle()
    for o in objs:
        oracle.send(o)
    items = [(o["event_id"], subject_of(settings.subject_prefix, o), encode(o)) for o in objs]
    early_acks: list[str] = []
    recover: list[float] = []

    with running_stack(tmp_path, settings, roles=("worker",)) as stack:
        assert stack.postgres is not None
        pg = stack.postgres
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
            await wait_for(lambda: has_committed(admin), within=60, what="first commit")
            target = await live_target(admin)
            assert target is not None
            floor = 0
            in_flight = 0  # outages that began while the checkpoint was behind the stream
            for how in OUTAGES:

                async def projecting(floor: int = floor) -> bool:
                    return await checkpoint_of(admin) > floor

                await wait_for(projecting, within=60, interval=0.05, what="worker progress")
                await asyncio.sleep(rng.uniform(0.0, 0.4))
                in_flight += await until_in_flight(admin, js)
                await asyncio.to_thread(pg.kill if how == "kill" else pg.stop)
                down_for = rng.uniform(1.5, 3.0)
                samples = []
                started = time.monotonic()
                while time.monotonic() - started < down_for:
                    samples.append(await ack_floor(js, admin, target))
                    await asyncio.sleep(0.1)
                signal_role(stack, "worker", signal.SIGSTOP)
                try:
                    await asyncio.to_thread(pg.start)
                    committed = await checkpoint_of(admin)
                    samples.append(await ack_floor(js, admin, target))
                finally:
                    signal_role(stack, "worker", signal.SIGCONT)
                back = time.monotonic()
                if max(samples) > committed:
                    early_acks.append(
                        f"{how}: ack floor {max(samples)} > committed checkpoint {committed}"
                    )

                async def resumed(committed: int = committed) -> bool:
                    return await checkpoint_of(admin) > committed  # events keep arriving

                await wait_for(resumed, within=60, interval=0.05, what="worker to resume")
                recover.append(time.monotonic() - back)
                floor = committed
            feeder.stop()
            await publishing
            last = await stream_last_seq(js, settings.stream_name)

            async def caught_up() -> bool:
                return await checkpoint_of(admin) >= last

            await wait_for(caught_up, within=120, interval=0.2, what="catch-up")
            worker_alive = stack.children["worker"].poll() is None
            stack.stop_processes()
            verdict = await verify(
                "database_restart",
                admin,
                js,
                oracle,
                crashes=len(OUTAGES),
                recover_s=max(recover),
            )
    assert in_flight == len(OUTAGES), f"only {in_flight} of {len(OUTAGES)} outages in flight"
    assert not early_acks, early_acks
    assert worker_alive, "the worker exited during a database outage instead of backing off"
    assert_verdict(verdict)
