"""Scenario: two partitioned projection workers (``tieline up --workers 2``); events are
ingested through the HTTP API into several workspaces of both partitions, and one partition's
worker is SIGKILLed while it has work in flight, twice; the supervisor restarts it.

Every acknowledged event must be projected exactly once by the partition that owns its
workspace; the other partition goes on meanwhile; at the end every partition's checkpoint is
the stream's last sequence, and the read models equal a clean replay by one worker.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
from tieline.plumbing.config import Settings
from tieline.projections.partitions import checkpoint_rows, partition_of
from tieline.services.runtime.supervisor import Stack

from tests.faults.support import (
    EventFactory,
    HttpIngest,
    Oracle,
    Supervision,
    admin_settings,
    assert_verdict,
    base_settings,
    checkpoint_of,
    full_stack,
    live_target,
    make_token,
    nats_admin,
    pg_connect,
    rng_for,
    scaled,
    signal_role,
    stream_last_seq,
    verify,
    wait_for,
)

WORKERS = 2
EVENTS_PER_WORKSPACE = scaled(800, minimum=300)
#: (process to kill, fraction of all events acknowledged before) — ``worker.2`` owns
#: partition 1, ``worker`` partition 0.
KILLS = (("worker.2", 0.3), ("worker", 0.6))


def workspaces(per_partition: int = 2) -> list[str]:
    """Workspace ids, ``per_partition`` owned by each partition (found by their hash)."""
    found: dict[int, list[str]] = {p: [] for p in range(WORKERS)}
    i = 0
    while any(len(v) < per_partition for v in found.values()):
        ws = f"part-ws-{i}"
        owner = found[partition_of(ws, WORKERS)]
        if len(owner) < per_partition:
            owner.append(ws)
        i += 1
    return [ws for p in range(WORKERS) for ws in found[p]]


async def partition_checkpoints(admin: Settings) -> dict[str, int]:
    """Each partition's own checkpoint row of the live generation."""
    target = await live_target(admin)
    assert target is not None
    conn = await pg_connect(admin, target.schema)
    try:
        cur = await conn.execute(
            "SELECT projection, last_seq FROM checkpoints WHERE projection = ANY(%s)",
            (checkpoint_rows(target.projection, WORKERS),),
        )
        return {str(r[0]): int(r[1]) for r in await cur.fetchall()}
    finally:
        await conn.close()


async def test_partition_worker_killed_during_http_ingest_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    rng = rng_for("partitioned_workers")
    settings = base_settings(batch_size=200)
    spaces = workspaces()
    oracle = Oracle()
    plans: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for ws in spaces:
        factory = EventFactory(rng, ws, people=60)
        people = [factory.person_added(p, with_server_fields=False) for p in factory.people]
        n = EVENTS_PER_WORKSPACE - len(people)
        events = [factory.interaction(with_server_fields=False) for _ in range(n)]
        for o in people + events:
            oracle.send(o)
        plans[ws] = (people, events)
    total = sum(len(e) for _, e in plans.values())
    acked = 0

    def count() -> None:
        nonlocal acked
        acked += 1

    with (
        full_stack(tmp_path, settings, workers=WORKERS) as stack,
        Supervision(stack) as supervision,
    ):
        admin = admin_settings(stack, settings)
        clients = {
            ws: httpx.AsyncClient(
                base_url=stack.api_url,
                headers={"Authorization": f"Bearer {await make_token(admin, ws)}"},
                timeout=30.0,
                trust_env=False,
            )
            for ws in spaces
        }
        try:
            ingests = {ws: HttpIngest(clients[ws], ws, oracle, on_ack=count) for ws in spaces}
            await asyncio.gather(*(ingests[ws].run(plans[ws][0]) for ws in spaces))
            ingesting = asyncio.gather(*(ingests[ws].run(plans[ws][1]) for ws in spaces))
            async with nats_admin(admin) as (_, js):
                for name, fraction in KILLS:
                    await _kill_in_flight(
                        stack, supervision, admin, js, name, lambda f=fraction: acked >= f * total
                    )
                await ingesting
                last = await stream_last_seq(js, settings.stream_name)

                async def caught_up() -> bool:
                    return await checkpoint_of(admin) >= last

                await wait_for(caught_up, within=180, interval=0.2, what="every partition")
                rows = await partition_checkpoints(admin)
                supervision.stop()
                stack.stop_processes()
                verdict = await verify(
                    "partitioned_workers", admin, js, oracle, crashes=len(KILLS), recover_s=0.0
                )
        finally:
            for client in clients.values():
                await client.aclose()
    print(f"# partition checkpoints {rows}; restarts {supervision.restarts}")
    assert all(not i.rejected for i in ingests.values())
    assert len(rows) == WORKERS and set(rows.values()) == {last}, rows
    for name, _ in KILLS:
        assert supervision.restarts.get(name, 0) >= 1, (name, supervision.restarts)
    assert_verdict(verdict)


async def _kill_in_flight(
    stack: Stack, supervision: Supervision, admin: Settings, js: Any, name: str, when: Any
) -> None:
    """Once ``when()`` holds and the partition of ``name`` is behind the stream, SIGKILL it;
    while it is down (restarts held), the other partition must commit again; then the
    supervisor restarts the killed one.

    Holding the restart keeps "while it is down" certain: a fast restart could otherwise
    commit before the other partition's next batch, and a COMMIT the killed process sent just
    before the signal can still become visible after it, so "the killed partition's checkpoint
    did not move" is no proof that it was down."""
    await wait_for(when, within=180, interval=0.02, what=f"acknowledged before killing {name}")
    target = await live_target(admin)
    assert target is not None
    index = 0 if name == "worker" else int(name.partition(".")[2]) - 1
    mine = checkpoint_rows(target.projection, WORKERS)[index]
    other = checkpoint_rows(target.projection, WORKERS)[1 - index]

    async def behind() -> bool:
        last = await stream_last_seq(js, admin.stream_name)
        return (await partition_checkpoints(admin)).get(mine, 0) < last

    await wait_for(behind, within=60, interval=0.01, what=f"{name} with work in flight")
    down_since = stack.children[name]
    with supervision.held():
        signal_role(stack, name, signal.SIGKILL)
        await asyncio.to_thread(down_since.wait)
        at_kill = await partition_checkpoints(admin)

        async def other_moved() -> bool:
            return (await partition_checkpoints(admin))[other] > at_kill[other]

        # Raises (failing the test) if the other partition stalls while this one is down.
        await wait_for(other_moved, within=60, interval=0.02, what=f"{other} while {name} down")
        assert stack.children[name] is down_since and down_since.poll() is not None
    await wait_for(
        lambda: stack.children[name] is not down_since, within=60, what=f"{name} restarted"
    )
