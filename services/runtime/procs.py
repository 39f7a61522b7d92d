"""Process plumbing for the runtime: children that die with their supervisor, process trees
read with psutil, and waits written with tenacity.

``tieline up`` is a supervisor with long-lived children (nats-server, PostgreSQL, the tieline
processes). When it is killed with SIGKILL it gets no chance to stop them, and a child left
running keeps the data directory's ports and files (``postmaster.pid``, the JetStream store)
and blocks the next start. Linux's ``PR_SET_PDEATHSIG`` makes the kernel send each child a
signal of our choice when the supervisor dies, however it dies; :func:`die_with_parent`
arranges that in the child between fork and exec (after ``subprocess`` switched to the user
PostgreSQL runs as: a change of credentials clears the setting, so it must come last).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

import psutil
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

__all__ = [
    "alive",
    "descendants",
    "die_with_parent",
    "is_gone",
    "poll_until",
    "wait_gone",
]

T = TypeVar("T")

#: ``PR_SET_PDEATHSIG`` from <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (loaded in the parent: nothing may be loaded between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    func: Callable[..., int] = libc.prctl
    return func


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies; None where
    that cannot be arranged (not Linux, or not called from the main thread).

    The kernel's "parent" for this purpose is the *thread* that forked the child, so a child
    started from a short-lived thread would be signalled when that thread ends. Only the main
    thread lives as long as the process; children spawned elsewhere get no death signal (they
    are still stopped by the supervisor's orderly shutdown and found as leftovers later).
    """
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def arrange() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(126)
        # The parent may have died between fork and prctl: then no signal would ever come.
        if os.getppid() != parent:
            os._exit(126)

    return arrange


def is_gone(proc: psutil.Process) -> bool:
    """True when ``proc`` has exited: no such process any more, or a zombie (dead, waiting for
    a parent that may never reap it: its memory, files and sockets are released already)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``procs`` that have not exited (see :func:`is_gone`)."""
    return [p for p in procs if not is_gone(p)]


def descendants(pid: int) -> list[psutil.Process]:
    """Every live process below ``pid`` (children, grandchildren, ...); empty when ``pid`` is
    gone. Zombies are left out."""
    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return alive(below)


def poll_until(
    check: Callable[[], T | None], *, timeout: float, interval: float = 0.05
) -> T | None:
    """Call ``check()`` every ``interval`` seconds until it returns something other than None,
    at most ``timeout`` seconds; return that, or None when time ran out.

    An exception from ``check`` ends the wait at once and propagates: it means "this will never
    succeed" (the process being waited for has died), not "not yet".
    """
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda result: result is None),
        retry_error_callback=lambda _state: None,
    )
    result: T | None = retrying(check)
    return result


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for every process in ``procs`` to exit; return those still
    alive. Unlike ``psutil.wait_procs`` a zombie counts as gone: a process that is not our
    child cannot be reaped by us, and its parent may never do it."""
    pending = list(procs)

    def check() -> bool | None:
        pending[:] = alive(pending)
        return True if not pending else None

    poll_until(check, timeout=timeout)
    return alive(pending)


def signal_all(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    """Send ``sig`` to each process that still exists (and is the same process: psutil checks
    the start time, so a reused pid is never signalled)."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)
