"""The projection's self-check finds what it is there to find: an event the read models
skipped, and a pair whose stored strength is not what its events give; and stays quiet on a
correct projection."""

from __future__ import annotations

import json
import random
from typing import Any

from psycopg import AsyncConnection
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections import selfcheck
from tieline.projections.strength_model import PARAMS
from tieline.projections.worker import Worker
from tieline.services.api.routers.ops import public_self_check

from tests.integration.conftest import Log, make_event


async def round_of(settings: Settings, log: Log, worker: Worker) -> selfcheck.CheckResult:
    assert worker.generation is not None
    conn = await db.connect(settings)
    try:
        await selfcheck.ensure_table(conn, settings.database_schema)
        return await selfcheck.run_round(
            conn,
            log.js,
            stream=settings.stream_name,
            state_schema=settings.database_schema,
            registry=worker.registry,
            gen=worker.generation,
            params=PARAMS,
            samples=10_000,  # every message and pair: the test wants certainty
            rng=random.Random(1),
        )
    finally:
        await conn.close()


async def test_self_check_is_clean_then_finds_a_skipped_event_and_a_wrong_pair(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = "sc"
    last = 0
    for i in range(30):
        last = await log.publish(
            make_event(
                ws, type="relationship.met", participants=["a", f"b{i % 4}"], depth="conversation"
            )
        )
    worker = Worker(settings)
    await worker.start()
    try:
        while worker.stats.last_seq < last:
            await worker.run_once()
        clean = await round_of(settings, log, worker)
        assert clean.ok, clean.problems
        assert clean.sampled_msgs == 30 and clean.sampled_pairs == 4
        assert clean.checkpoint == clean.stream_last == last
        # What a skipped event and a wrong fold look like in the tables:
        await pg.execute("DELETE FROM events WHERE seq = 7")
        await pg.execute(
            "UPDATE strength_v1 SET score = score + 1 WHERE workspace_id = %s AND person_b = 'b2'",
            (ws,),
        )
        found = await round_of(settings, log, worker)
        conn = await db.connect(settings)
        try:
            shown = await selfcheck.latest(conn, settings.database_schema, worker.consumer)
        finally:
            await conn.close()
    finally:
        await worker.close()
    assert not found.ok
    assert any(p.startswith("seq 7:") for p in found.problems), found.problems
    assert any("/b2:" in p for p in found.problems), found.problems
    assert len(found.problems) == 2, found.problems
    assert shown is not None and shown["ok"] is False and len(shown["problems"]) == 2
    # What /readyz (no token) shows of it: the count, and nothing that names the workspace,
    # a person or an event.
    public = public_self_check(shown)
    assert public["ok"] is False and public["problem_count"] == 2
    text = json.dumps(public)
    assert "problems" not in public and f"{ws}/" not in text and "b2" not in text, text
