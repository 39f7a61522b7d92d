"""The coalescer behind the write side's shared statements (plumbing/coalesce.py)."""

from __future__ import annotations

import asyncio

import pytest
from tieline.plumbing.coalesce import Coalescer


async def test_concurrent_requests_share_runs_and_each_gets_its_own_result() -> None:
    runs: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        runs.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(run)
    assert await c.submit(7) == 70  # idle: a request runs at once, alone
    assert runs == [[7]]
    # Submitted in one turn of the event loop: one run.
    results = await asyncio.gather(*(c.submit(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert runs[1] == list(range(50))
    # Submitted while a run is in flight: they wait for it and go together in the next one.
    first = asyncio.ensure_future(c.submit(100))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(c.submit(i)) for i in range(101, 110)]
    assert await first == 1000 and [await r for r in rest] == [i * 10 for i in range(101, 110)]
    assert runs[2:] == [[100], list(range(101, 110))]


async def test_one_run_at_a_time_and_batches_bounded() -> None:
    running = 0
    most = 0
    sizes: list[int] = []

    async def run(items: list[int]) -> list[None]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        sizes.append(len(items))
        await asyncio.sleep(0.005)
        running -= 1
        return [None] * len(items)

    c: Coalescer[int, None] = Coalescer(run, max_batch=7)
    await asyncio.gather(*(c.submit(i) for i in range(40)))
    assert most == 1
    assert max(sizes) == 7 and sum(sizes) == 40


async def test_a_failed_run_fails_its_requests_and_not_the_next_run() -> None:
    calls = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.005)
        if calls == 1:
            raise ValueError("database said no")
        return items

    c: Coalescer[int, int] = Coalescer(run)
    first = asyncio.ensure_future(c.submit(1))
    await asyncio.sleep(0)  # the first run starts with item 1 alone
    second = asyncio.ensure_future(c.submit(2))
    with pytest.raises(ValueError, match="database said no"):
        await first
    assert await second == 2


async def test_a_run_returning_the_wrong_number_of_results_is_an_error() -> None:
    async def run(items: list[int]) -> list[int]:
        return items[:-1]

    c: Coalescer[int, int] = Coalescer(run)
    with pytest.raises(RuntimeError, match="returned 0 of 1"):
        await c.submit(1)


async def test_a_cancelled_caller_does_not_break_the_others() -> None:
    gate = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        await gate.wait()
        return items

    c: Coalescer[int, int] = Coalescer(run)
    a = asyncio.ensure_future(c.submit(1))
    await asyncio.sleep(0)
    b = asyncio.ensure_future(c.submit(2))
    d = asyncio.ensure_future(c.submit(3))
    await asyncio.sleep(0)
    b.cancel()
    gate.set()
    assert await a == 1
    assert await d == 3
    assert b.cancelled()


async def test_a_caller_cancelled_before_its_run_is_left_out_of_it() -> None:
    """Cancelled while waiting for a run: its item is not run. Cancelled once its run has
    started: the run goes on with it (its statement may already be executing)."""
    gate = asyncio.Event()
    runs: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        runs.append(items)
        await gate.wait()
        return items

    c: Coalescer[int, int] = Coalescer(run)
    in_flight = asyncio.ensure_future(c.submit(1))
    also_in_flight = asyncio.ensure_future(c.submit(2))
    await asyncio.sleep(0)  # the first run takes 1 and 2 and waits at the gate
    waiting = [asyncio.ensure_future(c.submit(i)) for i in (3, 4, 5)]
    await asyncio.sleep(0)
    also_in_flight.cancel()
    waiting[0].cancel()
    waiting[2].cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await in_flight == 1 and await waiting[1] == 4
    assert runs == [[1, 2], [4]]
    assert also_in_flight.cancelled() and waiting[0].cancelled() and waiting[2].cancelled()


async def test_no_run_when_every_waiting_caller_was_cancelled() -> None:
    gate = asyncio.Event()
    runs: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        runs.append(items)
        await gate.wait()
        return items

    c: Coalescer[int, int] = Coalescer(run)
    first = asyncio.ensure_future(c.submit(1))
    await asyncio.sleep(0)
    gone = [asyncio.ensure_future(c.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    for g in gone:
        g.cancel()
    gate.set()
    assert await first == 1
    assert await c.submit(4) == 4  # the coalescer still runs what comes next
    assert runs == [[1], [4]]
