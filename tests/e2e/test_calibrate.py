"""``tieline calibrate`` against a real running tieline: a simulated workspace's history goes in
through the HTTP batch endpoint, the projection stores it, and calibrate reads it back from the
live read model, chooses parameters before the held-out time and validates them on it. Checked:
the report's structure, intervals that were computed, the refusal rule, and that an empty
workspace's history refuses. Never particular numbers."""

from __future__ import annotations

import json
import math
import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.projections.strength_model_momentum import MOMENTUM_PARAMS
from tieline.services.cli.main import app
from tieline.services.runtime.supervisor import Stack
from tieline.services.tools.simulate import SimConfig, simulate
from typer.testing import CliRunner

from tests.conftest import make_token, settings_env

pytestmark = pytest.mark.integration


def _ingest(api: httpx.Client, ws: str, lines: list[dict[str, Any]]) -> int:
    last = 0
    for start in range(0, len(lines), 500):
        body = "\n".join(json.dumps(x) for x in lines[start : start + 500]).encode()
        resp = api.post(
            f"/v1/workspaces/{ws}/events/batch",
            content=body,
            headers={"content-type": "application/x-ndjson"},
        )
        resp.raise_for_status()
        assert resp.json()["rejected"] == 0
        last = max(last, resp.json()["last_seq"] or 0)
    return last


