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
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import master_key_from_env
from tieline.plumbing.state import ensure_state_schema
from tieline.services.webhooks import store
from tieline.services.webhooks.app import WebhookService
from tieline.services.webhooks.sender import Sender
from tieline.services.webhooks.signing import new_secret

from tests.conftest import Servers, unique_settings
from tests.integration.hook_receiver import HookReceiver

WS = "w-hooks"
#: "hooks" in fullwidth letters.
FULLWIDTH_HOOKS = "".join(chr(ord(c) - ord("a") + 0xFF41) for c in "hooks")
LEASE_S = 60.0


@dataclass
class Hooks:
    """The state schema, a sender on it, and helpers to set up endpoints and deliveries."""

    settings: Settings
    pool: Any
    sender: Sender
    positions: int = 0

    async def endpoint(self, receiver: HookReceiver) -> str:
        key = master_key_from_env(self.settings.master_key)
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
    sender = Sender(settings, pool, master_key_from_env(settings.master_key))
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

        delivery = await _attempt_by_name(h, receiver, resolve, port)
        assert (await h.delivery(delivery))["status"] == "succeeded"
        [arrived] = await receiver.wait_for(1)
        assert arrived.webhook_id == delivery


async def test_an_internationalized_host_is_sent_as_its_a_labels(servers: Servers) -> None:
    """``faß.test``: resolved and sent (Host header) as IDNA 2008's ``xn--fa-hia.test``, the
    name browsers use. Python's own encoding (IDNA 2003) would have looked up ``fass.test``,
    another domain, and the raw name could not go into the Host header."""
    async with hooks_on(hook_settings(servers)) as h, receiving() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        asked: list[str] = []

        async def resolve(host: str, port: int) -> list[str]:
            asked.append(host)
            return ["127.0.0.1"]

        delivery = await _attempt_by_name(h, receiver, resolve, port, "Faß.test")
        assert asked == ["xn--fa-hia.test"]
        assert (await h.delivery(delivery))["status"] == "succeeded"
        [arrived] = await receiver.wait_for(1)
        assert arrived.host == f"xn--fa-hia.test:{port}"


async def test_a_host_written_in_fullwidth_letters_is_sent(servers: Servers) -> None:
    """The name in fullwidth letters (U+FF48 ...) maps to ``hooks.test`` (UTS 46) and passes
    the check; every attempt then failed in httpx, which refuses the raw name when asked for
    the URL's port."""
    async with hooks_on(hook_settings(servers)) as h, receiving() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]

        async def resolve(host: str, port: int) -> list[str]:
            assert host == "hooks.test"
            return ["127.0.0.1"]

        delivery = await _attempt_by_name(h, receiver, resolve, port, f"{FULLWIDTH_HOOKS}.test")
        assert (await h.delivery(delivery))["status"] == "succeeded"
        [arrived] = await receiver.wait_for(1)
        assert arrived.host == f"hooks.test:{port}"


@pytest.mark.parametrize("holes", [1, 5])
async def test_addresses_that_drop_connections_do_not_use_up_the_attempt(
    servers: Servers, holes: int
) -> None:
    """The first ``holes`` of the name's addresses accept nothing and refuse nothing
    (listeners on 127.0.0.2, .3, ... whose accept queues are full: the kernel drops further
    SYNs, as a broken route does): the attempt moves on within NEXT_ADDRESS_AFTER_S or a
    share of its time, and reaches the working address in time. One used to take the whole
    attempt; five took 3 s each, more than the attempt had."""
    settings = hook_settings(servers, webhook_timeout_s=10.0)
    async with hooks_on(settings) as h, receiving() as receiver:
        port = int(receiver.url.split(":")[2].split("/")[0])
        with contextlib.ExitStack() as stack:
            dropping = [f"127.0.0.{2 + i}" for i in range(holes)]
            for address in dropping:
                stack.enter_context(_full_listener(address, port))

            async def resolve(host: str, port: int) -> list[str]:
                return [*dropping, "127.0.0.1"]

            started = time.monotonic()
            delivery = await _attempt_by_name(h, receiver, resolve, port)
            took = time.monotonic() - started
        row = await h.delivery(delivery)
        assert row["status"] == "succeeded", row
        assert took < settings.webhook_timeout_s, took
        [arrived] = await receiver.wait_for(1)
        assert arrived.webhook_id == delivery


@contextlib.contextmanager
def _full_listener(address: str, port: int) -> Iterator[None]:
    """A listener on ``address`` whose accept queue is full: connections to it hang."""
    with socket.socket() as hole:
        hole.bind((address, port))
        hole.listen(0)
        filler = socket.create_connection((address, port), timeout=2)
        try:
            with pytest.raises(TimeoutError):  # what every later connect meets
                socket.create_connection((address, port), timeout=0.3).close()
            yield
        finally:
            filler.close()


