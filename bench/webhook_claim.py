"""The webhook sender's claim with many endpoints: what one claim costs as endpoints grow.

The claim (services/webhooks/store.py ``claim_due``) takes each endpoint's first due rows on
its own index, so one endpoint's backlog cannot hide the others'; the price is one index probe
per endpoint on every claim. Since migration 0011 it first asks one index whether anything is
due, and claims only then: an idle sender (it claims four times a second) pays the question,
a busy one (a claim each time a sending slot frees) the question and the claim. This
measures, for ``--endpoints`` sizes (each endpoint with ``--delivered`` delivered rows and
every ``--due-every``-th with a retry scheduled an hour ahead, as an installation has: nothing
due, with and without the question; then also with one due row on every ``--due-every``-th
endpoint, claimed and put back), the median time of one claim and its PostgreSQL CPU, against
the raw limit of the same run: a ``SELECT 1`` round trip on the same connection. The growth
exponent (of the idle claim with the question) says whether its cost grows with the endpoints.

    python -m bench webhook_claim                   # 100, 1,000, 10,000 endpoints
    python -m bench webhook_claim --quick           # 100, 1,000
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from tieline.plumbing.config import Settings
from tieline.plumbing.state import ensure_state_schema
from tieline.services.webhooks import store

from bench.common import (
    CpuMeter,
    Row,
    finish_run,
    growth_exponent,
    growth_verdict,
    other_activity,
    postgres,
    postgres_pid,
    temp_root,
)

ROUNDS = 200
SLOTS, PER_ENDPOINT, LEASE_S = 16, 4, 60.0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoints", default="100,1000,10000", help="sizes, comma-separated")
    p.add_argument("--delivered", type=int, default=5, help="delivered rows per endpoint")
    p.add_argument("--due-every", type=int, default=100, help="one due row per n endpoints")
    p.add_argument("--quick", action="store_true")


def _grow(conn: psycopg.Connection[Any], have: int, want: int, delivered: int) -> None:
    """Endpoints ``have + 1`` to ``want``, each with ``delivered`` delivered rows."""
    conn.execute(
        """INSERT INTO webhook_endpoints (endpoint_id, workspace_id, url, kinds, secret,
               created_by)
           SELECT 'ep_' || lpad(to_hex(g), 16, '0'), 'ws' || g, 'https://x.example/h',
                  '{event.recorded}', '\\x00', 'bench'
             FROM generate_series(%s::int, %s::int) g""",
        (have + 1, want),
    )
    conn.execute(
        """INSERT INTO webhook_deliveries (delivery_id, endpoint_id, workspace_id, position,
               kind, body, status, delivered_at)
           SELECT 'msg_' || g || '_' || k, 'ep_' || lpad(to_hex(g), 16, '0'), 'ws' || g,
                  g || '-' || k, 'event.recorded', '{}', 'succeeded', now()
             FROM generate_series(%s::int, %s::int) g, generate_series(1, %s::int) k""",
        (have + 1, want, delivered),
    )
    conn.execute("ANALYZE webhook_endpoints")
    conn.execute("ANALYZE webhook_deliveries")


def _timed(
    call: Callable[[], object], meter: CpuMeter, reset: Callable[[], object] | None = None
) -> tuple[float, float]:
    """Median seconds of ``call`` over :data:`ROUNDS`, and PostgreSQL CPU seconds per call;
    ``reset`` runs after each call, outside the clocks."""
    for _ in range(10):
        call()
        if reset is not None:
            reset()
    times: list[float] = []
    cpu = 0.0
    for _ in range(ROUNDS):
        meter.start()
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
        cpu += meter.stop().get("postgres", 0.0)
        if reset is not None:
            reset()
    return statistics.median(times), cpu / ROUNDS


def _claim(conn: psycopg.Connection[Any], ask_first: bool = True) -> Callable[[], object]:
    """One claim as ``claim_due`` makes it: the question whether anything is due, then the
    claim when something is; ``ask_first`` False: the claim alone (as it was before the
    question, migration 0011)."""

    def claim() -> object:
        if ask_first:
            row = conn.execute(store.ANY_DUE_SQL).fetchone()
            if not (row and row[0]):
                return None
        return conn.execute(store.CLAIM_SQL, _claim_args())

    return claim


def _release(conn: psycopg.Connection[Any]) -> Callable[[], object]:
    """The claim's leases released again (so the next claim finds the same rows)."""
    return lambda: conn.execute(
        "UPDATE webhook_deliveries SET lease_until = NULL "
        "WHERE delivery_id LIKE 'due\\_%' AND lease_until IS NOT NULL"
    )