def _wait(api: httpx.Client, ws: str, seq: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        resp = api.get(f"/v1/workspaces/{ws}/people", params={"limit": 1, "min_seq": seq})
        if resp.status_code == 200:
            return
    raise AssertionError(f"projection did not reach {seq}")


def _calibrate(settings: Settings, ws: str, *more: str) -> tuple[int, Any, str]:
    clean = {k: None for k in os.environ if k.startswith("TIELINE_")}
    env = {**clean, **settings_env(settings), "TIELINE_DATABASE_URL": settings.database_url}
    args = ["calibrate", "-w", ws, "--bootstrap", "40", "--json", *more]
    result = CliRunner().invoke(app, args, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result.exit_code, report, result.stdout + result.stderr


def test_calibrate_on_a_simulated_workspace(
    api: httpx.Client, ws: str, stack_settings: Settings, stack: Stack, token: str
) -> None:
    config = SimConfig(seed=3, people=60, events=2500, years=2.0)
    lines = list(simulate(config))
    _wait(api, ws, _ingest(api, ws, lines))
    code, report, text = _calibrate(stack_settings, ws)
    assert code == 0, text
    assert report["workspace"] == ws and report["label"] == "two_way_90d"
    assert report["contacts"] > 0 and report["pairs"] > 0
    assert report["selection"]["cutoff"] < report["validation"]["cutoff"]
    assert set(report["models"]) == {"strength", "momentum"}
    for name, r in report["models"].items():
        lo, hi = r["auc_best_minus_baseline_ci95"]
        assert math.isfinite(lo) and lo <= hi, name
        assert 0.0 <= r["auc"]["baseline"] <= 1.0 and 0.0 <= r["auc"]["best"] <= 1.0
        assert r["baseline"] == {"name": "default", "values": r["default"]}
        # the refusal rule: recommended only when the held-out interval is above zero
        assert r["recommend"] == (r["best"] != r["default"] and lo > 0)
        assert r["candidates"] > 1
    # On this history (seeded, so always the same) no set beats the default on held-out
    # time: --apply records nothing and exits 3.
    assert not any(r["recommend"] for r in report["models"].values())
    code, report, text = _apply(stack_settings, stack, token, ws)
    assert code == 3 and report["applied"] is None, text
    pair = next(x for x in lines if x["type"] == "relationship.met")["participants"][:2]
    got = api.get(f"/v1/workspaces/{ws}/relationships/{pair[0]}/{pair[1]}").json()
    assert got["momentum_version"] == MOMENTUM_PARAMS.version


def test_calibrate_refuses_a_workspace_without_history(
    api: httpx.Client, ws: str, stack_settings: Settings
) -> None:
    code, report, text = _calibrate(stack_settings, ws)
    assert code == 1 and report is None and "has no relationship events" in text


def _apply(settings: Settings, stack: Stack, token: str, ws: str) -> tuple[int, Any, str]:
    return _calibrate(settings, ws, "--apply", "--api-url", stack.api_url, "--token", token)


def _bursts_and_trickles(seed: int = 1) -> list[dict[str, Any]]:
    """Pairs that write every 8-25 days for good, and pairs with one burst of 15 messages
    3 hours apart that then stop: volume misleads the default momentum here (a burst is 15
    episodes at its 1-hour gap), so a set with a 12-hour gap wins on held-out time."""
    rng = random.Random(seed)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    lines: list[dict[str, Any]] = []

    def msg(a: str, b: str, k: int, at: datetime) -> None:
        sender, to = (a, b) if k % 2 == 0 else (b, a)
        lines.append(
            {
                "type": "relationship.followed_up",
                "from_person": sender,
                "to_person": to,
                "channel": "message",
                "occurred_at": at.isoformat(),
            }
        )

    people = [f"t{i}{s}" for i in range(80) for s in "ab"]
    people += [f"b{i}{s}" for i in range(160) for s in "ab"]
    for p in people:
        lines.append({"type": "person.added", "person_id": p, "display_name": p})
    for i in range(80):
        at, k = t0 + timedelta(days=rng.uniform(0, 108)), 0
        while at < t0 + timedelta(days=360):
            msg(f"t{i}a", f"t{i}b", k, at)
            at, k = at + timedelta(days=rng.uniform(8, 25)), k + 1
    for i in range(160):
        at = t0 + timedelta(days=rng.uniform(0, 360))
        for k in range(15):
            msg(f"b{i}a", f"b{i}b", k, at + timedelta(hours=3 * k))
    return lines


def test_apply_adopts_a_better_set_for_one_workspace_only(
    api: httpx.Client, ws: str, stack_settings: Settings, stack: Stack, token: str
) -> None:
    """``--apply`` records the winning momentum set as a workspace.model_calibrated event;
    the projection recomputes that workspace's pairs with it (episodes at the new gap), the
    answers carry its version, and another workspace with the same history keeps the
    default. A second calibration compares with the adopted set: it wins its own tie, so
    ``--apply`` records nothing (exit 3)."""
    other = f"{ws}-x"
    other_api = httpx.Client(
        base_url=stack.api_url,
        timeout=30,
        headers={"Authorization": f"Bearer {make_token(stack_settings, other)}"},
    )
    lines = _bursts_and_trickles()
    _wait(api, ws, _ingest(api, ws, lines))
    _wait(other_api, other, _ingest(other_api, other, lines))
    before = datetime.now(UTC)
    code, report, text = _apply(stack_settings, stack, token, ws)
    after = datetime.now(UTC)
    assert code == 0, text
    applied = report["applied"]
    assert report["models"]["momentum"]["recommend"] and "momentum" in applied
    assert applied["momentum"]["values"]["episode_gap_days"] == 0.5
    assert applied["evidence"]["momentum_auc_gain_lo"] > 0
    _wait(api, ws, applied["seq"])
    url = "/relationships/b0a/b0b"
    mine = api.get(f"/v1/workspaces/{ws}{url}").json()
    theirs = other_api.get(f"/v1/workspaces/{other}{url}").json()
    assert mine["momentum_version"] == applied["momentum"]["version"]
    assert (mine["episodes"], theirs["episodes"]) == (1, 15)  # a 12-hour gap: one burst
    assert theirs["momentum_version"] == MOMENTUM_PARAMS.version
    # The stored row (now) and the pure model over the events (as of now) agree.
    pure = api.get(f"/v1/workspaces/{ws}{url}", params={"as_of": mine["as_of"]}).json()
    assert "momentum" in pure, pure
    assert abs(pure["momentum"] - mine["momentum"]) < 1e-6
    assert pure["episodes"] == 1 and pure["momentum_version"] == mine["momentum_version"]
    code, again, text = _apply(stack_settings, stack, token, ws)
    assert code == 3 and again["applied"] is None, text
    m = again["models"]["momentum"]
    assert m["baseline"]["name"] == f"adopted {applied['momentum']['version']}"
    assert m["baseline"]["values"]["episode_gap_days"] == 0.5
    assert m["best"] == m["baseline"]["values"] and not m["recommend"]
    # The forward check finds the adoption event's time; the history (2024) is all before it.
    since = m["since_adoption"]
    assert before <= datetime.fromisoformat(since["adopted_at"]) <= after, since
    assert since["refused"] == "no contact since the adoption"
    assert (
        api.get(f"/v1/workspaces/{ws}{url}").json()["momentum_version"] == mine["momentum_version"]
    )
    other_api.close()
    # Only an admin may undo the adoption: it changes every score of the workspace, as the
    # adoption does (a write token could retract it: a reviewer's finding).
    retraction = {"type": "event.retracted", "retracted_event_id": applied["event_id"]}
    writer = {"Authorization": f"Bearer {make_token(stack_settings, ws, role='write')}"}
    refused = api.post(f"/v1/workspaces/{ws}/events", json=retraction, headers=writer)
    assert refused.status_code == 403, refused.text
    assert "admin" in refused.json()["detail"]
    undone = api.post(f"/v1/workspaces/{ws}/events", json=retraction)
    assert undone.status_code == 201, undone.text
    _wait(api, ws, undone.json()["seq"])
    back = api.get(f"/v1/workspaces/{ws}{url}").json()
    assert back["momentum_version"] == MOMENTUM_PARAMS.version
