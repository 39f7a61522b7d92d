"""Ranked lists from the bound index (projections/queries/ties.py, ``top_scored``) answer
exactly what scoring every tie answers: the same ties, scores, capacity-limited tiers and
order, for the strongest ties and the follow-ups due, on generated hubs (real PostgreSQL), of
a workspace on the default strength set and of one that adopted another (its rows, keys and
bound computed with that set), without falling back to scoring every tie."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections.bulk_load import copy_binary
from tieline.projections.queries import ties
from tieline.projections.rows import STRENGTH, strength_row
from tieline.projections.schema import ensure_schema
from tieline.projections.strength_model import PARAMS, Fold, PairEvent, Params
from tieline.projections.strength_model_workspace import parameter_set, strength_params

T0 = datetime(2022, 1, 1, tzinfo=UTC)
DEPTHS = ("card_exchange", "brief_chat", "conversation", "deep_conversation", "meal_or_activity")
HUB = "m-hub"
#: A set a workspace may adopt: other half-lives, slow share and score curve than the default,
#: so its bound keys and bound differ from the default's.
ADOPTED = strength_params(
    parameter_set(
        {
            "fast_half_life_days": 7.0,
            "slow_half_life_days": 180.0,
            "slow_share": 0.1,
            "score_scale_points": 5.0,
            "score_exponent": 0.8,
        },
        PARAMS.version,
    )["version"]
)


def _tie_events(rng: random.Random, other: str, n: int) -> list[PairEvent]:
    """A pair's history: meetings, one-sided follow-ups, sometimes ratings, spread over years
    (a mix of recent fast points and old slow ones, so bound order != score order)."""
    a, b = sorted((HUB, other))
    start = rng.uniform(0, 1500)
    out: list[PairEvent] = []
    for i in range(n):
        at = T0 + timedelta(days=start + rng.expovariate(1 / rng.choice((2, 30, 300))) * i)
        kind = rng.random()
        if kind < 0.6:
            detail: dict[str, Any] = {
                "depth": rng.choice(DEPTHS),
                "mode": rng.choice(("in_person", "remote")),
                "duration_minutes": rng.randrange(0, 300),
                "initiated_by": rng.choice((a, b)),
                "group_size": rng.choice((2, 2, 5)),
            }
            out.append(PairEvent(f"{other}-{i}", "relationship.met", at, i, a, b, detail))
        elif kind < 0.9:
            detail = {"from": HUB, "to": other, "channel": "email", "replied": rng.random() < 0.3}
            out.append(PairEvent(f"{other}-{i}", "relationship.followed_up", at, i, a, b, detail))
        else:
            detail = {"rater": HUB, "ratee": other, "rating": rng.randint(1, 5)}
            out.append(
                PairEvent(f"{other}-{i}", "relationship.closeness_rated", at, i, a, b, detail)
            )
    return out


async def _load_hub(
    conn: AsyncConnection[Any], rng: random.Random, count: int, params: Params
) -> None:
    rows = []
    for k in range(count):
        other = f"{'a' if k % 2 else 'z'}-{k:04d}"  # the hub is person_a of some ties, b of others
        fold = Fold.of(_tie_events(rng, other, rng.randint(1, 12)), params)
        assert fold is not None
        a, b = sorted((HUB, other))
        rows.append(strength_row(("w", a, b), fold, k + 1, params))
    await copy_binary(conn, "strength_v1", STRENGTH, rows)


def _top(views: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return views[: n + 1]  # one more than the page: the "next page" decision depends on it


async def _check(
    database_url: str, seed: int, count: int, limits: list[int], params: Params
) -> None:
    schema = f"rankidx_{seed % 100_000}"
    conn = await db.connect(Settings(database_url=database_url))
    conn.row_factory = dict_row  # type: ignore[assignment]
    try:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
        await ensure_schema(conn, schema)
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        rng = random.Random(seed)
        await _load_hub(conn, rng, count, params)
        for limit in limits:
            at = T0 + timedelta(days=rng.uniform(0, 2500))
            every = await ties.scored_ties(conn, "w", HUB, None, at, params)
            need = ties.strongest_needs(limit + 1)
            fast = await _index_only(conn, at, need, params)
            want = ties.ranked(every, "strength", params)
            assert _top(ties.ranked(fast, "strength", params), limit) == _top(want, limit)
            need = ties.follow_ups_need(limit + 1, at, params)
            due = await _index_only(conn, at, need, params)
            want = ties.follow_ups(every, at, params)
            assert _top(ties.follow_ups(due, at, params), limit) == _top(want, limit)
    finally:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
        await conn.close()


async def _index_only(
    conn: AsyncConnection[Any], at: datetime, need: ties.Need, params: Params
) -> list[ties.Scored]:
    """``top_scored`` that fails if it falls back to scoring every tie (rows it does not
    recognise as the workspace's set)."""

    async def no_fallback(*args: Any, **kwargs: Any) -> list[ties.Scored]:
        raise AssertionError("top_scored fell back to scoring every tie")

    every = ties.scored_ties
    ties.scored_ties = no_fallback  # type: ignore[assignment]
    try:
        return await ties.top_scored(conn, "w", HUB, at, need, params)
    finally:
        ties.scored_ties = every  # type: ignore[assignment]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 400),
    limits=st.lists(st.sampled_from([1, 3, 5, 15, 50, 120]), min_size=1, max_size=3),
)
def test_index_scan_equals_scoring_every_tie(
    servers: Any, monkeypatch: pytest.MonkeyPatch, seed: int, count: int, limits: list[int]
) -> None:
    monkeypatch.setattr(ties, "FIRST_READ", 8)  # several rounds even on small hubs
    asyncio.run(_check(servers.database_url, seed, count, limits, PARAMS))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 400),
    limits=st.lists(st.sampled_from([1, 3, 5, 15, 50, 120]), min_size=1, max_size=3),
)
def test_index_scan_of_a_calibrated_workspace_equals_scoring_every_tie(
    servers: Any, monkeypatch: pytest.MonkeyPatch, seed: int, count: int, limits: list[int]
) -> None:
    monkeypatch.setattr(ties, "FIRST_READ", 8)
    asyncio.run(_check(servers.database_url, seed, count, limits, ADOPTED))
