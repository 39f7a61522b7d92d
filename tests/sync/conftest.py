"""A real CalDAV/CardDAV server (Radicale, from PyPI) on loopback with a user and password,
and a tieline stack of its own whose sync process polls often."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack, StackConfig

from tests.conftest import Servers, settings_env, unique_settings
from tests.e2e.conftest import make_token


@dataclass(frozen=True)
class Dav:
    url: str
    user: str
    password: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dav]:
    """Radicale with htpasswd authentication (one user), its data in a temporary folder."""
    root: Path = tmp_path_factory.mktemp("radicale")
    password = uuid.uuid4().hex
    (root / "users").write_text(f"alice:{password}\n")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radicale",
            "--server-hosts",
            f"127.0.0.1:{port}",
            "--storage-filesystem-folder",
            str(root / "collections"),
            "--auth-type",
            "htpasswd",
            "--auth-htpasswd-filename",
            str(root / "users"),
            "--auth-htpasswd-encryption",
            "plain",
        ],
        stdout=(root / "radicale.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            assert proc.poll() is None, (root / "radicale.log").read_text()
            assert time.monotonic() < deadline, "radicale did not start"
            time.sleep(0.1)
    try:
        yield Dav(url, "alice", password)
    finally:
        proc.terminate()
        proc.wait(10)


#: The sync process looks for due sources every 0.2 s; a failure backs off 1 s at most; a
#: killed process's lease on a source ends after 3 s; commands carry 10 events each.
SYNC_ENV = {
    "TIELINE_SYNC_POLL_S": "0.2",
    "TIELINE_SYNC_BACKOFF_MAX_S": "1",
    "TIELINE_SYNC_LEASE_S": "3",
    "TIELINE_SYNC_CHUNK": "10",
    # Radicale listens on loopback, over plain http.
    "TIELINE_SYNC_ALLOW_LOOPBACK": "true",
}


@pytest.fixture(scope="module")
def sync_stack(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Settings]]:
    """The stack's own embedded NATS, so every process runs as its least-privilege NATS user
    as under ``tieline up`` (the sync process may only send commands); the shared
    PostgreSQL."""
    settings = unique_settings(servers)
    env = {k: v for k, v in settings_env(settings).items() if k != "TIELINE_NATS_URL"}
    config = StackConfig(
        data_dir=tmp_path_factory.mktemp("sync-stack"),
        nats_url=None,
        database_url=servers.database_url,
        env={**env, **SYNC_ENV},
    )
    with Stack(config) as s:
        yield s, settings


@pytest.fixture
def ws() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def api(sync_stack: tuple[Stack, Settings], ws: str) -> Iterator[httpx.Client]:
    stack, settings = sync_stack
    headers = {"Authorization": f"Bearer {make_token(settings, ws)}"}
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=headers) as client:
        yield client
