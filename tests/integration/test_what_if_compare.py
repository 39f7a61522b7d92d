"""The what-if comparison computed in PostgreSQL (projections/what_if_compare.py) equals the
same figures computed in Python from every pair's row (the comparison before it moved into the
database), on a history where the alternative parameters reorder people's ties."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import tuple_row
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections import replay
from tieline.projections.strength_model import PARAMS, TIERS, Params
from tieline.projections.what_if_compare import compare_scores
from tieline.projections.worker import Worker

from tests.integration.conftest import Log, make_event


async def _history(log: Log, ws: str) -> int:
    """Person p0 with ties of different shapes: many old meetings, a few recent ones, one
    message; the others meet each other too. Shorter half-lives reorder p0's ties."""
    base = datetime(2024, 1, 1, tzinfo=UTC)
    people = [f"p{i}" for i in range(7)]
    for pid in people:
        await log.publish(make_event(ws, type="person.added", person_id=pid, display_name=pid))
    last = 0
    for i, other in enumerate(people[1:], start=1):
        # p_i: 2*i meetings, the later i, the more recent its last one.
        for k in range(2 * (7 - i)):
            at = base + timedelta(days=20 * k + 15 * i)
            last = await log.publish(
                make_event(
                    ws,
                    type="relationship.met",
                    participants=["p0", other],
                    depth="deep_conversation" if k % 3 == 0 else "brief_chat",
                    occurred_at=at.isoformat(),
                )
            )
        if i > 1:
            last = await log.publish(
                make_event(
                    ws,
                    type="relationship.met",
                    participants=[people[i - 1], other],
                    depth="conversation",
                    occurred_at=(base + timedelta(days=30 * i)).isoformat(),
                )
            )
    return last


def _reference(rows: list[tuple[Any, ...]], top: int) -> dict[str, Any]:
    """The comparison as it was computed in Python over every pair."""
    moves = {t: dict.fromkeys(TIERS, 0) for t in TIERS}
    deltas, per_person = [], {}  # type: ignore[var-annotated]
    for ws, a, b, ls, lt, wsc, wt in rows:
        moves[lt][wt] += 1
        deltas.append(((ws, a, b), wsc - ls))
        for me, other in ((a, b), (b, a)):
            per_person.setdefault((ws, me), []).append((other, ls, wsc))
    ranks = []
    for (ws, me), ties in per_person.items():
        live = [o for o, _, _ in sorted(ties, key=lambda t: (-t[1], t[0]))]
        new = [o for o, _, _ in sorted(ties, key=lambda t: (-t[2], t[0]))]
        moved = sum(1 for x, y in zip(live, new, strict=True) if x != y)
        if moved:
            ranks.append((ws, me, len(ties), moved))
    ranks.sort(key=lambda r: (-r[3], r[0], r[1]))
    deltas.sort(key=lambda d: (-abs(d[1]), d[0]))
    mean = sum(abs(d) for _, d in deltas) / len(deltas)
    return {"pairs": len(rows), "mean": mean, "moves": moves, "biggest": deltas[:top],
            "ranks": ranks[:top]}  # fmt: skip


async def test_what_if_comparison_in_the_database_equals_the_python_one(
    settings: Settings, log: Log
) -> None:
    last = await _history(log, "wic")
    worker = Worker(settings)
    await worker.start()
    async with asyncio.timeout(30):
        while worker.stats.last_seq < last:
            await worker.run_once()
    await worker.close()
    assert worker.generation is not None
    live = worker.generation.schema_name
    short = Params.from_dict(
        {
            "version": "what-if-short",
            "fast_half_life_days": PARAMS.fast_half_life_days / 10,
            "slow_half_life_days": PARAMS.slow_half_life_days / 20,
        }
    )
    result, scratch_worker = await replay.replay(
        settings, status="scratch", stop_at_seq=last, params=short
    )
    await scratch_worker.close()
    other = result.generation.schema_name
    conn = await db.connect(settings)
    try:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(
            sql.SQL(
                "SELECT l.workspace_id, l.person_a, l.person_b, l.score, l.tier, w.score, w.tier "
                "FROM {}.strength_v1 l JOIN {}.strength_v1 w "
                "USING (workspace_id, person_a, person_b)"
            ).format(sql.Identifier(live), sql.Identifier(other))
        )
        ref = _reference(list(await cur.fetchall()), top=3)
        got = await compare_scores(conn, live, other, top=3)
    finally:
        await conn.close()
        await replay.discard(settings, result.generation)
    assert ref["pairs"] == got.pairs == 11
    assert got.mean_abs_delta > 0 and abs(got.mean_abs_delta - ref["mean"]) < 1e-4
    assert got.tier_moves == ref["moves"]
    assert [
        ((b["workspace_id"], b["person_a"], b["person_b"]), b["delta"]) for b in got.biggest
    ] == [(k, round(d, 3)) for k, d in ref["biggest"]]
    assert ref["ranks"], "the history must reorder somebody's ties, or the check is empty"
    assert [
        (r["workspace_id"], r["person"], r["ties"], r["ties_changing_rank"])
        for r in got.rank_changes
    ] == ref["ranks"]
