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
from types import FrameType

import psycopg
from tieline.services.runtime.endpoints import remove_endpoints, write_endpoints
from tieline.services.runtime.errors import OperationalError
from tieline.services.runtime.installation import (
    DataDirLock,
    PortNeed,
    check_ports,
    clear_stale_postmaster_pid,
    describe,
    find_leftovers,
    listening_ports,
    stop_leftovers,
)
from tieline.services.runtime.supervisor import Stack, StackConfig

__all__ = ["needed_ports", "run_up"]

Say = Callable[[str], None]


def needed_ports(config: StackConfig) -> list[PortNeed]:
    """The fixed ports this run will listen on, with the option that changes each. Ports the
    runtime picks itself (embedded servers without ``--nats-port`` / ``--postgres-port``) are
    free by construction."""
    needs: list[PortNeed] = []
    if config.api_port is not None:
        needs.append(
            PortNeed(config.api_host, config.api_port, "API", "--api-port or TIELINE_API_PORT")
        )
    if config.nats_url is None and config.nats_port is not None:
        needs.append(PortNeed("127.0.0.1", config.nats_port, "embedded NATS", "--nats-port"))
    if config.database_url is None and config.postgres_port is not None:
        needs.append(
            PortNeed("127.0.0.1", config.postgres_port, "embedded PostgreSQL", "--postgres-port")
        )
    return needs


def prepare(stack: Stack, say: Say) -> None:
    """Steps 2 and 3: nothing of a previous run is left running, the ports are free."""
    config = stack.config
    leftovers = find_leftovers(config.data_dir)
    check_ports(needed_ports(config), except_ports=listening_ports(leftovers))
    if leftovers:
        say(
            f"stopping {len(leftovers)} processes a previous run left on {config.data_dir}: "
            f"{describe(leftovers)}"
        )
        stop_leftovers(leftovers)
        check_ports(needed_ports(config))
    note = clear_stale_postmaster_pid(stack.postgres_dir / "pgdata")
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


def run_up(config: StackConfig, *, admin_token: str | None, say: Say, banner: Say) -> None:
    """Run ``tieline up`` until stopped. ``say`` prints progress notes, ``banner`` the lines
    shown once everything is ready."""
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    lock = DataDirLock(config.data_dir)
    lock.acquire()
    try:
        stack = Stack(config)
        prepare(stack, say)
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
            remove_endpoints(config.data_dir)
        say("stopped.")
    finally:
        lock.release()


def _start(stack: Stack, admin_token: str | None) -> str:
    """Step 4 up to the endpoints file; returns the admin token."""
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
    banner(f"NATS: {stack.nats_url}   PostgreSQL: {stack.database_url}")
    banner(f"data: {data}   logs: {data / 'logs'}")
    banner(f"operator commands: tieline verify --data-dir {data}  (endpoints: run/endpoints.json)")
    banner(f"admin token for workspace 'default' (export it as TIELINE_TOKEN):\n  {token}")
    banner("Ctrl-C stops everything.")
