"""Reads as of a date and reads that name a merged person, on real NATS and PostgreSQL (the
queries, and the HTTP API in-process):

* a tie existed as of a date when any of its events occurred by then: a tie rated before its
  first contact is in a person's list as of a date between the two, with the numbers the
  pair read gives as of that date;
* a pair read as of a date names the same pair as the read now: a merged (old) person id
  answers with the survivor;
* a person-scoped read of a merged (old) id (ties, follow-ups, give-and-take, vouching
  neighbours, warm paths) answers what the survivor's does, as a pair read does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from tieline.events_schema.models import Event
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections.queries import momentum as mo
from tieline.projections.queries import paths, ties
from tieline.services.api.app import create_app
from tieline.services.auth import issue_token

from tests.integration.conftest import Log, live_worker, make_event

NOW = datetime.now(UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def met(ws: str, a: str, b: str, days: float, initiated_by: str | None = None) -> Event:
    extra = {} if initiated_by is None else {"initiated_by": initiated_by}
    return make_event(
        ws,
        type="relationship.met",
        participants=[a, b],
        depth="meal_or_activity",
        occurred_at=ago(days).isoformat(),
        **extra,
    )


def friendship(ws: str, a: str, b: str) -> list[Event]:
    """Meals every 13 days for a year up to a week ago, alternating who initiates, each
    followed up and answered: a tie that can vouch now."""
    out = []
    for i in range(30):
        who, other = (a, b) if i % 2 == 0 else (b, a)
        days = 7 + (29 - i) * 13
        out.append(met(ws, a, b, days, initiated_by=who))
        out.append(
            make_event(
                ws,
                type="relationship.followed_up",
                from_person=other,
                to_person=who,
                channel="message",
                replied=True,
                occurred_at=ago(days - 1).isoformat(),
            )
        )
    return out


@asynccontextmanager
async def projected(settings: Settings, last: int) -> AsyncIterator[AsyncConnection[Any]]:
    """A read connection to the read models a live worker built up to ``last``."""
    async with live_worker(settings, last) as schema:
        conn = await db.connect(settings, rm_schema=schema)
        conn.row_factory = dict_row  # type: ignore[assignment]
        try:
            yield conn
        finally:
            await conn.close()


async def test_a_tie_rated_before_its_first_contact_is_listed_as_of_a_date_between(
    settings: Settings, log: Log
) -> None:
    """ada rated grace 40 days ago and met her 10 days ago; as of 20 days ago the tie existed
    (a pair read answers it), but the list skipped it: its first *contact* was later."""
    ws = "w-rated"
    rated = make_event(
        ws,
        type="relationship.closeness_rated",
        rater="ada",
        ratee="grace",
        rating=4,
        occurred_at=ago(40).isoformat(),
    )
    last = await log.publish_all([rated, met(ws, "ada", "grace", 10), met(ws, "ada", "linus", 50)])
    async with projected(settings, last) as conn:
        then = ago(20)
        scored = await ties.scored_ties(conn, ws, "ada", then)
        assert sorted(row["other"] for row, _, _ in scored) == ["grace", "linus"]
        before = await ties.scored_ties(conn, ws, "ada", ago(45))
        assert [row["other"] for row, _, _ in before] == ["linus"]  # not rated yet
        pair = await mo.pair_as_of(conn, ws, "ada", "grace", then)
    assert pair is not None and pair["ratings"] == 1 and pair["meetings"] == 0
    token = await issue_token(settings, ws, "read", "as-of")
    with TestClient(create_app(settings)) as client:
        got = client.get(
            f"/v1/workspaces/{ws}/people/ada/relationships",
            params={"as_of": then.isoformat()},
            headers={"Authorization": f"Bearer {token}"},
        ).json()["relationships"]
    listed = {t["other"]: t for t in got}
    assert set(listed) == {"grace", "linus"}
    grace = listed["grace"]
    # The list's numbers are the pair read's as of that date (not the stored, later ones).
    assert grace["score"] == pair["score"] and grace["momentum"] == pair["momentum"]
    assert (grace["event_count"], grace["meetings"]) == (pair["event_count"], 0)
    assert grace["last_contact_at"] is None


async def _merged_network(log: Log, ws: str) -> int:
    """m and g are friends, as g and z are; m met y, then s met y, months ago (a follow-up
    due), g met y lately; then m is merged into s. Returns the last sequence."""
    events = [*friendship(ws, "m", "g"), *friendship(ws, "g", "z")]
    events += [met(ws, "m", "y", 130), met(ws, "s", "y", 120), met(ws, "g", "y", 15)]
    events.append(make_event(ws, type="person.merged", person_id="m", survivor="s"))
    return await log.publish_all(events)


async def test_a_pair_read_as_of_names_the_survivor_as_the_read_now_does(
    settings: Settings, log: Log
) -> None:
    """After m is merged into s, the pair (m, y) now is (s, y); as of a date it named (m, y):
    the same relationship under two names."""
    ws = "w-merged-pair"
    last = await _merged_network(log, ws)
    async with projected(settings, last) as conn:
        when = datetime.now(UTC)
        now = await mo.pair_now(conn, ws, "m", "y", when)
        then = await mo.pair_as_of(conn, ws, "m", "y", when)
    assert now is not None and then is not None
    assert (now["person_a"], now["person_b"]) == ("s", "y")
    assert (then["person_a"], then["person_b"]) == ("s", "y")
    assert (
        (then["event_count"], then["meetings"]) == (now["event_count"], now["meetings"]) == (2, 2)
    )
    token = await issue_token(settings, ws, "read", "merged-pair")
    auth = {"Authorization": f"Bearer {token}"}
    url = f"/v1/workspaces/{ws}/relationships/m/y"
    with TestClient(create_app(settings)) as client:
        answers = [
            client.get(url, params=params, headers=auth).json()
            for params in ({}, {"as_of": datetime.now(UTC).isoformat()})
        ]
    assert [(x["person_a"], x["person_b"]) for x in answers] == [("s", "y")] * 2


async def test_person_scoped_reads_of_a_merged_person_answer_for_the_survivor(
    settings: Settings, log: Log
) -> None:
    """After m is merged into s, every person-scoped read of m was empty (the stored ties are
    s's); they answer s's, as the pair read of m does."""
    ws = "w-merged"
    last = await _merged_network(log, ws)
    async with projected(settings, last) as conn:
        when = datetime.now(UTC)
        survivor = sorted(r["other"] for r in await ties.ties_of(conn, ws, "s"))
        assert survivor == ["g", "y"]
        assert sorted(r["other"] for r in await ties.ties_of(conn, ws, "m")) == survivor
        vouching = await paths.vouching_neighbours(conn, ws, "s", when)
        assert list(vouching) == ["g"]
        assert await paths.vouching_neighbours(conn, ws, "m", when) == vouching
        to_z = await paths.warm_paths(conn, ws, "m", "z")
        assert [p["path"] for p in to_z] == [["s", "g", "z"]]
        assert await paths.warm_paths(conn, ws, "s", "z") == to_z
        assert await paths.warm_paths(conn, ws, "m", "s") == []  # one person
    await _same_http_answers(settings, ws)


async def _same_http_answers(settings: Settings, ws: str) -> None:
    """Through the API: each person-scoped list of m equals s's (but for the echoed id),
    momentum included (its common neighbours are read for the survivor: s and g share y)."""
    token = await issue_token(settings, ws, "read", "merged")
    auth = {"Authorization": f"Bearer {token}"}
    base = f"/v1/workspaces/{ws}"
    pinned = {"as_of": datetime.now(UTC).isoformat()}
    reads: list[tuple[str, dict[str, str], str]] = [
        ("relationships", {}, "relationships"),  # now: the ranked index scan
        ("relationships", {"order": "recent"}, "relationships"),  # now: every tie
        ("relationships", {"order": "momentum", **pinned}, "relationships"),  # as of
        ("follow-ups", {}, "due"),  # now: the ranked index scan (s and y are due)
        ("follow-ups", {"order": "lapsing", **pinned}, "due"),
        ("give-and-take", {}, "ties"),
    ]
    with TestClient(create_app(settings)) as client:
        for route, params, items in reads:
            of_s = client.get(f"{base}/people/s/{route}", params=params, headers=auth).json()
            of_m = client.get(f"{base}/people/m/{route}", params=params, headers=auth).json()
            assert of_s[items], (route, params)
            assert of_m[items] == of_s[items], (route, params)
        warm = client.get(f"{base}/people/m/warm-paths", params={"target": "z"}, headers=auth)
        assert [p["path"] for p in warm.json()["paths"]] == [["s", "g", "z"]]
