"""``tieline calibrate`` against a real running tieline: a simulated workspace's history goes in
through the HTTP batch endpoint, the projection stores it, and calibrate reads it back from the
live read model, chooses parameters before the held-out time and validates them on it. Checked:
the report's structure, intervals that were computed, the refusal rule, and that an empty
workspace's history refuses. Never particular numbers."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.cli.main import app
from tieline.services.tools.simulate import SimConfig, simulate
from typer.testing import CliRunner

from tests.conftest import settings_env

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


def _calibrate(settings: Settings, ws: str) -> tuple[int, Any, str]:
    clean = {k: None for k in os.environ if k.startswith("TIELINE_")}
    env = {**clean, **settings_env(settings), "TIELINE_DATABASE_URL": settings.database_url}
    args = ["calibrate", "-w", ws, "--bootstrap", "40", "--json"]
    result = CliRunner().invoke(app, args, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result.exit_code, report, result.stdout + result.stderr


def test_calibrate_on_a_simulated_workspace(
    api: httpx.Client, ws: str, stack_settings: Settings
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
        lo, hi = r["auc_best_minus_default_ci95"]
        assert math.isfinite(lo) and lo <= hi, name
        assert 0.0 <= r["auc"]["default"] <= 1.0 and 0.0 <= r["auc"]["best"] <= 1.0
        # the refusal rule: recommended only when the held-out interval is above zero
        assert r["recommend"] == (r["best"] != r["default"] and lo > 0)
        assert r["candidates"] > 1


def test_calibrate_refuses_a_workspace_without_history(
    api: httpx.Client, ws: str, stack_settings: Settings
) -> None:
    code, report, text = _calibrate(stack_settings, ws)
    assert code == 1 and report is None and "has no relationship events" in text
