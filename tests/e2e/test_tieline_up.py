"""`tieline up` as a user runs it: embedded NATS and PostgreSQL, every process, an admin
token; Ctrl-C stops everything; a second `tieline up` on the same data dir keeps all data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tieline.services.runtime.embedded import find_free_port


def start_up(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIELINE_")}
    env["COLUMNS"] = "250"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tieline.services.cli.main",
            "up",
            "--data-dir",
            str(data_dir),
            "--api-port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    token = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"(tl_[0-9a-f]{12}_\S+)", line)
        if found:
            token = found.group(1)
        if "Ctrl-C stops everything" in line:
            assert token is not None, "".join(lines)
            return proc, token
    proc.kill()
    raise AssertionError("tieline up did not come up:\n" + "".join(lines))


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_tieline_up_serves_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    port = find_free_port()
    data = tmp_path / "data"
    proc, token = start_up(data, port)
    try:
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
        for pid in ("ada", "grace"):
            r = api.post(
                "/v1/workspaces/default/people",
                json={"person_id": pid, "display_name": pid.title()},
            )
            assert r.status_code == 201, r.text
        r = api.post(
            "/v1/workspaces/default/events",
            json={
                "type": "relationship.met",
                "participants": ["ada", "grace"],
                "depth": "conversation",
                "duration_minutes": 40,
            },
        )
        seq = r.json()["seq"]
        first = api.get(
            "/v1/workspaces/default/relationships/ada/grace", params={"min_seq": seq}
        ).json()
        assert first["meetings"] == 1
        ready = api.get("/readyz").json()
        assert ready["ready"] is True
    finally:
        out = stop(proc)
    assert "stopped." in out
    proc2, token2 = start_up(data, port)
    try:
        assert token2 == token  # the same admin token after a restart
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
        again = api.get(
            "/v1/workspaces/default/relationships/ada/grace", params={"min_seq": seq}
        ).json()
        assert again["meetings"] == 1 and again["event_count"] == first["event_count"]
        people = api.get("/v1/workspaces/default/people").json()["people"]
        assert {p["display_name"] for p in people} == {"Ada", "Grace"}
    finally:
        stop(proc2)
