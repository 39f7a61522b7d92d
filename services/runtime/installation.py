"""A data directory as one tieline installation: who runs it, what a crashed run left behind,
and whether the ports a new run needs are free.

``tieline up`` calls these, in this order, before it starts anything:

1. :class:`DataDirLock` — an exclusive ``flock`` on ``<data-dir>/run/supervisor.lock`` held for
   the supervisor's lifetime. The kernel drops it when the process dies, however it dies, so a
   held lock means a live ``tieline up`` (refused: :class:`AlreadyRunning`), and a free one
   means every server process still running on the directory is a leftover.
2. :func:`find_leftovers` — processes still running on the directory: nats-server and
   PostgreSQL (backends included) whose command line or working directory lies inside it, and
   tieline processes started with ``--data-dir`` of it. Matching by command line and working
   directory, not by a recorded pid, cannot mistake an unrelated process that got the pid.
3. :func:`check_ports` — the fixed ports the run needs must be free, except those a leftover
   holds (it is about to be stopped); else :class:`PortInUse` names the port and its option.
4. :func:`stop_leftovers` — leftovers are stopped, not adopted: their supervisor is gone, so
   nobody knows their configuration or credentials for sure, and a clean stop followed by a
   fresh start is the same path as any restart. PostgreSQL gets a fast shutdown (SIGINT),
   nats-server and tieline processes SIGTERM; whatever is still alive after the grace period
   is killed.
5. :func:`clear_stale_postmaster_pid` — a ``postmaster.pid`` naming a process that is dead but
   not yet reaped (a zombie) or that now belongs to someone else makes PostgreSQL refuse to
   start ("lock file postmaster.pid already exists"); once no process works in the cluster
   directory such a file is stale, and it is removed after a short wait for the reaping.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import socket
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from tieline.plumbing.files import make_dirs
from tieline.services.runtime.errors import AlreadyRunning, OperationalError, PortInUse
from tieline.services.runtime.procs import poll_until, signal_all, wait_gone

__all__ = [
    "LOCK_FILE",
    "NATS_SUBDIR",
    "POSTGRES_SUBDIR",
    "DataDirLock",
    "Leftover",
    "PortNeed",
    "check_ports",
    "clear_stale_postmaster_pid",
    "describe",
    "find_leftovers",
    "kept_stopped",
    "listening_ports",
    "running_pid",
    "stop_leftovers",
]


def _log() -> Any:
    """structlog's logger, imported only when something is logged: nothing is on the way to
    the port check, which must answer fast on a busy machine."""
    import structlog

    return structlog.get_logger(__name__)


#: Held (flock) by the running supervisor; holds its pid as text.
LOCK_FILE = Path("run") / "supervisor.lock"
#: Where in a data dir the embedded servers keep their state.
NATS_SUBDIR = "nats"
POSTGRES_SUBDIR = "postgres"
#: The module every tieline process runs (``python -m ...``).
ROLE_MODULE = "tieline.services.runtime.run"
#: Seconds a leftover gets to stop by itself before it is killed.
GRACE_S = 15.0
#: Seconds to wait for a dead postmaster to be reaped before its lock file is called stale.
REAP_WAIT_S = 2.0


# --------------------------------------------------------------------------------------------
# The supervisor's lock
# --------------------------------------------------------------------------------------------


class DataDirLock:
    """An exclusive lock on a data directory for the lifetime of one ``tieline up``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid into it; :class:`AlreadyRunning` when another live
        process holds it. Retried briefly: an operator command probing the lock
        (:func:`running_pid`) holds it for a moment."""
        try:
            make_dirs(self.path.parent)  # the data dir too, 0700: logs and secrets are in it
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OperationalError(f"cannot use {self.data_dir} as data dir: {exc}") from exc

        def attempt() -> bool | None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            return True

        if poll_until(attempt, timeout=0.5, interval=0.05) is None:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"another tieline up (pid {holder})" if holder else "another tieline up"
            raise AlreadyRunning(
                f"{self.data_dir} is in use by {who}; stop that one first (Ctrl-C in its "
                "terminal, or kill -TERM its pid)"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays, empty locks are harmless."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(raw) if raw.isdigit() else None


def running_pid(data_dir: Path) -> int | None:
    """The pid of the ``tieline up`` serving ``data_dir``, or None when none is (the lock is
    free; a shared lock is taken for a moment to find out)."""
    with kept_stopped(data_dir, create=False) as pid:
        return pid


@contextlib.contextmanager
def kept_stopped(data_dir: Path, *, create: bool = True) -> Iterator[int | None]:
    """For the block: None while no ``tieline up`` serves ``data_dir``, holding a shared lock
    on its lock file, so that none starts until the block ends (its :class:`DataDirLock`
    retries for half a second, then refuses); else the running one's pid (-1 when it wrote
    none). An operator command that changes a stopped installation's files (``tieline
    master-key rotate``) runs in it: a check alone let a ``tieline up`` start between the check
    and the change (a reviewer's finding). ``create``: make the lock file when there is none
    (an installation never started), else the answer is None with nothing held."""
    path = data_dir / LOCK_FILE
    try:
        if create:
            make_dirs(path.parent)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            yield _read_pid(fd) or -1
            return
        yield None
    finally:
        os.close(fd)  # drops the lock


# --------------------------------------------------------------------------------------------
# Leftovers of a previous run
# --------------------------------------------------------------------------------------------


@dataclass
class Leftover:
    """A process still running on the data directory after its supervisor died."""

    proc: psutil.Process
    #: ``postmaster``, ``postgres`` (a backend or helper), ``nats-server`` or ``tieline``.
    kind: str


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _mentions(cmdline: list[str], root: str) -> bool:
    """Whether an argument (or the value of a ``--opt=value`` argument) lies inside ``root``."""
    return any(_inside(part, root) for arg in cmdline for part in arg.split("="))


def _classify(info: dict[str, Any], root: str) -> str | None:
    """Which kind of leftover the process described by ``info`` is, None if not ours."""
    name = str(info.get("name") or "")
    cmdline = [str(a) for a in info.get("cmdline") or []]
    cwd = str(info.get("cwd") or "")
    here = _mentions(cmdline, root) or (bool(cwd) and _inside(cwd, root))
    if not here:
        return None
    if name == "postgres":
        return "postmaster" if "-D" in cmdline else "postgres"
    if name == "nats-server" or (cmdline and Path(cmdline[0]).name == "nats-server"):
        return "nats-server"
    if ROLE_MODULE in cmdline and _mentions(cmdline[cmdline.index(ROLE_MODULE) :], root):
        return "tieline"
    return None


def find_leftovers(data_dir: Path) -> list[Leftover]:
    """Server and tieline processes running on ``data_dir`` other than this one and its
    ancestors. Zombies are dead already and not listed. Processes we may not inspect (another
    user's, when not root) are skipped."""
    root = str(data_dir.resolve())
    me = psutil.Process()
    exclude = {me.pid, *(p.pid for p in me.parents())}
    found: list[Leftover] = []
    untagged: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cwd", "status"]):
        info = proc.info
        if info["pid"] in exclude or info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        kind = _classify(info, root)
        if kind is not None:
            found.append(Leftover(proc, kind))
        elif ROLE_MODULE in (info.get("cmdline") or []):
            untagged.append(proc)
    return found + _untagged_roles(untagged, listening_ports(found))


def _untagged_roles(candidates: list[psutil.Process], server_ports: set[int]) -> list[Leftover]:
    """tieline processes started before they carried ``--data-dir`` (an earlier release), known
    by their environment: their NATS or PostgreSQL URL names a port a leftover server of this
    data dir listens on."""
    found: list[Leftover] = []
    if not server_ports:
        return found
    for proc in candidates:
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        urls = (env.get("TIELINE_NATS_URL", ""), env.get("TIELINE_DATABASE_URL", ""))
        ports = {int(p) for url in urls for p in re.findall(r":(\d{2,5})(?:[/?,]|$)", url)}
        if ports & server_ports:
            found.append(Leftover(proc, "tieline"))
    return found


def describe(leftovers: list[Leftover]) -> str:
    """``nats-server pid 1, postmaster pid 2, 9 postgres processes, 4 tieline processes``."""
    by_kind: dict[str, list[int]] = {}
    for left in leftovers:
        by_kind.setdefault(left.kind, []).append(left.proc.pid)
    parts = []
    for kind, pids in by_kind.items():
        parts.append(f"{kind} pid {pids[0]}" if len(pids) == 1 else f"{len(pids)} {kind} processes")
    return ", ".join(parts)


def listening_ports(leftovers: list[Leftover]) -> set[int]:
    """TCP ports the leftovers listen on (they will be free once those are stopped)."""
    ports: set[int] = set()
    for left in leftovers:
        with contextlib.suppress(psutil.Error):
            for conn in left.proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    ports.add(conn.laddr.port)
    return ports


def _first_signal(left: Leftover, pids: set[int]) -> signal.Signals | None:
    """How to ask a leftover to stop: the postmaster gets a fast shutdown (SIGINT; it stops its
    own backends), nats-server and tieline processes SIGTERM. A PostgreSQL backend is left to
    its postmaster while that lives; one whose postmaster is gone is killed (nothing of it is
    worth keeping: committed work is in the WAL)."""
    if left.kind == "postmaster":
        return signal.SIGINT
    if left.kind == "postgres":
        try:
            return None if left.proc.ppid() in pids else signal.SIGKILL
        except psutil.NoSuchProcess:
            return None
    return signal.SIGTERM


def stop_leftovers(leftovers: list[Leftover], grace_s: float = GRACE_S) -> None:
    """Stop every leftover (see the module docstring); :class:`OperationalError` if one
    survives SIGKILL."""
    if not leftovers:
        return
    pids = {left.proc.pid for left in leftovers}
    for left in leftovers:
        first = _first_signal(left, pids)
        if first is not None:
            signal_all([left.proc], first)
    procs = [left.proc for left in leftovers]
    signal_all(procs, signal.SIGCONT)  # a frozen (SIGSTOPped) process handles nothing
    survivors = wait_gone(procs, grace_s)
    if survivors:
        _log().warning("leftovers.kill", pids=[p.pid for p in survivors], after_s=grace_s)
        signal_all(survivors, signal.SIGKILL)
        survivors = wait_gone(survivors, 5.0)
    if survivors:
        raise OperationalError(
            "could not stop processes left by a previous run: "
            + ", ".join(str(p.pid) for p in survivors)
        )


# --------------------------------------------------------------------------------------------
# postmaster.pid
# --------------------------------------------------------------------------------------------


def clear_stale_postmaster_pid(pgdata: Path) -> str | None:
    """Remove ``pgdata/postmaster.pid`` when it names a process that cannot be a live
    postmaster of this cluster; return why it was removed, None when it was left alone.

    Called after the leftovers are stopped, so no live process works in ``pgdata`` any more.
    A file whose pid does not exist is left for PostgreSQL, which replaces it itself; so is a
    pid we may not inspect (PostgreSQL treats EPERM as "not running" too).
    """
    path = pgdata / "postmaster.pid"
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        proc = psutil.Process(int(first))
        zombie = proc.status() == psutil.STATUS_ZOMBIE
    except (OSError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if zombie:
        # Dead, not yet reaped: its parent (or init) normally does that in a moment.
        if poll_until(lambda: True if _reaped(proc) else None, timeout=REAP_WAIT_S):
            return None
        why = "dead but never reaped by its parent"
    else:
        try:
            cwd = proc.cwd()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if _inside(cwd, str(pgdata.resolve())):
            raise OperationalError(f"PostgreSQL (pid {proc.pid}) still runs on {pgdata}")
        why = "the pid now belongs to another process"
    path.unlink(missing_ok=True)
    _log().warning("postgres.stale_lock_removed", path=str(path), pid=proc.pid, reason=why)
    return f"removed stale {path} (pid {proc.pid}: {why})"


def _reaped(proc: psutil.Process) -> bool:
    try:
        proc.status()
    except psutil.NoSuchProcess:
        return True
    return False


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortNeed:
    """A port ``tieline up`` will listen on, and how the operator picks another."""

    host: str
    port: int
    what: str
    change: str


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a listener could not bind ``host:port`` now, None if it could. SO_REUSEADDR as
    nats-server, PostgreSQL and uvicorn use it, so a port in TIME_WAIT counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _owner(port: int) -> str:
    """``pid N (name)`` of the process listening on ``port``, '' when it cannot be told."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return ""
                with contextlib.suppress(psutil.Error):
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                return f"pid {conn.pid}"
    return ""


def check_ports(needs: list[PortNeed], *, except_ports: Collection[int] = ()) -> None:
    """Raise :class:`PortInUse` for the first needed port another process listens on
    (``except_ports``: held by leftovers about to be stopped), :class:`OperationalError` for
    one that cannot be bound for another reason (a privileged port, an address not here)."""
    for need in needs:
        if need.port in except_ports:
            continue
        exc = _bind_error(need.host, need.port)
        if exc is None:
            continue
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(need.port, need.host, need.what, need.change, _owner(need.port))
        raise OperationalError(
            f"cannot listen on {need.host}:{need.port} ({need.what}): {exc.strerror}; "
            f"choose another with {need.change}"
        )
