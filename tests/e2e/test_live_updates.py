"""Live updates over SSE, end to end on the running stack: a client sees its workspace's changes
as they are projected, resumes with Last-Event-ID and gets exactly what it missed, never sees
another workspace's changes, filters by kind, person and pair, and learns of an erasure
without any of the person's data; a position it cannot resume from gets a reset."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection, sql
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack

from tests.e2e.conftest import make_token
from tests.e2e.sse import events, open_stream


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as c:
        yield c


class Api:
    """Writes through the HTTP API, each waited for until it is projected (min_seq), so every
    write is its own projection batch."""

    def __init__(self, client: httpx.AsyncClient, ws: str, token: str) -> None:
        self.client, self.ws = client, ws
        self.headers = {"Authorization": f"Bearer {token}"}

    async def people(self, *ids: str, **fields: Any) -> None:
        for pid in ids:
            body = {"person_id": pid, "display_name": pid.title(), **fields}
            r = await self.client.post(
                f"/v1/workspaces/{self.ws}/people", json=body, headers=self.headers
            )
            assert r.status_code == 201, r.text
            await self.projected(r.json()["seq"])

    async def event(self, **body: Any) -> dict[str, Any]:
        r = await self.client.post(
            f"/v1/workspaces/{self.ws}/events", json=body, headers=self.headers
        )
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        await self.projected(out["seq"])
        return out

    async def met(self, a: str, b: str) -> dict[str, Any]:
        return await self.event(type="relationship.met", participants=[a, b], depth="conversation")

    async def projected(self, seq: int) -> None:
        r = await self.client.get(
            f"/v1/workspaces/{self.ws}/people", params={"min_seq": seq}, headers=self.headers
        )
        assert r.status_code == 200, r.text


async def test_stream_delivers_resumes_exactly_and_keeps_workspaces_apart(
    client: httpx.AsyncClient, stack_settings: Settings, ws: str, token: str
) -> None:
    api = Api(client, ws, token)
    other_ws = f"ws-{uuid.uuid4().hex[:12]}"
    other_token = await asyncio.to_thread(make_token, stack_settings, other_ws, "read")
    await api.people("ada", "grace", "linus")
    watch = {"kinds": "relationship.changed", "pair": "ada,grace"}
    source = await open_stream(client, ws, token, watch)
    other = await open_stream(client, other_ws, other_token)
    assert source.response.status_code == 200 and other.response.status_code == 200
    assert source.response.headers["content-type"].startswith("text/event-stream")

    first = await api.met("ada", "grace")
    got = await source.next()
    assert got.event == "relationship.changed"
    change = got.json()
    assert change["pair"] == ["ada", "grace"] and change["workspace_id"] == ws
    assert change["cause"] == {
        "event_id": first["event_id"],
        "type": "relationship.met",
        "seq": first["seq"],
    }
    assert change["score_before"] is None and change["score_after"] > 0
    assert got.id == change["position"] and got.id.startswith(f"{first['seq']}-")

    await source.aclose()  # the client goes away and misses two changes (and one it filters out)
    missed = [
        await api.met("grace", "ada"),
        await api.event(
            type="relationship.followed_up",
            from_person="ada",
            to_person="grace",
            channel="email",
            replied=True,
        ),
    ]
    await api.met("ada", "linus")
    source = await open_stream(client, ws, token, watch, last_event_id=got.id)
    replayed = await events(source, 2)
    assert [e.json()["cause"]["event_id"] for e in replayed] == [m["event_id"] for m in missed]
    assert replayed[0].json()["score_before"] == change["score_after"]
    assert await source.quiet_for(1.0) == []  # exactly those two

    live = await api.met("ada", "grace")
    assert (await source.next()).json()["cause"]["event_id"] == live["event_id"]
    assert await other.quiet_for(0.5) == []  # another workspace's token saw none of it
    refused = await client.get(
        f"/v1/workspaces/{ws}/stream", headers={"Authorization": f"Bearer {other_token}"}
    )
    assert refused.status_code == 403
    await source.aclose()
    await other.aclose()


async def test_filters_by_kind_person_and_pair(
    client: httpx.AsyncClient, ws: str, token: str
) -> None:
    api = Api(client, ws, token)
    await api.people("ada", "grace", "linus")
    filters = {
        "all": {},
        "recorded": {"kinds": "event.recorded"},
        "linus": {"person": "linus"},
        "pair": {"pair": "grace,ada"},
    }
    opened = {k: await open_stream(client, ws, token, p) for k, p in filters.items()}
    one = await api.met("ada", "grace")
    two = await api.met("ada", "linus")

    def brief(got: list[Any]) -> list[tuple[str, int, list[str]]]:
        return [(e.event, int(e.id.split("-")[0]), e.json()["people"]) for e in got]

    s1, s2 = one["seq"], two["seq"]
    expected = {
        "all": [
            ("event.recorded", s1, ["ada", "grace"]),
            ("relationship.changed", s1, ["ada", "grace"]),
            ("event.recorded", s2, ["ada", "linus"]),
            ("relationship.changed", s2, ["ada", "linus"]),
        ],
        "recorded": [
            ("event.recorded", s1, ["ada", "grace"]),
            ("event.recorded", s2, ["ada", "linus"]),
        ],
        "linus": [
            ("event.recorded", s2, ["ada", "linus"]),
            ("relationship.changed", s2, ["ada", "linus"]),
        ],
        "pair": [
            ("event.recorded", s1, ["ada", "grace"]),
            ("relationship.changed", s1, ["ada", "grace"]),
        ],
    }
    for name, source in opened.items():
        got = await events(source, len(expected[name]))
        assert brief(got) == expected[name], name
        assert await source.quiet_for(0.3) == [], name
        await source.aclose()
    bad = await client.get(
        f"/v1/workspaces/{ws}/stream",
        params={"kinds": "relationship.changed,gossip"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert bad.status_code == 422 and "kinds" in bad.text and "gossip" in bad.text


async def test_erasure_is_announced_without_personal_data(
    client: httpx.AsyncClient, ws: str, token: str
) -> None:
    api = Api(client, ws, token)
    name, email = f"Zelda Hiddenname {uuid.uuid4().hex[:6]}", "zelda@example.org"
    await api.people("ada")
    r = await client.post(
        f"/v1/workspaces/{ws}/people",
        json={"person_id": "zelda", "display_name": name, "email": email},
        headers=api.headers,
    )
    assert r.status_code == 201
    await api.projected(r.json()["seq"])
    await api.event(
        type="relationship.met",
        participants=["ada", "zelda"],
        depth="conversation",
        context=f"talked about {name}",
    )
    pair = await open_stream(client, ws, token, {"pair": "ada,zelda"})
    everything = await open_stream(client, ws, token)
    forgot = await client.post(f"/v1/workspaces/{ws}/people/zelda/forget", headers=api.headers)
    assert forgot.status_code == 200, forgot.text
    seq = forgot.json()["forgotten_seq"]
    got = await events(everything, 2)
    assert [(e.event, e.json()["seq"]) for e in got] == [
        ("event.recorded", seq),
        ("person.forgotten", seq),
    ]
    assert got[0].json()["type"] == "person.forgotten"
    assert got[1].json() == {
        "position": got[1].id,
        "workspace_id": ws,
        "person_id": "zelda",
        "seq": seq,
        "people": ["zelda"],
    }
    # A pair filter lets an erasure of either side through (the client drops what it cached).
    assert [e.event for e in await events(pair, 1)] == ["person.forgotten"]
    raw = "".join(e.data for e in got).encode()
    assert name.encode() not in raw and email.encode() not in raw
    await pair.aclose()
    await everything.aclose()
    # A client that resumes from before the erasure replays it, still without the data.
    replay = await open_stream(
        client, ws, token, {"kinds": "person.forgotten"}, last_event_id="0-0"
    )
    first = await replay.next()
    assert first.event == "person.forgotten" and name not in first.data
    await replay.aclose()


async def test_positions_it_cannot_resume_from_get_a_reset_then_the_live_stream(
    client: httpx.AsyncClient, stack_settings: Settings, ws: str, token: str
) -> None:
    api = Api(client, ws, token)
    await api.people("ada", "grace")
    for bad in ("not-a-position", "999999999999-0"):
        source = await open_stream(client, ws, token, last_event_id=bad)
        reset = await source.next()
        assert reset.event == "reset" and reset.json()["reason"]
        after = await api.met("ada", "grace")
        got = await source.next()
        assert got.event == "event.recorded" and got.json()["seq"] == after["seq"]
        assert got.id > reset.id or int(got.id.split("-")[0]) > int(reset.id.split("-")[0])
        await source.aclose()
    # Positions at or before the change log's trim point may have lost rows: reset too.
    source = await open_stream(client, ws, token)
    await api.met("ada", "grace")
    seen = await source.next()
    await source.aclose()
    await _set_trim_point(stack_settings, int(seen.id.split("-")[0]))
    source = await open_stream(client, ws, token, last_event_id=seen.id)
    reset = await source.next()
    assert reset.event == "reset" and "older" in reset.json()["reason"]
    await source.aclose()
    await _set_trim_point(stack_settings, 0)


async def _set_trim_point(settings: Settings, seq: int) -> None:
    """What the webhooks process's trimmer records after deleting rows (set directly here so
    the test does not wait a retention period)."""
    conn = await AsyncConnection.connect(settings.database_url, autocommit=True)
    try:
        cur = await conn.execute(
            sql.SQL("SELECT schema_name FROM {}.generations WHERE status = 'live'").format(
                sql.Identifier(settings.database_schema)
            )
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(
            sql.SQL("UPDATE {}.live_state SET trimmed_seq = %s").format(sql.Identifier(row[0])),
            (seq,),
        )
    finally:
        await conn.close()
