"""Every process's PostgreSQL pools in its Prometheus metrics (plumbing/metrics.py,
``tieline_db_pool_*{pool}``): read at scrape time from psycopg_pool's own figures, on a real
pool of the machine's (or the embedded) PostgreSQL, and on one whose server refuses it."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import PoolTimeout
from tieline.plumbing import metrics  # noqa: F401 (registers the pool collector)
from tieline.plumbing.db import make_pool

from tests.conftest import Servers, unique_settings


def pool_metrics(name: str) -> dict[str, float]:
    """This process's ``tieline_db_pool_*`` samples of the pool called ``name``."""
    text = generate_latest(REGISTRY).decode()
    return {
        s.name.removeprefix("tieline_db_pool_"): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("tieline_db_pool_") and s.labels.get("pool") == name
    }


async def test_a_pools_connections_waits_and_timeouts_are_counted(servers: Servers) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    pool = make_pool(unique_settings(servers), min_size=1, max_size=1, name=name)
    assert pool_metrics(name) == {}  # never opened: not shown
    await pool.open(wait=True)
    try:
        seen = pool_metrics(name)
        assert seen["connections"] == 1 and seen["connections_max"] == 1
        assert seen["connections_idle"] == 1 and seen["unreachable"] == 0
        assert seen["timeouts_total"] == 0 and seen["connection_errors_total"] == 0
        async with pool.connection():
            waiting = asyncio.create_task(pool.getconn(timeout=0.5))
            await asyncio.sleep(0.1)
            busy = pool_metrics(name)
            with pytest.raises(PoolTimeout):
                await waiting
            # a wait cancelled by its caller (a client gone, an outer timeout) is no timeout
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pool.getconn(timeout=5), 0.2)
        assert busy["connections_idle"] == 0 and busy["requests_waiting"] == 1
        assert busy["connections_in_use"] == 1
        after = pool_metrics(name)
        assert after["timeouts_total"] == 1 and after["requests_waiting"] == 0
        assert after["connections_in_use"] == 0
        # An idle connection says the server is there, whatever attempt failed meanwhile
        # (psycopg_pool's count of failed attempts, raised by hand: a slot's reconnection that
        # failed during a short restart, on a quiet pool).
        pool._stats["connections_errors"] += 1
        assert pool_metrics(name)["unreachable"] == 0
        # A connection given back twice is refused and counts once (a count went to -1, and
        # with it the unreachable flag and fail_fast were off for good).
        conn = await pool.getconn()
        await pool.putconn(conn)
        with pytest.raises(ValueError):
            await pool.putconn(conn)
        assert pool_metrics(name)["connections_in_use"] == 0
    finally:
        await pool.close()
    # closed: its gauges are 0, its counts stay (a counter that went down would be read as a
    # restart), and a pool of the same name adds to them
    assert pool_metrics(name) | {"timeouts_total": 1} == pool_metrics(name)
    assert pool_metrics(name)["connections"] == 0 and pool_metrics(name)["unreachable"] == 0
    again = make_pool(unique_settings(servers), min_size=1, max_size=1, name=name)
    await again.open(wait=True)
    try:
        with pytest.raises(PoolTimeout):
            async with again.connection():
                await again.getconn(timeout=0.1)
        assert pool_metrics(name)["timeouts_total"] == 2
        assert pool_metrics(name)["connections"] == 1
    finally:
        await again.close()


async def test_pools_of_one_name_are_unreachable_only_when_each_is(servers: Servers) -> None:
    """A read pool and its replacement at a read-model switch share a name: a replacement
    that cannot connect does not make the process look cut off while the other serves."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    serving = make_pool(unique_settings(servers), min_size=1, max_size=1, name=name)
    await serving.open(wait=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://tieline@127.0.0.1:{port}/tieline"
    failing = make_pool(unique_settings(servers, database_url=url), min_size=1, name=name)
    await failing.open(wait=False)
    try:
        for _ in range(100):
            if failing.unreachable:
                break
            await asyncio.sleep(0.05)
        assert failing.unreachable and not serving.unreachable
        seen = pool_metrics(name)
        assert seen["unreachable"] == 0 and seen["connection_errors_total"] >= 1
        errors = seen["connection_errors_total"]
        await failing.close()  # the switch gave up on it
        assert pool_metrics(name)["connection_errors_total"] >= errors
    finally:
        await failing.close()
        await serving.close()


async def test_a_pool_whose_server_refuses_it_is_unreachable(servers: Servers) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"t-{uuid.uuid4().hex[:8]}"
    url = f"postgresql://tieline@127.0.0.1:{port}/tieline"
    pool = make_pool(unique_settings(servers, database_url=url), min_size=1, name=name)
    await pool.open(wait=False)
    try:
        for _ in range(100):
            if pool_metrics(name).get("connection_errors_total"):
                break
            await asyncio.sleep(0.05)
        seen = pool_metrics(name)
        assert seen["connection_errors_total"] >= 1 and seen["unreachable"] == 1
        assert seen["connections_idle"] == 0
    finally:
        await pool.close()
