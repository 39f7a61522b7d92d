"""``tieline``: one command to run the stack, terminal front-end commands that talk to the
HTTP API (so they go through exactly the validation every other front end gets), and operator
commands that talk to NATS and PostgreSQL.

The commands live in modules per area and are mounted here: events.py (one command per event
type), reads.py (one per read route), stream.py (live updates), admin.py (tokens, replay,
verify), tools.py (simulate, import, export), dlq.py, deploy.py, master_key.py. client.py is
how they talk to the API; ops.py how operator commands find and report on the servers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from tieline.services.cli import admin, calibrate, dlq, events, reads, stream
from tieline.services.cli import master_key as master_key_cli
from tieline.services.cli import sync as sync_cli
from tieline.services.cli.client import DEFAULT_DATA_DIR
from tieline.services.cli.deploy import register as register_deploy
from tieline.services.cli.ops import operational_errors
from tieline.services.cli.tools import register as register_tools

app = typer.Typer(help="tieline: an event-sourced relationship backend.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


# -- running ------------------------------------------------------------------------------


ApiWorkers = Annotated[
    int,
    typer.Option(
        envvar="TIELINE_API_WORKERS",
        min=1,
        max=64,
        help="API processes serving the one API port (SO_REUSEPORT), for reads on more than "
        "one core.",
    ),
]

ProjectionWorkers = Annotated[
    int,
    typer.Option(
        "--workers",
        envvar="TIELINE_PROJECTION_WORKERS",
        min=1,
        max=64,
        help="Partitioned projection workers (by workspace), for projection on more than one "
        "core. A count other than the live read models were built with rebuilds them "
        "blue/green first.",
    ),
]


@app.command()
def up(
    data_dir: Annotated[
        Path, typer.Option(help="Where NATS and PostgreSQL keep their data.")
    ] = DEFAULT_DATA_DIR,
    api_port: Annotated[int, typer.Option(envvar="TIELINE_API_PORT")] = 8080,
    nats_url: Annotated[
        str | None,
        typer.Option(
            envvar="TIELINE_NATS_URL", help="Use this NATS server instead of an embedded one."
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="TIELINE_DATABASE_URL", help="Use this PostgreSQL instead of an embedded one."
        ),
    ] = None,
    nats_port: Annotated[int | None, typer.Option(help="Port of the embedded NATS.")] = None,
    postgres_port: Annotated[
        int | None, typer.Option(help="Port of the embedded PostgreSQL.")
    ] = None,
    lazy_fsync: Annotated[
        bool,
        typer.Option(
            help="Let JetStream fsync lazily (faster, can lose acknowledged events on a crash)."
        ),
    ] = False,
    api_workers: ApiWorkers = 1,
    workers: ProjectionWorkers = 1,
) -> None:
    """Start NATS JetStream and PostgreSQL (embedded unless URLs are given), the services and
    the projection worker; print the API URL; Ctrl-C stops everything cleanly.

    Processes a crashed earlier run left on the data dir are stopped first; a port that is
    taken, or another `tieline up` on the same data dir, fails at once with one line."""
    from tieline.services.runtime.up import UpOptions, run_up

    options = UpOptions(
        data_dir=data_dir.expanduser().resolve(),
        nats_url=nats_url,
        database_url=database_url,
        api_port=api_port,
        nats_port=nats_port,
        postgres_port=postgres_port,
        sync_always=not lazy_fsync,
        api_workers=api_workers,
        workers=workers,
    )
    with operational_errors("tieline up"):
        try:
            run_up(
                options,
                admin_token=os.environ.get("TIELINE_ADMIN_TOKEN"),
                say=lambda text: console.print(text, soft_wrap=True, markup=False),
                banner=lambda text: console.print(text, soft_wrap=True),
            )
        except KeyboardInterrupt:
            err.print("tieline up: interrupted while starting; stopped", markup=False)
            raise typer.Exit(130) from None


@app.command()
def serve(
    role: Annotated[
        str, typer.Argument(help="api | people | interactions | worker | webhooks | sync")
    ],
) -> None:
    """Run one process (settings from TIELINE_* environment variables)."""
    from tieline.services.runtime.run import main as run_main

    run_main([role])


@app.command()
def worker() -> None:
    """Run the projection worker (same as ``tieline serve worker``)."""
    from tieline.services.runtime.run import main as run_main

    run_main(["worker"])


events.register(app)
reads.register(app)
stream.register(app)
register_tools(app)
admin.register(app)
calibrate.register(app)
app.add_typer(dlq.app, name="dlq")
app.add_typer(sync_cli.app, name="sync")
app.add_typer(master_key_cli.app, name="master-key")
register_deploy(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
