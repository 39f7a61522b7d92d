"""The webhook sender against real PostgreSQL and real HTTP receivers on loopback: one attempt
is bounded in total however slowly a receiver answers, a slow endpoint does not hold up the
others, the streak that disables an endpoint counts failed attempts in time order (concurrent
ones once, 429 not at all), a disabled endpoint's changes wait for it to be enabled again, and a
manual redelivery is retried and never races the attempt in flight."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.state import ensure_state_schema
from tieline.services.webhooks import store
from tieline.services.webhooks.app import WebhookService
from tieline.services.webhooks.sender import Sender
from tieline.services.webhooks.signing import new_secret

from tests.conftest import Servers, unique_settings
from tests.integration.hook_receiver import HookReceiver

WS = "w-hooks"
LEASE_S = 60.0


@dataclass
class Hooks:
    """The state schema, a sender on it, and helpers to set up endpoints and deliveries."""

    settings: Settings
    pool: Any
    sender: Sender
    positions: int = 0

    async def endpoint(self, receiver: HookReceiver) -> str:
        key = base64.b64decode(self.settings.master_key or "")
        async with self.pool.connection() as conn:
            row = await store.create_endpoint(
                conn, WS, receiver.url, ["relationship.changed"], None, new_secret(), key, "t"
            )
        return str(row["endpoint_id"])

    async def enqueue(self, endpoint_id: str, n: int = 1) -> list[str]:
        """``n`` deliveries to the endpoint, due now, oldest first; their ids."""
        ids = []
        for _ in range(n):
            self.positions += 1
            body = f'{{"type":"relationship.changed","n":{self.positions}}}'
            async with self.pool.connection() as conn:
                await store.enqueue(
                    conn, [(endpoint_id, WS, str(self.positions), "relationship.changed", body)]
                )
                cur = await conn.execute(
                    "SELECT delivery_id FROM webhook_deliveries WHERE position = %s",
                    (str(self.positions),),
                )
                row = await cur.fetchone()
            ids.append(row["delivery_id"])
        return ids

    async def claim(self, limit: int = 100) -> list[store.Due]:
        async with self.pool.connection() as conn:
            return await store.claim_due(conn, limit, LEASE_S)

    async def row(self, table: str, key: str, value: str) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(f"SELECT * FROM {table} WHERE {key} = %s", (value,))
            row: dict[str, Any] = await cur.fetchone()
        return row

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        return await self.row("webhook_deliveries", "delivery_id", delivery_id)

    async def endpoint_row(self, endpoint_id: str) -> dict[str, Any]:
        return await self.row("webhook_endpoints", "endpoint_id", endpoint_id)

    async def make_due(self, endpoint_id: str) -> None:
        """Skip the backoff: the endpoint's pending deliveries are due now."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now() "
                "WHERE endpoint_id = %s AND status = 'pending'",
                (endpoint_id,),
            )


def hook_settings(servers: Servers, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "webhook_allow_loopback": True,
        "webhook_timeout_s": 10.0,
        "webhook_backoff_s": 0.01,
        "webhook_backoff_max_s": 300.0,
        "webhook_disable_after": 3,
        "webhook_concurrency": 8,
        "master_key": base64.b64encode(os.urandom(32)).decode(),
    }
    values.update(overrides)
    return unique_settings(servers, **values)


@contextlib.asynccontextmanager
async def hooks_on(settings: Settings) -> AsyncIterator[Hooks]:
    pool = db.make_pool(settings, min_size=1, max_size=settings.webhook_concurrency + 2)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await ensure_state_schema(conn, settings.database_schema)
    sender = Sender(settings, pool, base64.b64decode(settings.master_key or ""))
    try:
        yield Hooks(settings, pool, sender)
    finally:
        await sender.close()
        await pool.close()


@contextlib.asynccontextmanager
async def receiving(**kw: Any) -> AsyncIterator[HookReceiver]:
    receiver = await HookReceiver(**kw).start()
    try:
        yield receiver
    finally:
        await receiver.close()


@pytest.fixture
async def hooks(servers: Servers) -> AsyncIterator[Hooks]:
    async with hooks_on(hook_settings(servers)) as h:
        yield h


