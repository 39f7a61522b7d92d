"""person.merged in the live projection store on real PostgreSQL: the merged person's pairs
count as the survivor's, later events naming the merged person fold in too, redelivery and
re-sends change nothing, and retracting the merge restores every table exactly; the
self-check (``tieline verify``) agrees with the folded rows. And on the write side: merge
commands racing each other (in one command, or concurrently on two replicas of the people
service) never make a double merge or a chain."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql
from tieline.events_schema.models import Event
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.db import make_pool
from tieline.plumbing.subjects import event_subject
from tieline.projections import selfcheck
from tieline.projections.classify import classify
from tieline.projections.generations import Generation
from tieline.projections.items import Decoded, Item
from tieline.projections.schema import ensure_schema
from tieline.projections.store import ProjectionStore
from tieline.projections.strength_model import PARAMS
from tieline.services.service_app import (
    INTERACTION_TYPES,
    PEOPLE_TYPES,
    start_write_side,
)
from tieline.services.write_rules import Outcome
from tieline.services.writeside import WriteSide

from tests.integration.conftest import make_event

WS = "mg"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
_S = Settings(subject_prefix="mergetest")


class Feed:
    """Events as classified items in stream order."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def add(self, days: float = 0, **fields: Any) -> Event:
        e = make_event(WS, occurred_at=(T0 + timedelta(days=days)).isoformat(), **fields)
        seq = len(self.items) + 1
        subject = event_subject(_S.subject_prefix, e)
        self.items.append(classify(REGISTRY, _S, seq, subject, REGISTRY.encode(e)))
        return e


async def rows(conn: AsyncConnection[Any], query: str) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query)
    return [tuple(r) for r in await cur.fetchall()]


async def state(conn: AsyncConnection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "strength": await rows(
            conn,
            "SELECT person_a, person_b, event_count, meetings, follow_ups, round(score::numeric, 9)"
            " FROM strength_v1 ORDER BY 1, 2",
        ),
        "people": await rows(
            conn, "SELECT person_id, merged_into FROM people_v1 WHERE merged_into IS NOT NULL"
        ),
    }


async def test_merge_folds_pairs_redelivery_is_a_no_op_and_retraction_restores(
    settings: Settings,
) -> None:
    feed = Feed()
    for p in ("ada", "ada2", "xena", "yuri"):
        feed.add(type="person.added", person_id=p, display_name=p)
    met = {"type": "relationship.met", "depth": "conversation"}
    feed.add(1, **met, participants=["ada", "xena"])
    feed.add(2, **met, participants=["ada2", "xena", "yuri"])
    feed.add(3, type="relationship.followed_up", from_person="xena", to_person="ada2",
             channel="email", replied=True)  # fmt: skip
    feed.add(4, **met, participants=["ada", "ada2"])
    before_merge = len(feed.items)
    merge = feed.add(5, type="person.merged", person_id="ada2", survivor="ada")
    feed.add(6, **met, participants=["ada2", "yuri"])  # named after the merge: folds in
    feed.add(0.5, **met, participants=["ada2", "xena"])  # late, too
    merged_until = len(feed.items)
    feed.add(7, type="event.retracted", retracted_event_id=str(merge.event_id))

    schema = "mergetest_live"
    conn = await db.connect(settings)
    try:
        await _fresh(conn, schema)
        store = ProjectionStore(REGISTRY, projection="mergetest", params=PARAMS)
        await store.apply(conn, feed.items[:before_merge])
        unmerged = await state(conn)
        assert unmerged["strength"][0][:5] == ("ada", "ada2", 1, 1, 0)

        await store.apply(conn, feed.items[before_merge:merged_until])
        merged = await state(conn)
        assert merged["people"] == [("ada2", "ada")]
        pairs = {r[:2]: r[2:5] for r in merged["strength"]}
        # ada-xena: two meetings (one via ada2, late) and ada2's follow-up; ada-yuri: two.
        assert pairs == {("ada", "xena"): (4, 3, 1), ("ada", "yuri"): (2, 2, 0),
                         ("xena", "yuri"): (1, 1, 0)}  # fmt: skip
        again = await store.apply(conn, feed.items[before_merge:merged_until])  # redelivery
        assert again.applied == 0 and await state(conn) == merged
        # Verify (the self-check) folds the same relationships from the stored rows.
        gen = Generation(0, schema, 0, "live", "mergetest")
        result = selfcheck.CheckResult()
        await selfcheck.check_pairs(conn, gen, PARAMS, random.Random(1), 100, result)
        assert result.sampled_pairs == 3 and result.problems == []

        await store.apply(conn, feed.items[merged_until:])
        restored = await state(conn)
        assert restored["people"] == []
        pairs = {r[:2]: r[2:5] for r in restored["strength"]}
        assert pairs[("ada", "ada2")] == (1, 1, 0) and pairs[("ada", "xena")] == (1, 1, 0)
        assert pairs[("ada2", "xena")] == (3, 2, 1) and pairs[("ada2", "yuri")] == (2, 2, 0)
        # Exactly what a store that never saw the merge makes of the same events.
        await _same_as_without_merge(conn, feed, merge, restored)
    finally:
        await _drop(conn, schema)
        await conn.close()


