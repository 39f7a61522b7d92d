"""What the operator commands share: ``--data-dir`` of a running ``tieline up`` (its recorded
endpoints, services/runtime/endpoints.py) and one-line reports of operational failures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from tieline.services.runtime.errors import OperationalError, ServerStartError

if TYPE_CHECKING:
    from tieline.plumbing.config import Settings

__all__ = ["DataDir", "fail", "operational_errors", "ops_settings"]

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
