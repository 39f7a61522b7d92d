"""Runs the whole of tieline on one machine: the embedded servers (unless URLs are given) and
every service and worker as separate child processes, restarted if one dies.

``tieline up`` uses it; so do the end-to-end and fault-injection tests, which need to kill and
restart real processes.

With an embedded NATS the server requires authentication: every process connects as its own
NATS user with only the permissions it needs (services/runtime/nats_auth.py), the passwords
live in ``<data_dir>/secrets/nats-passwords.json``, and the streams are created by the
``admin`` user before any process starts. With an external NATS (``nats_url``) the processes
use whatever ``TIELINE_NATS_USER`` / ``TIELINE_NATS_PASSWORD`` the environment gives them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
import structlog
from tieline.plumbing.config import Settings
from tieline.plumbing.files import append_private, create_file, make_dirs, replace_file
from tieline.plumbing.redact import redact_url
from tieline.plumbing.retry import PROCESS
from tieline.services.runtime.embedded import EmbeddedNats, EmbeddedPostgres, find_free_port
from tieline.services.runtime.endpoints import Endpoints
from tieline.services.runtime.errors import OperationalError
from tieline.services.runtime.installation import NATS_SUBDIR, POSTGRES_SUBDIR
from tieline.services.runtime.master_key import KEY_FILE, new_key, read_key_files
from tieline.services.runtime.nats_auth import (
    PASSWORDS_FILE,
    authorization_block,
    load_or_create_passwords,
)
from tieline.services.runtime.procs import die_with_parent, poll_until
from tieline.services.runtime.run import ROLES
from tieline.services.runtime.server_binaries import reserve_ports

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
    #: API processes on the one API port (SO_REUSEPORT; ``tieline up --api-workers``).
    api_workers: int = 1
    #: Partitioned projection workers (``tieline up --workers``): ``worker`` owns partition
    #: 0, ``worker.2`` partition 1, and so on.
    workers: int = 1


def worker_process(partition: int) -> str:
    """The name of the worker process that owns ``partition``: ``worker``, ``worker.2`` ..."""
    return "worker" if partition == 0 else f"worker.{partition + 1}"


def partition_of_process(name: str) -> int:
    """The partition the worker process ``name`` owns (the inverse of ``worker_process``)."""
    return int(name.partition(".")[2] or 1) - 1


#: The most connections one api process opens (its pools at their largest: 8 + 16 + 4), and
#: a margin for one projection worker's own connections (services/api/runtime.py,
#: projections/worker.py): see :meth:`Stack.postgres_max_connections`.
API_PROCESS_CONNECTIONS = 28
WORKER_CONNECTIONS = 8


class Stack:
    """The servers and processes of one tieline installation."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.nats: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        reserve_ports(config.api_port, config.nats_port, config.postgres_port)
        self.api_port = config.api_port or find_free_port(config.api_host)
        #: The health and /metrics port of each role without an HTTP API of its own, and of
        #: each api process when there are several: on the shared api port a scrape reaches
        #: whichever process the kernel picks, and counters would jump between processes.
        self.health_ports = {
            name: find_free_port(config.api_host)
            for name in self.process_names()
            if not name.startswith("api") or config.api_workers > 1
        }
        self._stopping = False
        #: NATS user -> password, for the embedded NATS only (None: external, no users made).
        self._nats_passwords: dict[str, str] | None = None

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

    @property
    def nats_dir(self) -> Path:
        """Where the embedded NATS keeps its configuration, log and JetStream store."""
        return self.config.data_dir / NATS_SUBDIR

    @property
    def postgres_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its cluster (``pgdata``), socket and log."""
        return self.config.data_dir / POSTGRES_SUBDIR

    def endpoints(self) -> Endpoints:
        """What operator commands need to reach this installation (run/endpoints.json)."""
        settings = self.settings()
        secrets = self.config.data_dir / "secrets"
        return Endpoints(
            data_dir=str(self.config.data_dir),
            supervisor_pid=os.getpid(),
            started_at=datetime.now(UTC).isoformat(),
            api_url=self.api_url,
            nats_url=self.nats_url,
            nats_monitor_url=self.nats.monitor_url if self.nats else None,
            database_url=self.database_url,
            database_schema=settings.database_schema,
            stream_name=settings.stream_name,
            subject_prefix=settings.subject_prefix,
            consumer_name=settings.consumer_name,
            nats_pid=self.nats.pid if self.nats else None,
            postgres_pid=self.postgres.pid if self.postgres else None,
            nats_credentials_file=str(self.passwords_path) if self._nats_passwords else None,
            nats_admin_user="admin" if self._nats_passwords else None,
            admin_token_file=str(secrets / "admin-token"),
            logs_dir=str(self.config.data_dir / "logs"),
            metrics_urls=self.metrics_urls(),
        )

    def metrics_urls(self) -> dict[str, str]:
        """process name -> where Prometheus scrapes it: one URL per process (``api``,
        ``api.2``, ... each on a port of its own when there are several api processes)."""
        host = self.config.api_host
        urls = {role: f"http://{host}:{port}/metrics" for role, port in self.health_ports.items()}
        if "api" in self.config.roles and "api" not in urls:
            urls["api"] = f"{self.api_url}/metrics"
        return urls

    @property
    def passwords_path(self) -> Path:
        """Where the embedded NATS users' passwords are kept (JSON, mode 0600)."""
        return self.config.data_dir / PASSWORDS_FILE

    def nats_credentials(self, role: str) -> tuple[str, str] | None:
        """(user, password) that ``role`` (a process role or ``admin``) uses on the embedded
        NATS; None when the NATS is external (its credentials come from the environment)."""
        if self._nats_passwords is None:
            return None
        return role, self._nats_passwords[role]

    def settings(self, **overrides: object) -> Settings:
        """The Settings the children get: TIELINE_* from our environment, then ``config.env``,
        then ``overrides`` (used for the admin connection that creates the streams)."""
        values: dict[str, object] = {
            key.removeprefix("TIELINE_").lower(): value
            for key, value in self.config.env.items()
            if key.startswith("TIELINE_")
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def start_servers(self) -> None:
        """Start embedded NATS and PostgreSQL for whatever has no URL configured.

        An embedded NATS gets one user per role with least-privilege permissions, and the
        streams are then created (or checked) as ``admin``, since the processes may not.
        """
        data = self.config.data_dir
        make_dirs(data)
        if not self.config.nats_url and self.nats is None:
            self._nats_passwords = load_or_create_passwords(self.passwords_path)
            subjects = self.settings()
            auth = authorization_block(
                subjects.subject_prefix, subjects.stream_name, self._nats_passwords
            )
            extra = "\n".join(part for part in (self.config.nats_extra_config, auth) if part)
            self.nats = EmbeddedNats(
                self.nats_dir,
                port=self.config.nats_port,
                sync_always=self.config.sync_always,
                extra_config=extra,
            )
        if self.nats is not None:
            self.nats.start()
            log.info("nats.started", url=self.nats.url, sync_always=self.config.sync_always)
            if self._nats_passwords is not None:
                self.ensure_streams_as_admin()
        if not self.config.database_url and self.postgres is None:
            self.postgres = EmbeddedPostgres(
                self.postgres_dir,
                port=self.config.postgres_port,
                max_connections=self.postgres_max_connections(),
            )
        if self.postgres is not None:
            self.postgres.start()
            log.info("postgres.started", url=redact_url(self.postgres.url))

    def ensure_streams_as_admin(self, timeout: float = 30.0) -> None:
        """Create or check the event and dead-letter streams as the embedded NATS's ``admin``
        user: the processes' own users may only look the streams up, not create them."""
        from tieline.plumbing.jetstream import connect_nats, ensure_streams

        credentials = self.nats_credentials("admin")
        assert credentials is not None
        settings = self.settings(
            nats_url=self.nats_url, nats_user=credentials[0], nats_password=credentials[1]
        )

        async def run() -> None:
            nc = await connect_nats(settings, name="tieline-supervisor-admin")
            try:
                info = await ensure_streams(nc.jetstream(), settings)
                log.info("streams.ready", stream=info.config.name, last_seq=info.state.last_seq)
            finally:
                await nc.close()

        # In a thread of its own: the caller may itself be running an event loop (async tests).
        with concurrent.futures.ThreadPoolExecutor(1, "tieline-admin") as pool:
            pool.submit(asyncio.run, asyncio.wait_for(run(), timeout)).result()

    def _given_master_key(self) -> str | None:
        return self.config.env.get("TIELINE_MASTER_KEY") or os.environ.get("TIELINE_MASTER_KEY")

    def master_key(self) -> str:
        """TIELINE_MASTER_KEY from the environment, else one kept in the data dir (0600)."""
        given = self._given_master_key()
        if given:
            return given
        path = self.config.data_dir / KEY_FILE
        if not path.exists():
            make_dirs(path.parent)
            # Durable before any child encrypts with it, and 0600 from its first byte (it
            # was written world-readable, then chmodded, and never fsynced).
            with contextlib.suppress(FileExistsError):
                create_file(path, new_key().encode())
        key = path.read_text().strip()
        if not key:  # never "no master key": children would store person keys unwrapped
            raise OperationalError(f"{path} is empty: restore the master key from a backup")
        return key

    def bootstrap_admin_token(self, token: str | None = None, workspace: str = "default") -> str:
        """Create (or re-register a given) admin token for ``workspace``; a fresh one is
        written to ``data_dir/secrets/admin-token`` so a restart prints the same token."""
        import asyncio

        from tieline.plumbing import db
        from tieline.plumbing.config import Settings
        from tieline.plumbing.state import ensure_state_schema
        from tieline.services.auth import TokenRevoked, create_token

        path = self.config.data_dir / "secrets" / "admin-token"
        stored = token is None and path.exists()
        if stored:
            token = path.read_text().strip()
        # The schema the children will use: TIELINE_* from our environment, then config.env.
        schema = self.settings().database_schema
        settings = Settings(database_url=self.database_url, database_schema=schema)

        async def go() -> str:
            conn = await db.connect(settings)
            try:
                await ensure_state_schema(conn, schema)
                try:
                    return await create_token(conn, workspace, "admin", "admin", token)
                except TokenRevoked:
                    if not stored:
                        raise
                    # The operator revoked the stored token: a new one replaces it.
                    return await create_token(conn, workspace, "admin", "admin")
            finally:
                await conn.close()

        created = asyncio.run(go())
        make_dirs(path.parent)
        replace_file(path, created.encode())  # 0600 from its first byte
        return created

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
        if role in self.health_ports:
            env["TIELINE_HEALTH_HOST"] = self.config.api_host
            env["TIELINE_HEALTH_PORT"] = str(self.health_ports[role])
        env["TIELINE_MASTER_KEY"] = self.master_key()
        if not self._given_master_key():
            # During a rotation (tieline master-key rotate): the keys the data dir's key
            # replaced still open what they sealed, until tieline master-key rewrap. Beside
            # any given in the environment (a restored backup's old key), as rewrap takes them.
            given = env.get("TIELINE_MASTER_KEY_PREVIOUS")
            previous = read_key_files(self.config.data_dir)[1]
            merged = ",".join(k for k in (previous, given) if k)
            if merged:
                env["TIELINE_MASTER_KEY_PREVIOUS"] = merged
        env.update(self.config.env)
        credentials = self.nats_credentials(role)
        if credentials is not None:
            # Last, so nothing inherited can make a process connect as someone else.
            env["TIELINE_NATS_USER"], env["TIELINE_NATS_PASSWORD"] = credentials
        return env

    def process_names(self) -> list[str]:
        """One name per process: its role, ``api.2`` ... ``api.N`` for further API processes
        and ``worker.2`` ... ``worker.N`` for further projection partitions (each is
        supervised and restarted on its own)."""
        names: list[str] = []
        extra = {"api": self.config.api_workers, "worker": self.config.workers}
        for role in self.config.roles:
            names.append(role)
            names += [f"{role}.{i}" for i in range(2, extra.get(role, 1) + 1)]
        return names

    def start_role(self, name: str) -> None:
        """Start one tieline process (``name``: a role, or ``api.N``), logging to
        ``logs/<name>.log``.

        ``--data-dir`` on its command line names the installation it belongs to, so a later
        ``tieline up`` (or ``ps``) can tell it apart from another's. If this process dies
        without stopping it, the kernel kills it (``PR_SET_PDEATHSIG``): it holds nothing that
        a crash could lose (checkpoints commit with the read models, acks follow commits).
        """
        logs = self.config.data_dir / "logs"
        make_dirs(logs)
        os.chmod(logs, 0o700)  # an earlier version made it 0755
        role = name.partition(".")[0]
        argv = [sys.executable, "-m", "tieline.services.runtime.run", role]
        env = self.child_env(role)
        if role == "api":
            env["TIELINE_API_WORKERS"] = str(self.config.api_workers)
        # Every process: the api's first generation on a fresh database is built for it too.
        env["TIELINE_PROJECTION_WORKERS"] = str(self.config.workers)
        if role == "worker":
            env["TIELINE_PROJECTION_PARTITION"] = str(partition_of_process(name))
        if name in self.health_ports:
            env["TIELINE_HEALTH_PORT"] = str(self.health_ports[name])
        with append_private(logs / f"{name}.log") as out:
            self.children[name] = subprocess.Popen(
                [*argv, "--data-dir", str(self.config.data_dir)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )

    def start_processes(self) -> None:
        for name in self.process_names():
            self.start_role(name)

    def kill_role(self, role: str, sig: signal.Signals = signal.SIGKILL) -> None:
        proc = self.children[role]
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the API answers /readyz with 200 (servers, services and worker up).

        :class:`OperationalError` when a process exits meanwhile (naming its log) or time
        runs out."""
        last = [""]

        def check() -> bool | None:
            for role, proc in self.children.items():
                if proc.poll() is not None:
                    raise OperationalError(
                        f"{role} exited with code {proc.returncode} while starting; see "
                        f"{self.config.data_dir / 'logs' / (role + '.log')}"
                    )
            silent = self.api_processes_not_listening()
            if silent:
                last[0] = f"{', '.join(silent)} not listening on port {self.api_port} yet"
                return None
            foreign = self.foreign_api_listeners() if self.config.api_workers > 1 else []
            if foreign:
                raise OperationalError(
                    f"another process (pid {', '.join(map(str, foreign))}) listens on "
                    f"{self.config.api_host}:{self.api_port} beside this installation's api "
                    "processes, and would answer part of its requests: stop it, or choose "
                    "another --api-port"
                )
            try:
                with urllib.request.urlopen(self.api_url + "/readyz", timeout=2) as resp:
                    return True if resp.status == 200 else None
            except (urllib.error.URLError, OSError) as exc:
                last[0] = str(exc)
                return None

        if poll_until(check, timeout=timeout, interval=0.2) is None:
            raise OperationalError(f"tieline did not become ready in {timeout:g}s: {last[0]}")

    def postgres_max_connections(self) -> int:
        """The embedded PostgreSQL's connection limit: PostgreSQL's default of 100 holds one
        process of each role at their pools' largest, and each further api process (pools
        of up to 8 + 16 + 4) or projection worker (a few connections of its own) gets its
        share on top. At 100 whatever the processes, three busy api processes with the
        services ran out ("too many clients", a reviewer's count)."""
        return (
            100
            + API_PROCESS_CONNECTIONS * (self.config.api_workers - 1)
            + WORKER_CONNECTIONS * (self.config.workers - 1)
        )

    def foreign_api_listeners(self) -> list[int]:
        """Processes other than this installation's api processes listening on its api
        address (pids; -1 where the system does not say). Under ``--api-workers`` the api
        processes share the port (SO_REUSEPORT), and so can any process of the same user
        that asks: another ``tieline up`` started at the same moment on the same port passed
        the port check too, joined, and the two installations split the traffic (a
        reviewer's run: 40 requests, 14 and 26)."""
        ours = {proc.pid for name, proc in self.children.items() if name.partition(".")[0] == "api"}
        found = {
            c.pid if c.pid is not None else -1
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
            and c.laddr
            and (c.laddr.ip, c.laddr.port) == (self.config.api_host, self.api_port)
            and c.pid not in ours
        }
        return sorted(found)

    def api_processes_not_listening(self) -> list[str]:
        """The API processes (``api``, ``api.2`` ...) with no listening socket on the API port.

        With several API processes on one port, one answering ``/readyz`` says nothing of the
        others: a process still importing has not joined the port's SO_REUSEPORT group yet,
        so every answer comes from the first, and the API would vanish with it."""
        silent = []
        for name, proc in self.children.items():
            if name.partition(".")[0] != "api" or proc.poll() is not None:
                continue
            try:
                sockets = psutil.Process(proc.pid).net_connections(kind="tcp")
            except psutil.Error:
                sockets = []
            if not any(
                s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == self.api_port
                for s in sockets
            ):
                silent.append(name)
        return silent

    def supervise_once(self) -> None:
        """Restart any child that exited while we were not stopping (with a short backoff)."""
        for role, proc in list(self.children.items()):
            if proc.poll() is not None and not self._stopping:
                n = self.restarts.get(role, 0) + 1
                self.restarts[role] = n
                log.warning("process.exited", role=role, code=proc.returncode, restart=n)
                time.sleep(PROCESS.delay(n))
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