def _claim_args() -> dict[str, Any]:
    return {
        "cap": PER_ENDPOINT,
        "limit": SLOTS,
        "lease": LEASE_S,
        "scan": min(SLOTS, PER_ENDPOINT),
        "held": store.HELD_AT,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(n) for n in args.endpoints.split(",")]
    if args.quick:
        sizes = [n for n in sizes if n <= 1000] or sizes[:1]
    started, before = time.time(), other_activity()
    rows: list[Row] = []
    with temp_root() as root, postgres(root) as db_url:
        schema = f"bench_claim_{uuid.uuid4().hex[:8]}"
        settings = Settings(database_url=db_url, database_schema=schema)
        meter = CpuMeter({"postgres": postgres_pid(db_url)})
        with psycopg.connect(db_url, autocommit=True) as conn:
            _ensure(settings)
            conn.execute(f"SET search_path = {schema}")
            costs = []
            have = 0
            for n in sizes:
                _grow(conn, have, n, args.delivered)
                have = n
                rows += _measure(conn, n, args.due_every, meter)
                costs.append(rows[-3].value or 0.0)
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    # of the idle claim as the sender makes it (with the question)
    exponent = growth_exponent(sizes, costs) if len(sizes) > 1 else float("nan")
    extra = {"growth_exponent_idle": exponent, "verdict": growth_verdict(exponent)}
    print(f"claim time grows as endpoints^{exponent:.2f} ({extra['verdict']})")
    return finish_run(
        "webhook_claim",
        "webhook claim vs endpoints",
        args,
        rows,
        [],
        extra=extra,
        started=started,
        before=before,
        database_url=db_url,
    )


def _ensure(settings: Settings) -> None:
    import asyncio

    async def make() -> None:
        conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
        try:
            await ensure_state_schema(conn, settings.database_schema)
        finally:
            await conn.close()

    asyncio.run(make())


def _measure(conn: psycopg.Connection[Any], n: int, due_every: int, meter: CpuMeter) -> list[Row]:
    """The raw round trip, then a claim with nothing due (only retries an hour ahead) and with
    some due, at ``n``. (With no pending row at all the planner starts from the empty index
    and probes no endpoint: an installation always has some.)"""
    raw, _ = _timed(lambda: conn.execute("SELECT 1"), meter)
    conn.execute(
        """INSERT INTO webhook_deliveries (delivery_id, endpoint_id, workspace_id, position,
               kind, body, next_attempt_at)
           SELECT 'later_' || g, 'ep_' || lpad(to_hex(g), 16, '0'), 'ws' || g, 'later-' || g,
                  'event.recorded', '{}', now() + interval '1 hour'
             FROM generate_series(1, %s::int, %s::int) g""",
        (n, due_every),
    )
    conn.execute("ANALYZE webhook_deliveries")
    idle, idle_cpu = _timed(_claim(conn), meter, _release(conn))
    alone, alone_cpu = _timed(_claim(conn, ask_first=False), meter, _release(conn))
    conn.execute(
        """INSERT INTO webhook_deliveries (delivery_id, endpoint_id, workspace_id, position,
               kind, body) SELECT 'due_' || g, 'ep_' || lpad(to_hex(g), 16, '0'), 'ws' || g,
               'due-' || g, 'event.recorded', '{}'
             FROM generate_series(1, %s::int, %s::int) g""",
        (n, due_every),
    )
    conn.execute("ANALYZE webhook_deliveries")
    busy, busy_cpu = _timed(_claim(conn), meter, _release(conn))
    conn.execute(
        "DELETE FROM webhook_deliveries WHERE delivery_id LIKE 'due\\_%' "
        "OR delivery_id LIKE 'later\\_%'"
    )
    note = f"{n} endpoints"
    return [
        Row(f"{note}: round trip", raw * 1000, "ms"),
        Row(
            f"{note}: claim, nothing due (retries later)",
            idle * 1000,
            "ms",
            "round trip",
            raw * 1000,
            note=f"PostgreSQL CPU {idle_cpu * 1000:.2f} ms per claim",
        ),
        Row(
            f"{note}: claim without asking first, nothing due",
            alone * 1000,
            "ms",
            "round trip",
            raw * 1000,
            note=f"PostgreSQL CPU {alone_cpu * 1000:.2f} ms per claim",
        ),
        Row(
            f"{note}: claim, 1 in {due_every} due",
            busy * 1000,
            "ms",
            "round trip",
            raw * 1000,
            note=f"PostgreSQL CPU {busy_cpu * 1000:.2f} ms per claim",
        ),
    ]
