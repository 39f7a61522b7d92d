"""person.merged in the live projection store on real PostgreSQL: the merged person's pairs
count as the survivor's, later events naming the merged person fold in too, redelivery and
re-sends change nothing, and retracting the merge restores every table exactly; the
self-check (``tieline verify``) agrees with the folded rows."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql
from tieline.events_schema.models import Event
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.subjects import event_subject
from tieline.projections import selfcheck
from tieline.projections.classify import classify
from tieline.projections.generations import Generation
from tieline.projections.items import Decoded, Item
from tieline.projections.schema import ensure_schema
from tieline.projections.store import ProjectionStore
from tieline.projections.strength_model import PARAMS

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
