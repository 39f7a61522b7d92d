"""``tieline sync add|list|run|remove`` against the running stack and Radicale: the password
comes from the environment (or a prompt), never back out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack

from tests.sync.conftest import Dav
from tests.sync.helpers import add_person, calendar, meetings, vevent, wait_until

pytestmark = pytest.mark.integration


def tieline(
    stack: Stack, token: str, ws: str, *args: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TIELINE_API_URL": stack.api_url,
        "TIELINE_TOKEN": token,
        "TIELINE_WORKSPACE": ws,
    }
    if password is not None:
        env["TIELINE_SYNC_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "tieline.services.cli.main", "sync", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_sync_commands(
    api: httpx.Client, ws: str, radicale: Dav, sync_stack: tuple[Stack, Settings]
) -> None:
    stack, _ = sync_stack
    token = api.headers["Authorization"].split()[1]
    seq = max(
        add_person(api, ws, "ada", "Ada", "alice@example.org"),
        add_person(api, ws, "grace", "Grace", "grace@example.org"),
    )
    assert api.get(f"/v1/workspaces/{ws}/people/grace", params={"min_seq": seq}).status_code == 200
    cal = calendar(radicale, ws)
    day = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    cal.add_event(vevent("tea", day, 45, "Tea", [("grace@example.org", "ACCEPTED")]))
    url = radicale.url + f"{radicale.user}/{ws}/"

    added = tieline(
        stack,
        token,
        ws,
        "add",
        "caldav",
        url,
        "--user",
        radicale.user,
        "--owner",
        "ada",
        "--json",
        password=radicale.password,
    )
    assert added.returncode == 0, added.stderr
    sid = json.loads(added.stdout)["source_id"]
    assert radicale.password not in added.stdout

    ran = tieline(stack, token, ws, "run", sid)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert f"{sid}: ok at" in ran.stdout
    wait_until(lambda: any(m["context"] == "Tea" for m in meetings(api, ws)), 30, "the meeting")

    listed = tieline(stack, token, ws, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [src] = json.loads(listed.stdout)["sources"]
    assert src["source_id"] == sid and src["status"]["last_error"] is None
    assert radicale.password not in listed.stdout

    bad = tieline(
        stack,
        token,
        ws,
        "add",
        "caldav",
        url,
        "--user",
        radicale.user,
        "--owner",
        "ada",
        "--json",
        password="wrong",
    )
    bad_id = json.loads(bad.stdout)["source_id"]
    failed = tieline(stack, token, ws, "run", bad_id)
    assert failed.returncode == 1 and "authentication refused" in failed.stdout, failed.stdout

    for s in (sid, bad_id):
        removed = tieline(stack, token, ws, "remove", s)
        assert removed.returncode == 0, removed.stderr
    assert json.loads(tieline(stack, token, ws, "list", "--json").stdout)["sources"] == []
