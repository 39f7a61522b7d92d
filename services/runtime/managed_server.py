"""A server child process in its own session, with readiness waits, stop, kill and
context-manager support: the part both embedded servers (services/runtime/embedded.py) share.

The children run in their own session / process group so that a Ctrl-C in the parent's terminal
reaches only our supervisor, which then shuts the servers down in order; and they die with the
process that started them (``PR_SET_PDEATHSIG``, services/runtime/procs.py), so a supervisor
killed with SIGKILL leaves no server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import structlog
from tieline.plumbing.files import append_private
from tieline.services.runtime.errors import ServerStartError
from tieline.services.runtime.pg_unprivileged import RunAs
from tieline.services.runtime.procs import (
    descendants,
    die_with_parent,
    poll_until,
    signal_all,
    wait_gone,
)
from tieline.services.runtime.server_binaries import log_tail

__all__ = ["ManagedServer"]

_log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Poll interval while waiting for a server to become ready.
_POLL_INTERVAL = 0.05

_LIVE: set[ManagedServer] = set()


def _stop_all_at_exit() -> None:
    """Stop servers still running at interpreter exit so no orphans are left behind."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all_at_exit)


class ManagedServer:
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
        run_as: RunAs | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start ``argv`` in a new session with stdout/stderr appended to ``log_path``.

        ``start_new_session`` keeps terminal signals (Ctrl-C) away from the server: our
        supervisor decides when and how it stops. If this process dies without stopping it
        (SIGKILL), the kernel sends the server its stop signal (``PR_SET_PDEATHSIG``, see
        services/runtime/procs.py), so no server outlives its supervisor.
        """
        with append_private(log_path) as log_file:
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
        return ServerStartError(self._kind, what, log_path, log_tail(log_path))

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
