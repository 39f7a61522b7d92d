"""Continuous verification over a generated history: import a simulated network through the
HTTP API, then `verify` replays the log into a scratch copy and finds it equal, row by row."""

from __future__ import annotations

import json

import httpx
from tieline.plumbing.config import Settings
from tieline.projections import replay
from tieline.services.tools.simulate import SimConfig, simulate


async def test_verify_is_clean_over_a_generated_history(
    api: httpx.Client, ws: str, stack_settings: Settings
) -> None:
    lines = [json.dumps(e) for e in simulate(SimConfig(seed=7, people=60, events=1500))]
    last = 0
    for i in range(0, len(lines), 500):
        r = api.post(  # noqa: ASYNC212 (a sync test client; nothing else runs on the loop)
            f"/v1/workspaces/{ws}/events/batch",
            content="\n".join(lines[i : i + 500]).encode(),
        )
        body = r.json()
        assert body["rejected"] == 0, [x for x in body["results"] if x["status"] >= 300][:3]
        last = max(last, body["last_seq"] or 0)
    api.get(f"/v1/workspaces/{ws}/people", params={"min_seq": last})  # noqa: ASYNC212
    seen, diffs = await replay.verify(stack_settings)
    assert seen >= last
    assert all(d.clean for d in diffs), [(d.table, d.samples) for d in diffs if not d.clean]
    sizes = {d.table: d.live_rows for d in diffs}
    assert sizes["events"] >= 1500 and sizes["strength_v1"] > 50