async def _same_as_without_merge(
    conn: AsyncConnection[Any], feed: Feed, merge: Event, restored: dict[str, Any]
) -> None:
    """The same events without the merge and its retraction, in a stream of their own."""
    schema = "mergetest_never"
    await _fresh(conn, schema)
    try:
        events = [it.event for it in feed.items if isinstance(it, Decoded)]
        kept = [
            e
            for e in events
            if e.event_id != merge.event_id
            and getattr(e, "retracted_event_id", None) != merge.event_id
        ]
        items = [
            classify(
                REGISTRY, _S, i + 1, f"{_S.subject_prefix}.ev.{WS}.{e.type}", REGISTRY.encode(e)
            )
            for i, e in enumerate(kept)
        ]
        await ProjectionStore(REGISTRY, projection="mergetest", params=PARAMS).apply(conn, items)
        never = await state(conn)
        assert never["strength"] == restored["strength"]
    finally:
        await _drop(conn, schema)


async def _fresh(conn: AsyncConnection[Any], schema: str) -> None:
    await _drop(conn, schema)
    await ensure_schema(conn, schema)
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


async def _drop(conn: AsyncConnection[Any], schema: str) -> None:
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def merge(person: str, survivor: str) -> dict[str, str]:
    return {"type": "person.merged", "person_id": person, "survivor": survivor}


def answer(out: list[Outcome]) -> tuple[int, list[str] | None]:
    """One line's status and the field its error names."""
    (o,) = out
    return o.status, (o.errors[0]["loc"] if o.errors else None)


async def test_racing_merges_never_make_a_double_merge_or_a_chain(settings: Settings) -> None:
    """Two replicas of the people service (own pools, own connections) get merge commands
    at the same moment that cannot all hold: exactly one is accepted, the others are told
    which field conflicts (409). Within one command, a later line is checked against the
    earlier ones. Retracting the accepted merge frees the person again."""
    ws = "race"
    pools = [make_pool(settings), make_pool(settings)]
    started = [await start_write_side(settings, "people", PEOPLE_TYPES, p) for p in pools]
    sides = [side for _, side in started]
    started.append(await start_write_side(settings, "interactions", INTERACTION_TYPES, pools[1]))
    try:
        people = [{"type": "person.added", "person_id": p, "display_name": p} for p in "abcdpqrxyz"]
        assert {o.status for o in await sides[0].record_many(ws, people, "t")} == {201}

        async def fire(cmds: list[list[dict[str, str]]]) -> list[list[Outcome]]:
            return list(
                await asyncio.gather(
                    *(sides[n % 2].record_many(ws, c, "t") for n, c in enumerate(cmds))
                )
            )

        # a into three others at once (each twice, with its own event id): one double merge.
        double = await fire([[merge("a", s)] for s in "bcdbcd"])
        got = [answer(o) for o in double]
        assert sorted(got, key=str) == [(201, None)] + [(409, ["person_id"])] * 5, got
        # x -> y against y -> z: either order is fine, both together are a chain.
        chain = await fire([[merge("x", "y")], [merge("y", "z")]] * 3)
        got = [answer(o) for o in chain]
        assert [s for s, _ in got].count(201) == 1, got
        won = next(n for n, (s, _) in enumerate(got) if s == 201)
        # The losers of x -> y were refused for a survivor that is merged, or for the person
        # merged already; those of y -> z for the person others were merged into, or merged.
        for n, (status, loc) in enumerate(got):
            if n != won:
                assert status == 409 and loc in (["survivor"], ["person_id"]), got
        # One command: the second line would chain onto the first (which is accepted).
        one = await sides[0].record_many(ws, [merge("p", "q"), merge("q", "r")], "t")
        assert [(o.status, o.errors[0]["loc"] if o.errors else None) for o in one] == [
            (201, None),
            (409, ["person_id"]),
        ]
        assert await holding(pools[0], ws) == 3  # a into one of b/c/d, x/y, p into q

        # Retracting a's merge frees a; its merge is then accepted (once) into someone else.
        a_won = double[[s for s, _ in (answer(o) for o in double)].index(201)][0]
        await retract(started[2][1], ws, a_won)  # (retractions are the interactions')
        again = await fire([[merge("a", "z")], [merge("a", "z")]])
        assert sorted(answer(o)[0] for o in again) == [201, 409]
    finally:
        for nc, _ in started:
            await nc.close()
        for p in pools:
            await p.close()


async def retract(side: WriteSide, ws: str, o: Outcome) -> None:
    body = {"type": "event.retracted", "retracted_event_id": o.event_id}
    out = await side.record_many(ws, [body], "t")
    assert out[0].status == 201, out[0].as_dict()


async def holding(pool: Any, ws: str) -> int:
    """How many merges of ``ws`` the write side holds (not retracted)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT count(*) AS n FROM write_merges m
               JOIN write_events w USING (workspace_id, event_id)
               WHERE m.workspace_id = %s AND w.retracted_by IS NULL""",
            (ws,),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row["n"])
