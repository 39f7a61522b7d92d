"""Many small concurrent requests to PostgreSQL run as one statement (group commit).

The write services answer many commands at once, and each command used to run its own
statements (take its event ids, read its people's keys, record its sequences): three round
trips, three parses and plans, three transactions' worth of PostgreSQL CPU per single-event
command. A :class:`Coalescer` lets each command submit its part and await its own answer,
while one run at a time executes everything submitted so far as one statement. With nothing
else in flight a request runs at once, alone (no added latency when idle); under load the
requests that arrive during a run form the next one, so batches grow with the load.

A run that fails fails every request in it with the same exception, as each would have failed
on its own (the statement is the same, only over more rows). A request whose caller was
cancelled before its run started is left out of the run (nobody waits for it, and a caller
that gave up must not have its statement run behind its back); one already in a run stays in.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await submit(item)`` returns ``run([..., item, ...])``'s result for ``item``.

    ``run`` gets the items of one batch in submission order and returns one result per item,
    in the same order. At most ``max_in_flight`` runs at once, each of at most ``max_batch``
    items.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        max_in_flight: int = 1,
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        # Keep the running tasks referenced (the event loop holds only weak references).
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._maybe_start()
        return await future

    def _maybe_start(self) -> None:
        if self._pending and self._in_flight < self._max_in_flight:
            self._in_flight += 1
            # A fresh context: the batch serves many callers, so it must not run (log, trace,
            # or pick a connection) as whichever caller happened to start it.
            task = asyncio.create_task(self._flush(), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        # The batch is taken when the task first runs, so every request submitted in the
        # same turn of the event loop joins it. A cancelled caller cancelled its future.
        self._pending = [p for p in self._pending if not p[1].done()]
        batch = self._pending[: self._max_batch]
        del self._pending[: len(batch)]
        try:
            if batch:
                await self._settle(batch)
        finally:
            self._in_flight -= 1
            self._maybe_start()

    async def _settle(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a coalesced run returned {len(results)} of {len(batch)}")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # a caller that was cancelled meanwhile
                future.set_result(result)


__all__ = ["Coalescer"]