async def test_one_attempt_is_bounded_in_total_when_the_receiver_trickles(
    servers: Servers,
) -> None:
    """httpx's timeouts are per phase (a read waits at most that long for the *next* bytes); a
    receiver that sends a byte now and then would hold the attempt for ever without a bound
    on the whole attempt."""
    settings = hook_settings(servers, webhook_timeout_s=1.0)
    async with hooks_on(settings) as h, receiving(trickle=True, trickle_s=0.2) as slow:
        [delivery] = await h.enqueue(await h.endpoint(slow))
        [due] = await h.claim()
        async with asyncio.timeout(20):  # 20 times the bound: a loaded machine is fine
            await h.sender.attempt(due)
        row = await h.delivery(delivery)
        assert row["status"] == "pending" and row["attempts"] == 1
        assert "timed out" in row["last_error"], row["last_error"]


async def test_a_slow_endpoint_does_not_hold_up_other_endpoints(servers: Servers) -> None:
    """Six deliveries to a receiver that does not answer, due before two to a healthy one:
    the healthy receiver gets its two while the slow one still holds its requests, and the
    slow endpoint never occupies every sending slot."""
    settings = hook_settings(servers, webhook_concurrency=4, webhook_timeout_s=60.0)
    async with hooks_on(settings) as h, receiving(hold=True) as slow, receiving() as fast:
        await h.enqueue(await h.endpoint(slow), 6)
        await h.enqueue(await h.endpoint(fast), 2)
        service = WebhookService(settings)
        await service.state.open(wait=True)
        loop = asyncio.create_task(service._forever(service.send_once, "send"))
        try:
            await fast.wait_for(2, wait_s=20)
            assert slow.open_now >= 1, "the slow receiver still holds its requests"
            assert slow.most_open < settings.webhook_concurrency
        finally:
            slow.release.set()
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await service.close()


async def test_concurrent_failures_count_once_and_sequential_ones_disable(hooks: Hooks) -> None:
    """Eight attempts that fail at the same time are one observation of a failing endpoint,
    not eight: the streak counts failed attempts in time order (webhook_disable_after = 3)."""
    async with receiving(hold=True) as failing:
        failing.script.extend([(500, {})] * 20)
        endpoint = await hooks.endpoint(failing)
        deliveries = await hooks.enqueue(endpoint, 8)
        due = await hooks.claim()
        assert len(due) == 8
        sending = asyncio.gather(*(hooks.sender.attempt(d) for d in due))
        await failing.wait_for(8)  # all eight in flight together
        failing.release.set()
        await sending
        ep = await hooks.endpoint_row(endpoint)
        assert ep["disabled_at"] is None and ep["consecutive_failures"] == 1
        for n in (2, 3):  # one attempt after another: each one counts
            await hooks.make_due(endpoint)
            [one] = await hooks.claim(limit=1)
            await hooks.sender.attempt(one)
            ep = await hooks.endpoint_row(endpoint)
            assert ep["consecutive_failures"] == n
        assert ep["disabled_at"] is not None
        assert "3 consecutive failed attempts" in ep["disabled_reason"]
        # Disabled, its deliveries wait (none was given up).
        assert {(await hooks.delivery(d))["status"] for d in deliveries} == {"pending"}


async def test_429_does_not_count_and_its_retry_after_pauses_the_endpoint(hooks: Hooks) -> None:
    async with receiving() as busy:
        busy.script.extend([(429, {"Retry-After": "120"}), (503, {})])
        endpoint = await hooks.endpoint(busy)
        first, second = await hooks.enqueue(endpoint, 2)
        [due] = await hooks.claim(limit=1)
        await hooks.sender.attempt(due)
        ep = await hooks.endpoint_row(endpoint)
        assert ep["consecutive_failures"] == 0, "a 429 says the receiver is there"
        soon = datetime.now(UTC) + timedelta(seconds=100)
        for d in (first, second):  # the receiver asked for 120 s of quiet: all of it waits
            row = await hooks.delivery(d)
            assert row["status"] == "pending" and row["next_attempt_at"] > soon, row
        assert await hooks.claim() == []
        await hooks.make_due(endpoint)
        [due] = await hooks.claim(limit=1)
        await hooks.sender.attempt(due)  # 503 without Retry-After: counts, like a timeout
        assert (await hooks.endpoint_row(endpoint))["consecutive_failures"] == 1


