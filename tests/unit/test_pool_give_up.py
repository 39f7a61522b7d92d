"""A fail_fast pool's timer cancels the wait of a request while the server cannot be reached.
Whatever the wait then raises, the cancellation is the pool's own and must not stay on the
caller's task (a count left there turns the caller's next ``asyncio.timeout`` or TaskGroup
cancellation into something else)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import psycopg_pool
import pytest
from tieline.plumbing.db import CheckedPool


async def test_a_cancelled_wait_that_became_another_error_leaves_no_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def wait_then_fail(self: Any, *args: Any) -> Any:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            # What a connection check cut off mid round trip can raise instead.
            raise psycopg.OperationalError("consuming input failed") from None

    monkeypatch.setattr(psycopg_pool.AsyncConnectionPool, "getconn", wait_then_fail)
    looks = iter([False])  # reachable when the request comes, unreachable from then on
    monkeypatch.setattr(CheckedPool, "unreachable", property(lambda self: next(looks, True)))
    monkeypatch.setattr(CheckedPool, "closed", property(lambda self: False))  # never opened
    pool = CheckedPool("postgresql://nowhere", open=False, fail_fast=True)
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(psycopg.OperationalError):
        await pool.getconn(30)
    assert task.cancelling() == 0
    assert not pool._given_up
