"""Momentum as of a date on real NATS and PostgreSQL: each person's latest contact with anyone
is read through the merges that hold (a merged person's contacts are the survivor's; a contact
between the two is nobody's), as the stored ties read them now; and a ranked list as of a date
computes momentum for its page only (through the HTTP API in-process), with the same values as
the whole list."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from psycopg.rows import dict_row
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections.queries import momentum as mo
from tieline.projections.queries.strength import pair_events
from tieline.projections.strength_model_momentum import momentum
from tieline.projections.worker import Worker
from tieline.services.api.app import create_app
from tieline.services.auth import issue_token

from tests.integration.conftest import Log, first_generation, make_event

WS = "w-mom"
NOW = datetime.now(UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def met(a: str, b: str, days: float) -> Any:
    return make_event(
        WS,
        type="relationship.met",
        participants=[a, b],
        depth="conversation",
        occurred_at=ago(days).isoformat(),
    )


async def _project(settings: Settings, until_seq: int) -> None:
    worker = Worker(settings)
    await worker.start()
    try:
        async with asyncio.timeout(30):
            while worker.stats.last_seq < until_seq:
                await worker.run_once()
    finally:
        await worker.close()


async def test_as_of_activity_follows_merges_and_lists_compute_their_page_only(
    settings: Settings, log: Log
) -> None:
    # s and y met long ago; y met w recently; m met z a while ago and s (a contact that
    # becomes s's own) more recently; then m is merged into s.
    for a, b, days in (("s", "y", 100), ("y", "w", 15), ("m", "z", 20), ("m", "s", 8)):
        await log.publish(met(a, b, days))
    last = await log.publish(make_event(WS, type="person.merged", person_id="m", survivor="s"))
    # more ties of s for the list
    for k in range(6):
        last = await log.publish(met("s", f"t{k}", 30 + k))
    await _project(settings, last)
    conn = await db.connect(settings, rm_schema=first_generation(settings)[0])
    conn.row_factory = dict_row  # type: ignore[assignment]
    try:
        when = ago(5)
        active = await mo.last_active(conn, WS, ["s", "y", "m"], when, historical=True)
        # m's contact with z is s's; m's with s is nobody's (not 8 days ago)
        assert active == {"s": ago(20), "y": ago(15), "m": ago(20)}
        # Now, the stored ties and the timelines agree.
        stored = await mo.last_active(conn, WS, ["s", "y"], NOW, historical=False)
        assert stored == await mo.last_active(conn, WS, ["s", "y"], NOW, historical=True)
        # The pair's momentum as of a date is the pure model with that activity.
        got = await mo.pair_as_of(conn, WS, "s", "y", when)
        assert got is not None
        events = await pair_events(conn, WS, "s", "y", when)
        want = momentum(events, when, {"s": ago(20), "y": ago(15)})
        assert got["momentum"] == round(want.score, 4)
        unmerged = momentum(events, when, {"s": ago(100), "y": ago(15)})
        assert round(unmerged.score, 4) != got["momentum"]  # the merge matters here
        # Common neighbours are read through the merge too: z met m, who counts as s, so y
        # and z share s (as y and t0 do); w's only tie is y. The same one query gives each
        # person's latest contact (y met w 15 days ago, m's contact with z is z's latest).
        others = ["z", "w", "t0"]
        expected = {"z": 1, "w": 0, "t0": 1}
        latest = {"y": ago(15), "z": ago(20), "w": ago(15), "t0": ago(30)}
        assert await mo.around(conn, WS, "y", others, when, True) == (latest, expected)
        assert await mo.around(conn, WS, "y", others, NOW, False) == (latest, expected)
        _, early = await mo.around(conn, WS, "y", others, ago(25), True)
        assert early == {"z": 0, "w": 0, "t0": 1}  # m met z 20 days ago
    finally:
        await conn.close()
    token = await issue_token(settings, WS, "admin", "mom")
    computed: list[int] = []
    of_ties = mo.of_ties

    async def counting(*args: Any) -> Any:
        computed.append(len(args[3]))
        return await of_ties(*args)

    mo.of_ties = counting  # type: ignore[assignment]
    try:
        with TestClient(create_app(settings)) as client:
            url = f"/v1/workspaces/{WS}/people/s/relationships"
            auth = {"Authorization": f"Bearer {token}"}
            params = {"as_of": ago(1).isoformat()}
            page = client.get(url, params={**params, "limit": 2}, headers=auth).json()
            whole = client.get(url, params={**params, "limit": 1000}, headers=auth).json()
    finally:
        mo.of_ties = of_ties  # type: ignore[assignment]
    assert computed[0] == 2 and len(whole["relationships"]) == 8 == computed[1]
    assert page["relationships"] == whole["relationships"][:2]
    assert all(t["momentum"] is not None for t in page["relationships"])


async def test_after_a_merge_as_of_activity_is_the_latest_not_the_last_row(
    settings: Settings, log: Log
) -> None:
    """After ``a`` is merged into ``e``, the tie of ``b`` and ``e`` is stored as two rows,
    (a, b) and (b, e): the as-of read kept whichever row came last, so ``b`` looked last
    active 40 days before it was, and momentum as of now differed from the answer now."""
    ws = "w-mom-merge"

    def meeting(x: str, y: str, days: float) -> Any:
        at = ago(days).isoformat()
        kind = {"type": "relationship.met", "depth": "conversation"}
        return make_event(ws, **kind, participants=[x, y], occurred_at=at)

    for x, y, days in (("b", "c", 65), ("a", "b", 60), ("b", "e", 20)):
        await log.publish(meeting(x, y, days))
    merged = make_event(ws, type="person.merged", person_id="a", survivor="e")
    await _project(settings, await log.publish(merged))
    conn = await db.connect(settings, rm_schema=first_generation(settings)[0])
    conn.row_factory = dict_row  # type: ignore[assignment]
    try:
        when = datetime.now(UTC)
        around = await mo.around_as_of(conn, ws, "b", ["c", "e"], when)
        assert around[0]["b"] == ago(20)
        now = await mo.pair_now(conn, ws, "b", "c", when)
        then = await mo.pair_as_of(conn, ws, "b", "c", when)
        assert now is not None and then is not None
        assert then["momentum"] == now["momentum"]
    finally:
        await conn.close()