async def test_changes_for_a_disabled_endpoint_wait_until_it_is_enabled(hooks: Hooks) -> None:
    async with receiving() as receiver:
        endpoint = await hooks.endpoint(receiver)
        [before] = await hooks.enqueue(endpoint)
        async with hooks.pool.connection() as conn:
            await store.disable(conn, endpoint, "an admin's test")
            subscribed = await store.subscribed_endpoints(conn, [WS])
        assert [e["endpoint_id"] for e in subscribed] == [endpoint]
        [during] = await hooks.enqueue(endpoint)
        assert (await hooks.delivery(before))["status"] == "pending"
        assert await hooks.claim() == [], "nothing is sent while the endpoint is disabled"
        async with hooks.pool.connection() as conn:
            await store.enable_endpoint(conn, WS, endpoint)
        for due in await hooks.claim():
            await hooks.sender.attempt(due)
        got = await receiver.wait_for(2)
        assert sorted(r.webhook_id for r in got) == sorted([before, during])
        assert {(await hooks.delivery(d))["status"] for d in (before, during)} == {"succeeded"}


async def test_manual_redelivery_is_retried_on_a_disabled_endpoint(hooks: Hooks) -> None:
    async with receiving() as receiver:
        receiver.script.append((500, {}))
        endpoint = await hooks.endpoint(receiver)
        [delivery] = await hooks.enqueue(endpoint)
        async with hooks.pool.connection() as conn:
            await store.disable(conn, endpoint, "an admin's test")
            await store.redeliver(conn, WS, endpoint, delivery)
        [due] = await hooks.claim()
        await hooks.sender.attempt(due)  # the receiver answers 500
        row = await hooks.delivery(delivery)
        assert row["status"] == "pending" and row["manual"], row
        await hooks.make_due(endpoint)
        [again] = await hooks.claim()
        await hooks.sender.attempt(again)
        assert (await hooks.delivery(delivery))["status"] == "succeeded"
        assert len(await receiver.wait_for(2)) == 2


async def test_redelivery_during_an_attempt_waits_for_that_attempt(hooks: Hooks) -> None:
    async with receiving(hold=True) as receiver:
        endpoint = await hooks.endpoint(receiver)
        [delivery] = await hooks.enqueue(endpoint)
        [due] = await hooks.claim()
        sending = asyncio.create_task(hooks.sender.attempt(due))
        await receiver.wait_for(1)
        async with hooks.pool.connection() as conn:
            assert await store.redeliver(conn, WS, endpoint, delivery) is not None
        assert await hooks.claim() == [], "the attempt in flight still holds its lease"
        receiver.release.set()
        await sending
        row = await hooks.delivery(delivery)
        assert row["status"] == "pending" and row["manual"], "the redelivery still stands"
        [again] = await hooks.claim()
        await hooks.sender.attempt(again)
        assert len(await receiver.wait_for(2)) == 2 and receiver.most_open == 1
        assert (await hooks.delivery(delivery))["status"] == "succeeded"


async def test_the_next_address_is_tried_when_one_refuses_the_connection(
    servers: Servers,
) -> None:
    """A name with two addresses, the first of which refuses connections (nothing listens on
    127.0.0.2): the attempt goes on to the second, in the resolver's order."""
    async with hooks_on(hook_settings(servers)) as h, receiving() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]

        async def resolve(host: str, port: int) -> list[str]:
            assert host == "hooks.test"
            return ["127.0.0.2", "127.0.0.1"]

        sender = Sender(h.settings, h.pool, h.sender.master_key, resolve)
        try:
            endpoint = await h.endpoint(receiver)
            async with h.pool.connection() as conn:
                await conn.execute(
                    "UPDATE webhook_endpoints SET url = %s WHERE endpoint_id = %s",
                    (f"http://hooks.test:{port}/hook", endpoint),
                )
            [delivery] = await h.enqueue(endpoint)
            [due] = await h.claim()
            await sender.attempt(due)
        finally:
            await sender.close()
        assert (await h.delivery(delivery))["status"] == "succeeded"
        [arrived] = await receiver.wait_for(1)
        assert arrived.webhook_id == delivery
