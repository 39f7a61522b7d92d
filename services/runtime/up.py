"""``tieline up``: claim the data directory, clear what a crashed run left, check the ports,
then start and supervise the installation until Ctrl-C / SIGTERM.

The order matters and each step fails with one line (an
:class:`~tieline.services.runtime.errors.OperationalError`) before anything is started:

1. lock the data directory (another live ``tieline up`` on it: refused);
2. find processes a previous run left (installation.py), check that every fixed port this
   run needs (API, and the NATS/PostgreSQL ports when given) is free or held by one of them;
3. stop the leftovers cleanly, wait out the dying, remove a stale ``postmaster.pid``;
4. start the servers, the admin token, the processes; wait for ``/readyz``; record the
   endpoints in ``run/endpoints.json``; supervise (restart children that exit).

On a clean stop the processes, then the servers, are stopped and the endpoints file removed.
If the supervisor itself is killed, its children follow it (procs.die_with_parent), and the
next ``tieline up`` finds whatever did not (step 2).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from tieline.plumbing.redact import redact_url
from tieline.services.runtime.errors import OperationalError
from tieline.services.runtime.installation import (
    POSTGRES_SUBDIR,
    DataDirLock,
    PortNeed,
    check_ports,
    clear_stale_postmaster_pid,
    describe,
    find_leftovers,
    listening_ports,
    stop_leftovers,
)

if TYPE_CHECKING:
    from tieline.services.runtime.supervisor import Stack

__all__ = ["UpOptions", "needed_ports", "run_up"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class UpOptions:
    """What ``tieline up`` was asked for (its command-line options).

    Only this module and installation.py are imported before the port check: the servers'
    clients and the supervisor are loaded afterwards, so a taken port is reported in about the
    time Python needs to start.
    """

    data_dir: Path
    api_port: int
    api_host: str = "127.0.0.1"
    nats_url: str | None = None
    database_url: str | None = None
    nats_port: int | None = None
    postgres_port: int | None = None
    sync_always: bool = True
    api_workers: int = 1
    workers: int = 1


def needed_ports(options: UpOptions) -> list[PortNeed]:
    """The fixed ports this run will listen on, with the option that changes each. Ports the
    runtime picks itself (embedded servers without ``--nats-port`` / ``--postgres-port``) are
    free by construction."""
    needs = [PortNeed(options.api_host, options.api_port, "API", "--api-port or TIELINE_API_PORT")]
    if options.nats_url is None and options.nats_port is not None:
        needs.append(PortNeed("127.0.0.1", options.nats_port, "embedded NATS", "--nats-port"))
    if options.database_url is None and options.postgres_port is not None:
        needs.append(
            PortNeed("127.0.0.1", options.postgres_port, "embedded PostgreSQL", "--postgres-port")
        )
    return needs


def prepare(options: UpOptions, say: Say) -> None:
    """Steps 2 and 3: the ports are free (or held by leftovers), nothing of a previous run is
    left running, no stale ``postmaster.pid`` is in the way. Logging is configured only after
    the port check (structlog alone costs a fifth of a second of CPU to import)."""
    leftovers = find_leftovers(options.data_dir)
    check_ports(needed_ports(options), except_ports=listening_ports(leftovers))
    from tieline.plumbing.logging import configure_logging

    configure_logging("INFO")
    if leftovers:
        say(
            f"stopping {len(leftovers)} processes a previous run left on {options.data_dir}: "
            f"{describe(leftovers)}"
        )
        stop_leftovers(leftovers)
        check_ports(needed_ports(options))
    note = clear_stale_postmaster_pid(options.data_dir / POSTGRES_SUBDIR / "pgdata")
    if note:
        say(note)


class _Stop:
    """SIGINT/SIGTERM: abort the start (KeyboardInterrupt) until the installation is up, then
    ask the supervision loop to stop."""

    def __init__(self) -> None:
        self.up = False
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.up:
            raise KeyboardInterrupt
        self.requested = True


def run_up(options: UpOptions, *, admin_token: str | None, say: Say, banner: Say) -> None:
    """Run ``tieline up`` until stopped. ``say`` prints progress notes, ``banner`` the lines
    shown once everything is ready."""
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    lock = DataDirLock(options.data_dir)
    lock.acquire()
    try:
        prepare(options, say)
        from tieline.services.runtime.endpoints import remove_endpoints
        from tieline.services.runtime.supervisor import Stack, StackConfig

        stack = Stack(StackConfig(**vars(options)))
        try:
            token = _start(stack, admin_token)
            stop.up = True
            _announce(stack, token, banner)
            while not stop.requested:
                stack.supervise_once()
                time.sleep(0.5)
            say("stopping ...")
        finally:
            stack.stop()
            remove_endpoints(options.data_dir)
        say("stopped.")
    finally:
        lock.release()


def _start(stack: Stack, admin_token: str | None) -> str:
    """Step 4 up to the endpoints file; returns the admin token."""
    import psycopg
    from tieline.services.runtime.endpoints import write_endpoints

    stack.start_servers()
    try:
        token = stack.bootstrap_admin_token(admin_token)
    except psycopg.OperationalError as exc:  # an external --database-url that does not answer
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OperationalError(f"cannot connect to PostgreSQL: {reason}") from exc
    stack.start_processes()
    stack.wait_ready(timeout=90)
    write_endpoints(stack.config.data_dir, stack.endpoints())
    return token


def _announce(stack: Stack, token: str, banner: Say) -> None:
    data = stack.config.data_dir
    banner(f"[bold green]tieline is up[/]  API: {stack.api_url}  (docs: {stack.api_url}/docs)")
    banner(f"NATS: {redact_url(stack.nats_url)}   PostgreSQL: {redact_url(stack.database_url)}")
    banner(f"data: {data}   logs: {data / 'logs'}")
    banner(f"operator commands: tieline verify --data-dir {data}  (endpoints: run/endpoints.json)")
    banner(f"admin token for workspace 'default' (export it as TIELINE_TOKEN):\n  {token}")
    banner("Ctrl-C stops everything.")
