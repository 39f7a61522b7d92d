"""Runs the whole of tieline on one machine: the embedded servers (unless URLs are given) and
every service and worker as separate child processes, restarted if one dies.

``tieline up`` uses it; so do the end-to-end and fault-injection tests, which need to kill and
restart real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres, find_free_port
from services.runtime.run import ROLES

log = structlog.get_logger(__name__)


@dataclass
class StackConfig:
    """Where the data lives and which servers to use (None: start embedded ones)."""

    data_dir: Path
    nats_url: str | None = None
    database_url: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int | None = None
    nats_port: int | None = None
    postgres_port: int | None = None
    sync_always: bool = True
    #: Extra TIELINE_* settings for every child (schema, stream name, subject prefix, ...).
    env: dict[str, str] = field(default_factory=dict)
    roles: tuple[str, ...] = ROLES
    nats_extra_config: str = ""


class Stack:
    """The servers and processes of one tieline installation."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.nats: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self.api_port = config.api_port or find_free_port(config.api_host)
        self._stopping = False

    @property
    def api_url(self) -> str:
        return f"http://{self.config.api_host}:{self.api_port}"

    @property
    def nats_url(self) -> str:
        if self.config.nats_url:
            return self.config.nats_url
        assert self.nats is not None
        return self.nats.url

    @property
    def database_url(self) -> str:
        if self.config.database_url:
            return self.config.database_url
        assert self.postgres is not None
        return self.postgres.url

    def start_servers(self) -> None:
        """Start embedded NATS and PostgreSQL for whatever has no URL configured."""
        data = self.config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        if not self.config.nats_url and self.nats is None:
            self.nats = EmbeddedNats(
                data / "nats",
                port=self.config.nats_port,
                sync_always=self.config.sync_always,
                extra_config=self.config.nats_extra_config,
            )
        if self.nats is not None:
            self.nats.start()
            log.info("nats.started", url=self.nats.url, sync_always=self.config.sync_always)
        if not self.config.database_url and self.postgres is None:
            self.postgres = EmbeddedPostgres(data / "postgres", port=self.config.postgres_port)
        if self.postgres is not None:
            self.postgres.start()
            log.info("postgres.started", url=self.postgres.url)

    def child_env(self, role: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "TIELINE_NATS_URL": self.nats_url,
                "TIELINE_DATABASE_URL": self.database_url,
                "TIELINE_API_HOST": self.config.api_host,
                "TIELINE_API_PORT": str(self.api_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.setdefault("TIELINE_LOG_JSON", "true")
        env.update(self.config.env)
        return env

    def start_role(self, role: str) -> None:
        logs = self.config.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = (logs / f"{role}.log").open("ab")
        self.children[role] = subprocess.Popen(
            [sys.executable, "-m", "services.runtime.run", role],
            env=self.child_env(role),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def start_processes(self) -> None:
        for role in self.config.roles:
            self.start_role(role)

    def kill_role(self, role: str, sig: signal.Signals = signal.SIGKILL) -> None:
        proc = self.children[role]
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the API answers /readyz with 200 (servers, services and worker up)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for role, proc in self.children.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{role} exited with {proc.returncode}; see "
                        f"{self.config.data_dir / 'logs' / (role + '.log')}"
                    )
            try:
                with urllib.request.urlopen(self.api_url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"tieline did not become ready in {timeout:g}s: {last}")

    def supervise_once(self) -> None:
        """Restart any child that exited while we were not stopping (with a short backoff)."""
        for role, proc in list(self.children.items()):
            if proc.poll() is not None and not self._stopping:
                n = self.restarts.get(role, 0) + 1
                self.restarts[role] = n
                log.warning("process.exited", role=role, code=proc.returncode, restart=n)
                time.sleep(min(0.2 * n, 5.0))
                self.start_role(role)

    def stop_processes(self, timeout: float = 15.0) -> None:
        self._stopping = True
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()
        self._stopping = False

    def stop(self) -> None:
        """Stop processes first (they drain), then the servers."""
        self.stop_processes()
        if self.postgres is not None:
            self.postgres.stop()
        if self.nats is not None:
            self.nats.stop()

    def __enter__(self) -> Stack:
        try:
            self.start_servers()
            self.start_processes()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
