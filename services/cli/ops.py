"""What the operator commands share: ``--data-dir`` of a running ``tieline up`` (its recorded
endpoints, services/runtime/endpoints.py) and one-line reports of operational failures: an
expected failure (nothing running on a data dir, a port taken) exits with code 1, a server
that does not answer (PostgreSQL or NATS down, refused, wrong password) with code 2, each as
one line naming the server, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from tieline.plumbing.redact import redact_url
from tieline.services.runtime.errors import OperationalError, ServerStartError

if TYPE_CHECKING:
    from tieline.plumbing.config import Settings

__all__ = [
    "DataDir",
    "fail",
    "operational_errors",
    "ops_settings",
    "reaching",
    "run_async",
]

T = TypeVar("T")
#: What to tell a person whose servers do not answer.
WHERE = "set TIELINE_DATABASE_URL / TIELINE_NATS_URL, or --data-dir DIR of a running `tieline up`"
#: How long the NATS check waits for the server before calling it down.
NATS_CHECK_TIMEOUT_S = 5.0

DataDir = Annotated[
    Path | None,
    typer.Option(
        help="Data dir of a running `tieline up`: use the servers and names it recorded in "
        "run/endpoints.json (connecting to its NATS as admin) instead of TIELINE_* settings."
    ),
]


def fail(command: str, exc: OperationalError) -> NoReturn:
    """Print ``exc`` as one line on stderr and exit with code 1."""
    text = exc.one_line() if isinstance(exc, ServerStartError) else str(exc)
    typer.echo(f"{command}: {text}", err=True)
    raise typer.Exit(1) from None


@contextlib.contextmanager
def operational_errors(command: str) -> Iterator[None]:
    """An expected operational failure (a port taken, nothing running on a data dir, a server
    that would not start) becomes one line on stderr and exit code 1, not a traceback."""
    try:
        yield
    except OperationalError as exc:
        fail(command, exc)


def ops_settings(data_dir: Path | None, command: str = "tieline") -> Settings:
    """Settings for an operator command: ``TIELINE_*`` from the environment; with
    ``data_dir``, the endpoints the ``tieline up`` running there recorded, which win over the
    environment (servers, schema, stream, subject prefix, consumer, NATS admin user)."""
    from tieline.plumbing.config import Settings

    settings = Settings()
    if data_dir is None:
        return settings
    from tieline.services.runtime.endpoints import read_endpoints

    try:
        return read_endpoints(data_dir).settings(settings)
    except OperationalError as exc:
        fail(command, exc)


def _reason(exc: BaseException) -> str:
    """The informative line of a driver's message (psycopg tells one line per address)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    failed = [line for line in lines if "failed:" in line]
    text = (failed or lines or [type(exc).__name__])[-1]
    return text.rsplit("failed: ", 1)[-1] if "failed: " in text else text


def unreachable(command: str, server: str, url: str, exc: BaseException) -> NoReturn:
    """One line naming the server that did not answer, exit code 2."""
    typer.echo(
        f"{command}: cannot reach {server} at {redact_url(url)}: {_reason(exc)} ({WHERE})", err=True
    )
    raise typer.Exit(2) from None


@contextlib.contextmanager
def reaching(command: str, settings: Settings) -> Iterator[None]:
    """PostgreSQL or NATS failing to answer inside the block becomes one line, exit code 2."""
    import psycopg
    import psycopg_pool
    from nats import errors as nats_errors

    try:
        yield
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        unreachable(command, "PostgreSQL", settings.database_url, exc)
    except (nats_errors.NoServersError, nats_errors.ConnectionClosedError) as exc:
        unreachable(command, "NATS", settings.nats_url, exc)


async def check_nats(command: str, settings: Settings) -> None:
    """Fail at once, in one line, when NATS does not answer: the services' own connections
    retry forever (they ride out broker restarts), which would make a command hang."""
    import nats

    seen: list[Exception] = []

    async def quiet(exc: Exception) -> None:  # the default callback logs a traceback
        seen.append(exc)

    auth: dict[str, Any] = {}
    if settings.nats_user:
        auth = {"user": settings.nats_user, "password": settings.nats_password or ""}
    servers = [u.strip() for u in settings.nats_url.split(",") if u.strip()]
    try:
        # nats-py retries a refused first connection max_reconnect_attempts times even with
        # allow_reconnect=False, and 0 means forever (nats-py 2.16): 1 is the smallest bound.
        nc = await nats.connect(
            servers,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            connect_timeout=NATS_CHECK_TIMEOUT_S,
            error_cb=quiet,
            name="tieline-cli-check",
            **auth,
        )
    except Exception as exc:  # OSError, timeouts, auth errors: all mean "cannot use NATS"
        # "no servers available" says less than the failure that led to it.
        unreachable(command, "NATS", settings.nats_url, seen[-1] if seen else exc)
    await nc.close()


def run_async(
    command: str,
    settings: Settings,
    go: Callable[[], Awaitable[T]],
    *,
    nats: bool = False,
) -> T:
    """Run ``go()`` with one-line reports of servers that do not answer; with ``nats``,
    check first that NATS answers. Log lines go to stderr, so stdout holds only the
    command's answer (``--json`` prints one document there)."""
    from tieline.plumbing.logging import configure_logging

    configure_logging(settings.log_level, settings.log_json)

    async def checked() -> T:
        if nats:
            await check_nats(command, settings)
        return await go()

    with reaching(command, settings):
        return asyncio.run(checked())


def run_db(command: str, settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    """``fn(conn)`` on a connection to tieline's state schema, one line if PostgreSQL is down."""
    from tieline.plumbing import db
    from tieline.plumbing.state import ensure_state_schema

    async def go() -> T:
        conn = await db.connect(settings)
        try:
            await ensure_state_schema(conn, settings.database_schema)
            return await fn(conn)
        finally:
            await conn.close()

    return run_async(command, settings, go)
