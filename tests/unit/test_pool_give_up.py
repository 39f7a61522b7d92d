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
from tieline.plumbing import db
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


class _Conn:
    """Stands for a connection: the pool only keeps it (weakly) and hands it out."""


async def test_a_wait_is_not_given_up_while_its_connection_is_being_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A busy pool's request has waited past the give-up time; a growth attempt has failed
    meanwhile (the server's connection limit); the connection given back to it is in
    psycopg_pool's check, with a round trip (input was waiting on the socket) that lasts
    several of the timer's looks. By its figures the pool is then unreachable (nothing idle,
    nothing in use, a failed attempt): the request was given up with a live connection on
    its way. The connection being checked is proof the server is there."""
    monkeypatch.setattr(db, "UNREACHABLE_WAIT_S", 0.3)
    monkeypatch.setattr(db, "UNREACHABLE_POLL_S", 0.05)
    stats = {"pool_available": 0, "connections_errors": 0}
    conn, held = _Conn(), _Conn()

    async def slow_check(_: Any) -> None:
        await asyncio.sleep(0.4)  # eight looks of the timer

    async def busy_then_handed_over(self: CheckedPool, *args: Any) -> Any:
        await asyncio.sleep(0.05)
        stats["connections_errors"] = 1  # a growth attempt refused at the connection limit
        await asyncio.sleep(0.35)  # past the give-up time: another request gives its
        self._out.discard(held)  # connection back (putconn), it goes to this request
        await self._checked(conn)  # and is checked in this request's task
        return conn

    monkeypatch.setattr(db, "check_on_checkout", slow_check)
    monkeypatch.setattr(psycopg_pool.AsyncConnectionPool, "getconn", busy_then_handed_over)
    monkeypatch.setattr(CheckedPool, "get_stats", lambda self: dict(stats))
    monkeypatch.setattr(CheckedPool, "closed", property(lambda self: False))  # never opened
    pool = CheckedPool("postgresql://nowhere", open=False, fail_fast=True)
    pool._out.add(held)  # the pool is busy: its one connection is in use
    assert not pool.unreachable
    assert await pool.getconn(30) is conn
    assert pool.timeouts == 0
    pool._out.discard(conn)  # the premise: with the connection neither in use nor idle,
    assert pool.unreachable  # the figures alone say unreachable, as during the check
