"""Reads of a workspace that adopted its own strength set (``workspace.model_calibrated``) use
that set, through the HTTP API in-process on real NATS and PostgreSQL: the first page of a
person's ties and of the follow-ups due comes from the bound index (no fall-back to scoring
every tie), follow-ups as of an earlier date put at stake what the adopted set's decay loses,
and vouching checks the adopted set's minimum history."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tieline.events_schema.models import Event
from tieline.plumbing.config import Settings
from tieline.projections.changes import changes_for
from tieline.projections.queries import ties
from tieline.projections.rows import pair_event
from tieline.projections.strength_model import (
    PARAMS,
    PairEvent,
    can_vouch,
    follow_up_due,
    strength,
)
from tieline.projections.strength_model_workspace import parameter_set, strength_params
from tieline.projections.worker import Worker
from tieline.services.api.app import create_app
from tieline.services.auth import issue_token

from tests.integration.conftest import Log, make_event

WS = "w-adopted"
HUB = "hub"
VALUES = {
    "fast_half_life_days": 7.0,
    "slow_half_life_days": 180.0,
    "slow_share": 0.1,
    "vouch_min_history_days": 2000.0,
}
ADOPTED = strength_params(parameter_set(VALUES, PARAMS.version)["version"])
NOW = datetime.now(UTC)
#: The follow-ups are asked as of this date: most ties have contacts after it, so the answer
#: recomputes them with the pure model (the path that used the default set).
AS_OF = NOW - timedelta(days=20)


def _history(rng: random.Random) -> dict[str, list[Event]]:
    """Each tie of the hub: meetings spread over the last two years, the latest within weeks."""
    out: dict[str, list[Event]] = {}
    for k in range(24):
        other = f"o{k:02d}"
        days = sorted(rng.uniform(0, 700) for _ in range(rng.randint(2, 9)))
        days.append(rng.uniform(1, 15))
        out[other] = [
            make_event(
                WS,
                type="relationship.met",
                participants=[HUB, other],
                depth=rng.choice(("conversation", "deep_conversation", "meal_or_activity")),
                duration_minutes=rng.randrange(30, 240),
                occurred_at=(NOW - timedelta(days=d)).isoformat(),
            )
            for d in days
        ]
    return out


def _pair_events(events: list[Event], until: datetime) -> list[PairEvent]:
    """What the projection folds of ``events`` up to ``until`` (projections/changes.py)."""
    return [
        pair_event(i, e, r)
        for i, e in enumerate(events)
        if e.occurred_at <= until
        for r in changes_for(e).pair_rows
    ]


async def _project(settings: Settings, until_seq: int) -> None:
    worker = Worker(settings)
    await worker.start()
    try:
        async with asyncio.timeout(30):
            while worker.stats.last_seq < until_seq:
                await worker.run_once()
    finally:
        await worker.close()


async def test_reads_of_a_calibrated_workspace_use_its_set(
    settings: Settings, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = _history(random.Random(7))
    for events in history.values():
        for e in events:
            await log.publish(e)
    adopt = make_event(
        WS,
        type="workspace.model_calibrated",
        strength={"version": "mine", "values": VALUES},
        holdout_share=0.25,
        validated_at=AS_OF.isoformat(),
    )
    await _project(settings, await log.publish(adopt))
    auth = {"Authorization": f"Bearer {await issue_token(settings, WS, 'admin', 'calib')}"}
    base = f"/v1/workspaces/{WS}/people/{HUB}"

    def get(path: str, **params: Any) -> Any:
        resp = client.get(path, params=params, headers=auth)
        assert resp.status_code == 200, resp.text
        return resp.json()

    with TestClient(create_app(settings)) as client:
        # The first pages now: from the index, with the adopted set's bound.
        with monkeypatch.context() as m:
            refuse = AssertionError("the first page fell back to scoring every tie")
            m.setattr(ties, "scored_ties", _raise(refuse))
            first = get(f"{base}/relationships", limit=5)
            due_now = get(f"{base}/follow-ups", limit=3)
        every = get(f"{base}/relationships", limit=1000, order="strength")
        assert [t["other"] for t in first["relationships"]] == [
            t["other"] for t in every["relationships"][:5]
        ]
        assert len(due_now["due"]) <= 3
        # Follow-ups as of a date: what is at stake decays with the adopted set.
        past = get(f"{base}/follow-ups", as_of=AS_OF.isoformat(), limit=1000)
        want = {}
        for other, events in history.items():
            s = strength(_pair_events(events, AS_OF), ADOPTED, AS_OF)
            is_due, stake = follow_up_due(s, AS_OF, ADOPTED)
            if is_due:
                want[other] = round(stake, 4)
        got = {d["other"]: d["at_stake"] for d in past["due"]}
        assert want and got == want
        # (the check tells: the default set's decay puts other amounts at stake)
        default = {
            o: round(follow_up_due(strength(_pair_events(history[o], AS_OF), ADOPTED, AS_OF),
                                   AS_OF, PARAMS)[1], 4)
            for o in want
        }  # fmt: skip
        assert default != want
        # Vouching: the adopted set asks for 2,000 days of history.
        check = get(f"/v1/workspaces/{WS}/introductions/check", introducer=HUB, a="o00", b="o01")
        s = strength(_pair_events(history["o00"], NOW), ADOPTED, NOW)
        assert check["checks"]["a"]["can_vouch"] is can_vouch(s, ADOPTED)[0] is False
        assert any("needs 2000" in r for r in check["checks"]["a"]["reasons"])


def _raise(error: Exception) -> Any:
    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    return fail
