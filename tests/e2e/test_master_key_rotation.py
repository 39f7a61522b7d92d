"""Rotating the master key of a `tieline up` as an operator does it: stop, `tieline master-key
rotate`, start (the processes get the new key and the old one as a previous key), `tieline
master-key rewrap`, and a start without the old key still reads every encrypted name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from tieline.plumbing.crypto import master_key_from_env
from tieline.services.runtime.embedded import find_free_port
from tieline.services.runtime.master_key import KEY_FILE, PREVIOUS_FILE

from tests.e2e.test_tieline_up import start_up, stop

PEOPLE = {"ada": "Ada Lovelace", "grace": "Grace Hopper"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIELINE_")}
    return subprocess.run(
        [sys.executable, "-m", "tieline.services.cli.main", "master-key", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _client(port: int, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )


def _names(port: int, token: str) -> dict[str, str]:
    people = _client(port, token).get("/v1/workspaces/default/people").json()["people"]
    return {p["person_id"]: p["display_name"] for p in people}


def test_a_rotated_master_key_reads_what_the_old_one_sealed(tmp_path: Path) -> None:
    port, data = find_free_port(), tmp_path / "data"
    proc, token = start_up(data, port)
    try:
        api = _client(port, token)
        for pid, name in PEOPLE.items():
            r = api.post(
                "/v1/workspaces/default/people", json={"person_id": pid, "display_name": name}
            )
            assert r.status_code == 201, r.text
        refused = _cli("rotate", "--data-dir", str(data))
        assert refused.returncode == 1 and "stop it first" in refused.stderr
    finally:
        stop(proc)
    old_key = (data / KEY_FILE).read_text()
    rotated = _cli("rotate", "--data-dir", str(data))
    assert rotated.returncode == 0, rotated.stderr
    new_key = master_key_from_env((data / KEY_FILE).read_text())
    assert new_key is not None and (data / KEY_FILE).read_text() != old_key
    assert f"--expect-fingerprint {new_key.fingerprint()}" in rotated.stdout
    old_fingerprint = master_key_from_env(old_key)
    assert old_fingerprint is not None
    proc, token = start_up(data, port)
    try:
        assert _names(port, token) == PEOPLE  # opened under the previous key
        wrong = ("--expect-fingerprint", old_fingerprint.fingerprint())
        refused = _cli("rewrap", "--data-dir", str(data), *wrong)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "nothing written" in refused.stderr
        assert (data / PREVIOUS_FILE).exists()
        expected = ("--expect-fingerprint", new_key.fingerprint().upper())
        done = _cli("rewrap", "--data-dir", str(data), *expected, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["previous_key_needed"] is False
        assert report["current_key_fingerprint"] == new_key.fingerprint()
        retired = Path(report["previous_key_retired_to"])  # kept for older backups
        assert retired.parent == data / "secrets" and retired.read_text() == old_key
        assert retired.stat().st_mode & 0o777 == 0o600
        # ada, grace and the workspace's own key, all wrapped under the old key
        assert report["resealed"]["person keys"] >= 2, report
        assert not (data / PREVIOUS_FILE).exists()
    finally:
        stop(proc)
    proc, token = start_up(data, port)  # the new key alone
    try:
        assert _names(port, token) == PEOPLE
        again = _cli("rewrap", "--data-dir", str(data), "--check")
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        stop(proc)
