"""`tieline up` as a user runs it: embedded NATS and PostgreSQL, every process, an admin
token; Ctrl-C stops everything; a second `tieline up` on the same data dir keeps all data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tieline.services.runtime.embedded import find_free_port


def start_up(
    data_dir: Path, port: int, banner: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
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
            if banner is not None:
                banner.extend(lines)
            return proc, token
    proc.kill()
    raise AssertionError("tieline up did not come up:\n" + "".join(lines))


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _nothing_in_the_data_dir_is_open_to_others(data: Path) -> None:
    """Logs hold tracebacks and personal data; secrets/ the keys: every log was 0644 in a
    0755 logs/ (a reviewer's finding). (As root the data dir gets o+x, never o+r, so the
    PostgreSQL user can reach its cluster.)"""
    assert data.stat().st_mode & 0o077 in (0, 0o001)
    for sub in ("logs", "secrets", "run"):
        assert (data / sub).stat().st_mode & 0o077 == 0, sub
    logs = [*(data / "logs").glob("*.log"), *data.glob("*/postgres.log"), *data.glob("*/*.log")]
    assert logs
    for log in logs:
        assert log.stat().st_mode & 0o077 == 0, log


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
        _nothing_in_the_data_dir_is_open_to_others(data)
    finally:
        out = stop(proc)
    assert "stopped." in out
    banner: list[str] = []
    proc2, token2 = start_up(data, port, banner)
    try:
        assert token2 == token  # the same admin token after a restart
        _the_banner_hides_the_database_password(data, "".join(banner))
        _stream_backup_with_the_data_dir_and_without_admin(data, tmp_path)
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


def _the_banner_hides_the_database_password(data: Path, banner: str) -> None:
    password = (data / "postgres" / "password").read_text().strip()
    assert len(password) >= 24
    assert "PostgreSQL: postgresql://tieline:***@127.0.0.1:" in banner, banner
    assert password not in banner
    assert not any(password in p.read_text() for p in (data / "logs").glob("*.log"))


def _stream_backup_with_the_data_dir_and_without_admin(data: Path, tmp_path: Path) -> None:
    """``--data-dir`` (which the error messages suggest) backs up as admin; another NATS user
    gets one line that says what is needed, not a traceback."""
    cli = [sys.executable, "-m", "tieline.services.cli.main", "stream", "backup"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIELINE_")}
    done = subprocess.run(
        [*cli, "--data-dir", str(data), str(tmp_path / "backup")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backed up TIELINE: 3 message(s), last seq 3" in done.stdout, done.stdout
    endpoints = json.loads((data / "run" / "endpoints.json").read_text())
    passwords = json.loads(Path(endpoints["nats_credentials_file"]).read_text())
    env.update(
        TIELINE_NATS_URL=endpoints["nats_url"],
        TIELINE_NATS_USER="api",
        TIELINE_NATS_PASSWORD=passwords["api"],
    )
    refused = subprocess.run(
        [*cli, str(tmp_path / "not-admin")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr and "│" not in refused.stderr, refused.stderr
    assert "needs the NATS admin user" in refused.stderr, refused.stderr