async def _attempt_by_name(
    h: Hooks, receiver: HookReceiver, resolve: Any, port: int | str, host: str = "hooks.test"
) -> str:
    """One delivery to ``http://<host>:<port>/hook`` through ``resolve``, attempted once; its
    id."""
    sender = Sender(h.settings, h.pool, h.sender.master_key, resolve)
    try:
        endpoint = await h.endpoint(receiver)
        async with h.pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_endpoints SET url = %s WHERE endpoint_id = %s",
                (f"http://{host}:{port}/hook", endpoint),
            )
        [delivery] = await h.enqueue(endpoint)
        [due] = await h.claim()
        await sender.attempt(due)
    finally:
        await sender.close()
    return delivery


async def test_a_pipeline_of_failures_counts_one_per_attempt_and_disables(
    servers: Servers,
) -> None:
    """Attempts to a dead receiver overlap two at a time, each claimed while the one before
    it is still in flight (what the send loop does with free slots): a failure that overlapped
    only *uncounted* failures still counts, so the streak grows about once per attempt and the
    endpoint is disabled (the old rule dropped every failure that overlapped any other one:
    the streak stayed at 1 and every delivery ran out of attempts instead of being held)."""
    settings = hook_settings(servers, webhook_backoff_s=0.001)  # the span: 3 ms
    async with hooks_on(settings) as h, receiving() as dead:
        dead.script.extend([(500, {})] * 20)
        endpoint = await h.endpoint(dead)
        await h.enqueue(endpoint, 8)
        [ahead] = await h.claim(limit=1)
        counted = []
        for _ in range(5):  # claim the next, then the one ahead of it fails
            [following] = await h.claim(limit=1)
            await asyncio.sleep(0.005)
            await h.sender.attempt(ahead)
            counted.append((await h.endpoint_row(endpoint))["consecutive_failures"])
            ahead = following
        ep = await h.endpoint_row(endpoint)
        assert counted[:5] == [1, 1, 2, 2, 3], counted
        assert ep["disabled_at"] is not None, ep
        async with h.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT a.error FROM webhook_attempts a JOIN webhook_deliveries d "
                "USING (delivery_id) WHERE d.endpoint_id = %s ORDER BY a.id",
                (endpoint,),
            )
            log = [r["error"] for r in await cur.fetchall()]
        assert log[0] == "HTTP 500" + store.counted_note(1) and log[1] == "HTTP 500", log


async def test_manual_redeliveries_never_count_nor_disable_even_on_410(hooks: Hooks) -> None:
    """An admin's redeliveries to a failing receiver, one after another: none counts towards
    the streak, and a 410 answered to one does not disable the endpoint."""
    async with receiving() as receiver:
        receiver.script.extend([(500, {})] * 4 + [(410, {})])
        endpoint = await hooks.endpoint(receiver)
        deliveries = await hooks.enqueue(endpoint, 5)
        async with hooks.pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_deliveries SET status = 'succeeded' WHERE endpoint_id = %s",
                (endpoint,),
            )
        for d in deliveries:
            async with hooks.pool.connection() as conn:
                await store.redeliver(conn, WS, endpoint, d)
            [due] = await hooks.claim(limit=1)
            assert due.manual
            await hooks.sender.attempt(due)
        ep = await hooks.endpoint_row(endpoint)
        assert ep["consecutive_failures"] == 0 and ep["disabled_at"] is None, ep


async def test_the_failing_span_runs_from_the_streaks_first_failure(servers: Servers) -> None:
    """A quiet endpoint (made an hour ago, nothing sent since) whose receiver is away for a
    moment: three quick failures are not enough, the streak has lasted well under one
    delivery's retries (15 s here). Once its first counted failure is that long ago, the next
    counted failure disables it."""
    settings = hook_settings(servers, webhook_backoff_s=5.0, webhook_backoff_max_s=3600.0)
    async with hooks_on(settings) as h, receiving() as receiver:
        receiver.script.extend([(503, {})] * 10)
        endpoint = await h.endpoint(receiver)
        async with h.pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_endpoints SET created_at = now() - interval '1 hour' "
                "WHERE endpoint_id = %s",
                (endpoint,),
            )
        await h.enqueue(endpoint, 4)
        for _ in range(3):
            [due] = await h.claim(limit=1)
            await h.sender.attempt(due)
        ep = await h.endpoint_row(endpoint)
        assert ep["consecutive_failures"] == 3 and ep["disabled_at"] is None, ep
        async with h.pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_attempts SET at = at - interval '20 seconds' WHERE counted = 1",
            )
        [due] = await h.claim(limit=1)
        await h.sender.attempt(due)
        ep = await h.endpoint_row(endpoint)
        assert ep["disabled_at"] is not None, ep
        assert "4 consecutive failed attempts over 2" in ep["disabled_reason"]


