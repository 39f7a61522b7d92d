"""Chaos soak: mixed single and batch HTTP ingest while every moving part is killed at random.

    python -m tests.faults.soak --minutes 10

A whole tieline (embedded nats-server and PostgreSQL, api, people, interactions, worker) runs
under the same supervision as ``tieline up`` (a child that dies is started again). Clients
post events one at a time and in batches, retrying every line that got no answer or a 5xx
with the same event_id; meanwhile, in shuffled rounds, each of the worker, the two write
services, the api (SIGKILL; the supervisor restarts them), nats-server and PostgreSQL (SIGKILL,
then started again) is killed once per round. At the end the independent oracle (the events
the clients got an acknowledgement for) is checked against the stream, the archive and the
read models, the read models against a clean replay, and the product's own ``tieline verify``
runs. One summary line:

    scenario=soak minutes=10.0 sent=... acked=... lost=0 double_counted=0 verify=clean kills=...

``tests/faults/test_soak.py`` runs a short version in CI (``TIELINE_SOAK_MINUTES``, default 2).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tieline.plumbing.config import Settings
from tieline.projections import replay
from tieline.services.runtime.supervisor import Stack

from tests.faults.support import (
    EventFactory,
    HttpIngest,
    Oracle,
    Supervision,
    Verdict,
    admin_settings,
    base_settings,
    checkpoint_of,
    full_stack,
    make_token,
    nats_admin,
    quiet,
    rng_for,
    stream_last_seq,
    verify,
    wait_for,
)

PROCESSES = ("worker", "people", "interactions", "api")
SERVERS = ("nats", "postgres")
TARGETS = PROCESSES + SERVERS


@dataclass
class Chaos:
    """Kills one target at a time; counts what it killed and whether work was in flight."""

    stack: Stack
    admin: Settings
    rng: random.Random
    kills: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)  # kills that hit pending work

    async def round(self, stop_at: float, acked: Any) -> None:
        order = list(TARGETS)
        self.rng.shuffle(order)
        for target in order:
            if time.monotonic() >= stop_at:
                return
            before = acked()
            behind = await self._projection_behind()
            await self.kill(target)
            if behind or acked() > before:
                self.in_flight[target] += 1
            await self._recovered(acked)
            await asyncio.sleep(self.rng.uniform(0.5, 2.5))

    async def kill(self, target: str) -> None:
        self.kills[target] += 1
        if target in PROCESSES:
            proc = self.stack.children.get(target)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # the supervision starts it again
            return
        server = self.stack.nats if target == "nats" else self.stack.postgres
        assert server is not None
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(self.rng.uniform(0.3, 2.0))
        await asyncio.to_thread(server.start)

    async def _projection_behind(self) -> bool:
        """Whether the projection had work pending (checkpoint behind the stream)."""
        try:
            async with asyncio.timeout(3):
                async with nats_admin(self.admin) as (_, js):
                    last = await stream_last_seq(js, self.admin.stream_name)
                return await checkpoint_of(self.admin) < last
        except Exception:
            return False

    async def _recovered(self, acked: Any) -> None:
        """Until a new write is acknowledged (the whole write path works again)."""
        before = acked()
        await wait_for(lambda: acked() > before, within=90, what="a write after the fault")


@dataclass
class Singles:
    """Posts events one at a time, retrying each with its event_id until acknowledged."""

    client: httpx.AsyncClient
    ws: str
    oracle: Oracle
    statuses: Counter[int] = field(default_factory=Counter)
    rejected: list[str] = field(default_factory=list)

    async def send(self, obj: dict[str, Any], give_up_s: float = 180.0) -> None:
        deadline = time.monotonic() + give_up_s
        delay = 0.1
        while time.monotonic() < deadline:
            try:
                r = await self.client.post(f"/v1/workspaces/{self.ws}/events", json=obj)
            except httpx.HTTPError:
                self.statuses[0] += 1
            else:
                self.statuses[r.status_code] += 1
                if r.status_code in (200, 201):
                    self.oracle.ack(obj["event_id"], int(r.json()["seq"]))
                    return
                if r.status_code < 500:
                    self.rejected.append(f"{obj['event_id']}: {r.status_code} {r.text[:200]}")
                    return
            self.oracle.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise TimeoutError(f"event {obj['event_id']} never acknowledged")


@dataclass
class Load:
    """Generates fresh events until stopped: a batch stream and a single-event stream."""

    factory: EventFactory
    oracle: Oracle
    batches: HttpIngest
    singles: Singles
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def batch_loop(self) -> None:
        while not self.stop.is_set():
            objs = [self.factory.interaction(with_server_fields=False) for _ in range(100)]
            for o in objs:
                self.oracle.send(o)
            await self.batches.run(objs, give_up_s=180.0)

    async def single_loop(self) -> None:
        while not self.stop.is_set():
            obj = self.factory.interaction(with_server_fields=False)
            self.oracle.send(obj)
            await self.singles.send(obj)


async def soak(minutes: float, data_dir: Path, seed_name: str = "soak") -> tuple[Verdict, str]:
    rng = rng_for(seed_name)
    settings = base_settings()
    ws = "soak-ws"
    factory = EventFactory(rng, ws, people=120)
    oracle = Oracle()
    people = [factory.person_added(p, with_server_fields=False) for p in factory.people]
    for o in people:
        oracle.send(o)
    with (
        full_stack(data_dir, settings, TIELINE_COMMAND_TIMEOUT_S="3") as stack,
        Supervision(stack) as supervision,
    ):
        admin = admin_settings(stack, settings)
        token = await make_token(admin, ws)
        async with httpx.AsyncClient(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=15.0,
            trust_env=False,
        ) as client:
            batches = HttpIngest(client, ws, oracle, chunk=50, concurrency=2)
            await batches.run(people)
            load = Load(factory, oracle, batches, Singles(client, ws, oracle))
            tasks = [asyncio.create_task(load.batch_loop())]
            tasks += [asyncio.create_task(load.single_loop()) for _ in range(4)]
            chaos = Chaos(stack, admin, rng)
            stop_at = time.monotonic() + minutes * 60
            while time.monotonic() < stop_at:
                await chaos.round(stop_at, lambda: len(oracle.acked))
            load.stop.set()
            await asyncio.gather(*tasks)
        supervision.stop()
        verdict, verify_state = await judge(stack, admin, oracle, sum(chaos.kills.values()))
        problems = [*batches.rejected, *load.singles.rejected]
        verdict.problems += [f"rejected: {p}" for p in problems[:5]]
    kills = ",".join(f"{t}:{chaos.kills[t]}" for t in TARGETS)
    in_flight = ",".join(f"{t}:{chaos.in_flight[t]}" for t in TARGETS)
    line = (
        f"scenario=soak minutes={minutes:g} {verdict.line.split(' ', 1)[1]} "
        f"verify={verify_state} kills={kills} in_flight={in_flight} "
        f"restarts={sum(supervision.restarts.values())}"
    )
    verdict.line = line
    return verdict, _coverage_problem(chaos, minutes)


async def judge(stack: Stack, admin: Settings, oracle: Oracle, crashes: int) -> tuple[Verdict, str]:
    """Catch up, stop the processes, then the oracle, the clean replay and ``tieline verify``."""
    async with nats_admin(admin) as (_, js):
        last = await stream_last_seq(js, admin.stream_name)

        async def caught_up() -> bool:
            return await checkpoint_of(admin) >= last

        await wait_for(caught_up, within=180, interval=0.2, what="projection catch-up")
        _, diffs = await replay.verify(admin)
        verify_state = "clean" if all(d.clean for d in diffs) else "DIFFERS"
        stack.stop_processes()
        verdict = await verify("soak", admin, js, oracle, crashes=crashes, recover_s=0.0)
    if verify_state != "clean":
        verdict.problems.append(
            "tieline verify: " + "; ".join(f"{d.table}: {d.samples[:2]}" for d in diffs)
        )
    return verdict, verify_state


def _coverage_problem(chaos: Chaos, minutes: float) -> str:
    """Each target must have been killed often enough (5 times in a 10-minute soak)."""
    want = max(1, min(5, int(minutes / 2)))
    short = [t for t in TARGETS if chaos.kills[t] < want]
    return f"killed fewer than {want} times: {short}" if short else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tieline-soak-") as tmp, quiet():
        verdict, coverage = asyncio.run(soak(a.minutes, Path(tmp)))
    print(verdict.line, flush=True)
    for problem in verdict.problems + ([coverage] if coverage else []):
        print(f"  problem: {problem}", flush=True)
    ok = verdict.lost == 0 and verdict.double_counted == 0 and not verdict.problems
    return 0 if ok and not coverage else 1


if __name__ == "__main__":
    sys.exit(main())
