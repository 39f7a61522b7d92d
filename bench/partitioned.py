"""Partitioned projection workers for ``python -m bench projection --workers N``: N worker
processes (each a ``Worker`` with ``projection_workers=N`` and its own partition, as
``tieline up --workers N`` runs them), optionally pinned to the first K cores
(``os.sched_setaffinity``, what ``taskset`` does), drain the same stream; timed from the first
partition's first fetch until the last partition's checkpoint reaches the last sequence.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class PartitionRun:
    """What one partition process did (wall-clock times, comparable across processes)."""

    partition: int
    applied: int
    batches: int
    dead_lettered: int
    started: float
    finished: float
    cpu_s: float


@dataclass
class PartitionedResult:
    runs: list[PartitionRun]

    @property
    def seconds(self) -> float:
        return max(r.finished for r in self.runs) - min(r.started for r in self.runs)

    @property
    def applied(self) -> int:
        return sum(r.applied for r in self.runs)

    @property
    def batches(self) -> int:
        return sum(r.batches for r in self.runs)

    @property
    def dead_lettered(self) -> int:
        return sum(r.dead_lettered for r in self.runs)

    @property
    def cpu_s(self) -> float:
        return sum(r.cpu_s for r in self.runs)


async def _drain(settings: Any, last_seq: int, ready: Any, go: Any) -> PartitionRun:
    from tieline.projections.worker import Worker

    worker = Worker(settings)
    await worker.start()
    try:
        ready.set()
        await asyncio.to_thread(go.wait)
        t = os.times()
        c0 = t.user + t.system
        t0 = time.time()
        while worker.stats.last_seq < last_seq:
            await worker.run_once()
        t = os.times()
        s = worker.stats
        return PartitionRun(
            settings.projection_partition,
            s.applied,
            s.batches,
            s.dead_lettered,
            t0,
            time.time(),
            t.user + t.system - c0,
        )
    finally:
        await worker.close()


def _child(settings: Any, last_seq: int, cores: int, ready: Any, go: Any, out: Any) -> None:
    from bench.common import quiet_logging

    quiet_logging()
    if cores > 0:
        os.sched_setaffinity(0, set(range(cores)))
    out.put(asyncio.run(_drain(settings, last_seq, ready, go)))


def drain_partitioned(
    settings: Any, last_seq: int, workers: int, cores: int = 0, timeout: float = 3600
) -> PartitionedResult:
    """Run ``workers`` partition processes to ``last_seq`` (``cores`` > 0: pinned to cores
    0..cores-1). Every process connects and subscribes first; then all start together."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(workers)]
    procs = []
    for i in range(workers):
        s = settings.model_copy(update={"projection_workers": workers, "projection_partition": i})
        p = ctx.Process(target=_child, args=(s, last_seq, cores, readies[i], go, out))
        p.start()
        procs.append(p)
    try:
        for r in readies:
            if not r.wait(timeout=120):
                raise RuntimeError("a partition worker did not start within 120 s")
        go.set()
        runs = [out.get(timeout=timeout) for _ in range(workers)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return PartitionedResult(sorted(runs, key=lambda r: r.partition))