async def rows_read(conn: Any, table: str = "webhook_deliveries") -> int:
    """Rows of ``table`` this transaction has read so far (scans and index fetches)."""
    cur = await conn.execute(
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) AS n "
        "FROM pg_stat_xact_user_tables WHERE relid = %s::regclass",
        (table,),
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def index_scans(conn: Any) -> int:
    """Index scans of webhook_deliveries this transaction has started so far."""
    cur = await conn.execute(
        "SELECT coalesce(idx_scan, 0) AS n FROM pg_stat_xact_user_tables "
        "WHERE relid = 'webhook_deliveries'::regclass"
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def test_the_claim_reads_a_bounded_window_and_never_held_rows(hooks: Hooks) -> None:
    """20 000 deliveries held for a disabled endpoint, 20 000 due for an enabled one, three for
    another: a claim reads a few rows per endpoint (it used to rank every due row, held ones
    too, on every claim: 197 ms for 200 000), held ones are not due, and one endpoint's
    backlog does not hide another's rows."""
    async with receiving() as receiver:
        held, busy, other = [await hooks.endpoint(receiver) for _ in range(3)]
        async with hooks.pool.connection() as conn:
            for endpoint, prefix in ((held, "h"), (busy, "b")):
                await conn.execute(
                    """INSERT INTO webhook_deliveries (delivery_id, endpoint_id, workspace_id,
                           position, kind, body, next_attempt_at)
                       SELECT %s || g, %s, %s, %s || g, 'k', '{}',
                              now() - interval '1 day' + g * interval '1 ms'
                         FROM generate_series(1, 20000) g""",
                    (prefix, endpoint, WS, prefix),
                )
            await store.disable(conn, held, "an admin's test")
        [late] = await hooks.enqueue(held)
        assert (await hooks.delivery(late))["next_attempt_at"] >= store.HELD_SINCE
        await hooks.enqueue(other, 3)
        async with hooks.pool.connection() as conn, conn.transaction(force_rollback=True):
            await conn.execute("ANALYZE webhook_deliveries")
            before = await rows_read(conn)
            due = await store.claim_due(conn, 8, LEASE_S, 2)
            read = await rows_read(conn) - before
        assert read < 1000, f"the claim read {read} rows"
        # Two per endpoint, the busy one's backlog not hiding the other's rows (a window over
        # the global due index held only the busy endpoint's oldest rows: nothing else).
        assert sorted(d.endpoint_id for d in due) == sorted([busy, busy, other, other])
        async with hooks.pool.connection() as conn:  # as an enqueue racing the disable left it
            await conn.execute(
                """UPDATE webhook_deliveries SET next_attempt_at = now() - interval '2 days'
                    WHERE delivery_id IN (SELECT delivery_id FROM webhook_deliveries
                                           WHERE endpoint_id = %s LIMIT 150)""",
                (held,),
            )
        claimed = [await hooks.claim(limit=8) for _ in range(3)]  # each holds what it meets
        assert [len(c) for c in claimed] == [8, 8, 8], "due rows of a disabled endpoint in the way"
        assert held not in {d.endpoint_id for c in claimed for d in c}
        async with hooks.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM webhook_deliveries WHERE endpoint_id = %s "
                "AND next_attempt_at < %s",
                (held, store.HELD_SINCE),
            )
            assert (await cur.fetchone())["n"] == 150 - 3 * 8  # held as the claims met them
        async with hooks.pool.connection() as conn:
            await store.enable_endpoint(conn, WS, held)
        assert (await hooks.delivery(late))["next_attempt_at"] <= datetime.now(UTC)


async def test_a_row_rescheduled_or_held_during_the_claim_is_not_taken(hooks: Hooks) -> None:
    """The claim re-checks, on the row it locks, that it is still due and its endpoint still
    enabled: a row whose attempt was recorded (next try in an hour) or whose endpoint was
    disabled after the claim's snapshot is not leased (PostgreSQL re-evaluates the locking
    statement's conditions on the newest version of a row changed meanwhile). The claim runs
    while another transaction changes the row; whatever the interleaving, it is never taken."""
    async with receiving() as receiver:
        big, other = await hooks.endpoint(receiver), await hooks.endpoint(receiver)
        async with hooks.pool.connection() as conn:
            await conn.execute(
                """INSERT INTO webhook_deliveries (delivery_id, endpoint_id, workspace_id,
                       position, kind, body, next_attempt_at)
                   SELECT 'm' || g, %s, %s, g::text, 'k', '{}',
                          now() - interval '1 hour' + g * interval '1 ms'
                     FROM generate_series(1, 100000) g""",
                (big, WS),
            )
            await conn.execute("ANALYZE webhook_deliveries")
        for _ in range(3):
            [r] = await hooks.enqueue(other)
            async with hooks.pool.connection() as conn:  # the oldest due row
                await conn.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = now() - interval '2 hours' "
                    "WHERE delivery_id = %s",
                    (r,),
                )

            async def claim(r: str = r) -> list[store.Due]:
                async with hooks.pool.connection() as conn, conn.transaction(force_rollback=True):
                    got = await store.claim_due(conn, 16, LEASE_S, 4)
                return [g for g in got if g.delivery_id == r]

            claiming = asyncio.create_task(claim())
            await asyncio.sleep(0.02)
            async with hooks.pool.connection() as conn:
                await conn.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = now() + interval '1 hour' "
                    "WHERE delivery_id = %s",
                    (r,),
                )
                await conn.execute(
                    "UPDATE webhook_endpoints SET disabled_at = now() WHERE endpoint_id = %s",
                    (other,),
                )
            got = await claiming
            async with hooks.pool.connection() as conn:
                await conn.execute(
                    "UPDATE webhook_endpoints SET disabled_at = NULL WHERE endpoint_id = %s",
                    (other,),
                )
                await conn.execute(
                    "UPDATE webhook_deliveries SET status = 'succeeded' WHERE delivery_id = %s",
                    (r,),
                )
            if got:  # the claim ran before the change: the row was due then
                assert got[0].due_at < datetime.now(UTC) - timedelta(minutes=30), got


async def test_a_host_whose_dns_hangs_does_not_starve_other_endpoints(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One endpoint's host name takes 3 s to look up (a DNS server that does not answer; the
    thread cannot be stopped), 40 of its deliveries due: the sender resolves in its own threads
    with one lookup per host at a time, so another endpoint's lookups still run at once and its
    deliveries arrive (with the lookups in the loop's shared executor, four threads here, the
    stuck lookups took every thread). Our resolver's trouble does not count towards disabling
    the stuck endpoint."""
    import socket
    import time
    from concurrent.futures import ThreadPoolExecutor

    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if str(host).startswith("stuck."):
            time.sleep(3.0)
            host = "127.0.0.1"
        elif str(host).startswith("quick."):
            host = "127.0.0.1"
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(4))
    settings = hook_settings(
        servers,
        webhook_concurrency=16,
        webhook_timeout_s=1.0,
        webhook_backoff_s=0.05,
        webhook_backoff_max_s=0.1,
        webhook_max_attempts=50,
    )
    async with hooks_on(settings) as h, receiving() as fast:
        port = fast.url.split(":")[2].split("/")[0]
        stuck, quick = await h.endpoint(fast), await h.endpoint(fast)
        async with h.pool.connection() as conn:
            for endpoint, name in ((stuck, "stuck"), (quick, "quick")):
                await conn.execute(
                    "UPDATE webhook_endpoints SET url = %s WHERE endpoint_id = %s",
                    (f"http://{name}.test:{port}/hook", endpoint),
                )
        await h.enqueue(stuck, 40)
        service = WebhookService(settings)
        await service.state.open(wait=True)
        loop = asyncio.create_task(service._forever(service.send_once, "send"))
        try:
            await asyncio.sleep(1.5)  # the stuck host's attempts are under way
            await h.enqueue(quick, 3)
            await fast.wait_for(3, wait_s=2.5)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await service.close()
        ep = await h.endpoint_row(stuck)
        assert ep["consecutive_failures"] == 0 and ep["disabled_at"] is None, ep


async def test_a_change_enqueued_while_the_endpoint_is_enabled_is_not_held(
    servers: Any,
) -> None:
    """A change handed over while an enable commits: the enqueue read the endpoint as
    disabled from its snapshot and held the new row (year 9999) for ever, after the enable
    had made the held rows due. It now waits for the enable and reads its outcome."""
    async with (
        hooks_on(hook_settings(servers)) as h,
        receiving() as receiver,
    ):
        endpoint = await h.endpoint(receiver)
        body = '{"type":"relationship.changed","n":0}'
        async with h.pool.connection() as enabling, h.pool.connection() as handing_over:
            await store.disable(enabling, endpoint, "for the test")
            async with enabling.transaction():
                await store.enable_endpoint(enabling, WS, endpoint)
                item = (endpoint, WS, "race", "relationship.changed", body)
                late = asyncio.create_task(store.enqueue(handing_over, [item]))
                await asyncio.sleep(0.3)  # the enqueue runs while the enable is uncommitted
            await late
            cur = await enabling.execute(
                "SELECT next_attempt_at < now() + interval '1 hour' AS due "
                "FROM webhook_deliveries WHERE endpoint_id = %s AND position = 'race'",
                (endpoint,),
            )
            row = await cur.fetchone()
        assert row is not None and row["due"], "held for ever although the endpoint is enabled"


async def test_a_backlog_at_its_bound_does_not_hide_another_endpoints_rows(
    hooks: Hooks,
) -> None:
    """One endpoint with 200 due deliveries, four in flight (its bound), another with one: a
    claim with free slots takes the other's. A window over the oldest due rows of all
    endpoints held only the first endpoint's, all above its bound, and claimed nothing."""
    async with receiving() as receiver:
        backlog, other = [await hooks.endpoint(receiver) for _ in range(2)]
        async with hooks.pool.connection() as conn:
            await conn.execute(
                """INSERT INTO webhook_deliveries (delivery_id, endpoint_id, workspace_id,
                       position, kind, body, next_attempt_at)
                   SELECT 'a' || g, %s, %s, 'a' || g, 'k', '{}',
                          now() - interval '1 hour' + g * interval '1 ms'
                     FROM generate_series(1, 200) g""",
                (backlog, WS),
            )
        async with hooks.pool.connection() as conn:
            in_flight = await store.claim_due(conn, 4, LEASE_S, 4)
        assert {d.endpoint_id for d in in_flight} == {backlog} and len(in_flight) == 4
        [waiting] = await hooks.enqueue(other)
        async with hooks.pool.connection() as conn:
            claimed = await store.claim_due(conn, 12, LEASE_S, 4)
        assert [d.delivery_id for d in claimed] == [waiting]


async def test_an_idle_claim_does_not_visit_every_endpoint(hooks: Hooks) -> None:
    """300 endpoints, nothing due (delivered rows, a retry an hour ahead, held rows of a
    disabled endpoint, one attempt in flight): the claim answers without reading the
    endpoints (it probed each one's due index, four times a second when idle). A lease that
    ran out (its process died) is due again, and claimed by a claim that visits only the
    endpoints with pending rows."""
    async with receiving() as receiver:
        first = await hooks.endpoint(receiver)
        [in_flight, later] = await hooks.enqueue(first, 2)
        async with hooks.pool.connection() as conn:
            await conn.execute(
                """INSERT INTO webhook_endpoints (endpoint_id, workspace_id, url, kinds, secret,
                       created_by)
                   SELECT 'ep_idle_' || g, %s, %s, '{relationship.changed}', '\\x00', 't'
                     FROM generate_series(1, 300) g""",
                (WS, receiver.url),
            )
            await conn.execute(
                """INSERT INTO webhook_deliveries (delivery_id, endpoint_id, workspace_id,
                       position, kind, body, status, delivered_at)
                   SELECT 'd_idle_' || g, 'ep_idle_' || g, %s, 'd' || g, 'k', '{}',
                          'succeeded', now() FROM generate_series(1, 300) g""",
                (WS,),
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now() + interval '1 hour' "
                "WHERE delivery_id = %s",
                (later,),
            )
            await store.disable(conn, "ep_idle_1", "a test")
        [held] = await hooks.enqueue("ep_idle_1")
        assert [d.delivery_id for d in await hooks.claim()] == [in_flight]
        async with hooks.pool.connection() as conn, conn.transaction(force_rollback=True):
            await conn.execute("ANALYZE webhook_endpoints")
            before = await rows_read(conn, "webhook_endpoints")
            assert await store.claim_due(conn, 8, LEASE_S, 4) == []
            assert await rows_read(conn, "webhook_endpoints") - before == 0
        async with hooks.pool.connection() as conn:  # the attempt's process died
            await conn.execute(
                "UPDATE webhook_deliveries SET lease_until = now() - interval '1 second' "
                "WHERE delivery_id = %s",
                (in_flight,),
            )
        async with hooks.pool.connection() as conn, conn.transaction():
            before = await index_scans(conn)
            claimed = await store.claim_due(conn, 8, LEASE_S, 4)
            # the endpoints with pending rows only (two), not the 301 (each was probed)
            assert await index_scans(conn) - before < 50
        assert [d.delivery_id for d in claimed] == [in_flight]
        assert (await hooks.delivery(held))["next_attempt_at"] >= store.HELD_SINCE
