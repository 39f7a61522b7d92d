"""Deployment commands: ``tieline secrets init``, ``tieline bootstrap``, ``tieline migrate`` and
``tieline stream backup|restore`` (docs/operations.md).

Mounted on the main CLI by :func:`register`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from tieline.plumbing.redact import redact_url
from tieline.services.cli.ops import DataDir, ops_settings, run_async

if TYPE_CHECKING:
    from tieline.plumbing.config import Settings

T = TypeVar("T")

console = Console()
err = Console(stderr=True)

secrets_app = typer.Typer(
    help="Deployment secrets (an .env file for deploy/).", no_args_is_help=True
)


@secrets_app.command("init")
def secrets_init(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Where to write the file (deploy/.env for compose)."),
    ] = Path(".env"),
    force: Annotated[
        bool,
        typer.Option(
            help="Replace an existing file. Everything must then restart with the new values, "
            "and person keys wrapped with the old master key need it (docs/operations.md)."
        ),
    ] = False,
) -> None:
    """Write random values for every deployment secret (NATS passwords for each role, master
    key, PostgreSQL password, first admin token) to an env file with mode 0600."""
    from tieline.services.runtime.deploy_secrets import generate_secrets, write_env_file

    values = generate_secrets()
    try:
        write_env_file(output, values, force=force)
    except FileExistsError:
        err.print(f"[red]{output} exists[/]; not overwriting it without --force")
        raise typer.Exit(1) from None
    console.print(
        f"wrote {len(values)} secrets to {output} (mode 0600): {', '.join(values)}", soft_wrap=True
    )


def bootstrap(
    workspace: Annotated[str, typer.Option(help="Workspace of the first admin token.")] = "default",
    admin_token: Annotated[
        str | None,
        typer.Option(
            envvar="TIELINE_ADMIN_TOKEN",
            help="Register this token (tieline secrets init makes one).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to keep retrying while servers come up.")
    ] = 120.0,
) -> None:
    """Create the streams (as the NATS admin user), the state tables and the first admin token
    of WORKSPACE, then print the token. Safe to run again: nothing is duplicated."""
    from tieline.plumbing.config import Settings
    from tieline.plumbing.logging import configure_logging
    from tieline.services.runtime.bootstrap import bootstrap as run_bootstrap
    from tieline.services.runtime.run import check_settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    check_settings("bootstrap", settings)
    try:
        result = asyncio.run(
            run_bootstrap(settings, admin_token=admin_token, workspace=workspace, wait_s=wait)
        )
    except (RuntimeError, ValueError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(
        f"stream {result.stream}: {result.replicas} replica(s), last seq {result.last_seq}"
    )
    if result.token is not None:
        console.print(
            f"admin token for workspace '{workspace}' (export it as TIELINE_TOKEN):\n"
            f"  {result.token}",
            soft_wrap=True,
        )
    else:
        console.print(
            f"workspace '{workspace}' already has the bootstrap admin token "
            f"{result.existing_token_id} "
            "(only its hash is stored); make another with `tieline token create --role admin`"
        )


def migrate(
    data_dir: DataDir = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Change nothing: exit 1 when the schema is not at this release's revision.",
        ),
    ] = False,
) -> None:
    """Upgrade the state tables (tokens, person keys, access log, webhooks, rate limits) to
    this release's schema revision. Safe to run again; `tieline up`, `tieline bootstrap` and
    every process run it at start too."""
    from tieline.plumbing import db
    from tieline.plumbing.migrations.runner import Upgrade, head
    from tieline.plumbing.state import migrate as run_migrate
    from tieline.plumbing.state import state_revision

    settings = ops_settings(data_dir, "tieline migrate")
    schema = settings.database_schema

    async def go() -> Upgrade:
        conn = await db.connect(settings)
        try:
            if check:
                at = await state_revision(conn, schema)
                return Upgrade(schema, at, at)
            return await run_migrate(conn, schema)
        finally:
            await conn.close()

    done = run_async("tieline migrate", settings, go)
    if check:
        console.print(f"schema {schema}: at revision {done.after}, this release's is {head()}")
        raise typer.Exit(0 if done.after == head() else 1)
    if done.changed:
        console.print(f"schema {schema}: upgraded from revision {done.before} to {done.after}")
    else:
        console.print(f"schema {schema}: already at revision {done.after}; nothing to do")


#: ``tieline stream`` alone tails the API's live updates (services/cli/stream.py sets the
#: callback); ``backup`` and ``restore`` copy the JetStream streams (as the NATS admin user).
stream_app = typer.Typer()


def _stream_job(directory: Path, restore: bool, data_dir: Path | None) -> None:
    """Back up or restore the event and dead-letter streams (services/runtime/stream_backup.py)."""
    from tieline.services.runtime import stream_backup

    command = f"tieline stream {'restore' if restore else 'backup'}"
    settings = ops_settings(data_dir, command)
    if restore:
        _database_given(command, settings)
    streams = [settings.stream_name, f"{settings.stream_name}_DLQ"]
    if not restore:
        directory.mkdir(parents=True, exist_ok=True)

    async def go() -> list[stream_backup.StreamCopy]:
        from tieline.plumbing import db
        from tieline.plumbing.jetstream import connect_nats
        from tieline.services.write_backfill import note_taken_ids

        async with await connect_nats(settings, name="tieline-stream-backup") as nc:
            js = nc.jetstream()
            if not restore:
                return await stream_backup.backup_streams(js, streams, directory)
            # PostgreSQL is reached before anything is published: a restored log whose
            # write-side state was not reconciled could not be restored again (not empty).
            async with await db.connect(settings) as conn:
                await note_taken_ids(conn)
                copies = await stream_backup.restore_streams(js, streams, directory)
                try:
                    await _reconcile_write_state(settings, conn, js)
                except Exception as exc:
                    raise ValueError(
                        f"the streams are restored, but the write side's tables were not "
                        f"reconciled with them ({type(exc).__name__}: {exc}); run `tieline "
                        "stream reconcile` with the same settings"
                    ) from exc
            return copies

    copies = _run(command, settings, go)
    verb = "restored" if restore else "backed up"
    for c in copies:
        console.print(
            f"{verb} {c.stream}: {c.messages} message(s), last seq {c.last_seq} ({c.path})",
            soft_wrap=True,
        )


def _run(command: str, settings: Settings, go: Callable[[], Awaitable[T]]) -> T:
    """``go()`` as a stream command: servers that do not answer and JetStream's refusals are
    one line on stderr and exit code 1 (:func:`_explained`)."""
    try:
        return run_async(command, settings, lambda: _explained(go(), settings), nats=True)
    except ValueError as exc:
        err.print(f"[red]{command}: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from None


def _database_given(command: str, settings: Settings) -> None:
    """Restoring changes the write side's tables too: refuse to guess which database (the
    default URL could be a developer's own)."""
    if "database_url" not in settings.model_fields_set:
        err.print(
            f"[red]{command}: set TIELINE_DATABASE_URL (the installation's PostgreSQL, whose "
            "write-side tables are reconciled with the restored log), or give --data-dir[/]",
            soft_wrap=True,
        )
        raise typer.Exit(1)


async def _reconcile_write_state(settings: Settings, conn: Any, js: Any) -> None:
    """The write side's tables made to say what the restored log says (a state dump taken
    after the stream backup knows ids the log does not: services/write_backfill.py); ids
    taken after ``note_taken_ids`` on ``conn`` (by services running meanwhile) are left
    alone."""
    from tieline.events_schema.registry import REGISTRY
    from tieline.services.write_backfill import reconcile_with_log

    forgotten, learnt = await reconcile_with_log(conn, js, settings.stream_name, REGISTRY)
    console.print(
        f"write-side state: {forgotten} id(s) the restored log does not hold forgotten "
        f"(a re-send is accepted again), {learnt} learnt from it",
        soft_wrap=True,
    )


async def _explained(job: Awaitable[T], settings: Settings) -> T:
    """``job``, with JetStream's answers that mean "wrong stream" or "not allowed" turned into
    a ValueError that says what to do (they were tracebacks)."""
    from nats import errors as nats_errors
    from nats.js import errors as js_errors

    who = f"NATS user {settings.nats_user!r}" if settings.nats_user else "this NATS user"
    try:
        return await job
    except js_errors.NotFoundError as exc:
        raise ValueError(
            f"{exc.description or 'not found'} ({settings.stream_name} or its _DLQ on "
            f"{redact_url(settings.nats_url)}; `tieline bootstrap` creates them; check "
            "TIELINE_STREAM_NAME, or give --data-dir DIR of a running `tieline up`)"
        ) from None
    except js_errors.APIError as exc:
        raise ValueError(f"JetStream refused: {exc.description or exc}") from None
    except (nats_errors.TimeoutError, TimeoutError) as exc:
        # A user without the permission gets no answer: the server drops the request.
        reason = getattr(exc, "description", None) or "no answer from JetStream"
        raise ValueError(
            f"{reason}; {who} may not be allowed to read or write whole streams: this needs "
            "the NATS admin user (TIELINE_NATS_USER=admin and TIELINE_NATS_PASSWORD, or "
            "--data-dir DIR of a running `tieline up`)"
        ) from None


@stream_app.command("backup")
def stream_backup_cmd(
    directory: Annotated[Path, typer.Argument(help="Where to write <STREAM>.jsonl files.")],
    data_dir: DataDir = None,
) -> None:
    """Write every message of the event and dead-letter streams to DIRECTORY (needs the NATS
    admin user: TIELINE_NATS_USER=admin and its password, or --data-dir)."""
    _stream_job(directory, restore=False, data_dir=data_dir)


@stream_app.command("restore")
def stream_restore_cmd(
    directory: Annotated[Path, typer.Argument(help="A directory written by stream backup.")],
    data_dir: DataDir = None,
) -> None:
    """Publish a backup into the empty streams of a fresh bootstrap, keeping every sequence
    number; the workers then rebuild the read models from it."""
    _stream_job(directory, restore=True, data_dir=data_dir)


@stream_app.command("reconcile")
def stream_reconcile_cmd(data_dir: DataDir = None) -> None:
    """Make the write side's tables say what the event stream says (what `stream restore`
    does after publishing; run it alone when that step failed). Run it while no command is
    being written."""
    command = "tieline stream reconcile"
    settings = ops_settings(data_dir, command)
    _database_given(command, settings)

    async def go() -> None:
        from tieline.plumbing import db
        from tieline.plumbing.jetstream import connect_nats

        async with (
            await connect_nats(settings, name="tieline-stream-reconcile") as nc,
            await db.connect(settings) as conn,
        ):
            await _reconcile_write_state(settings, conn, nc.jetstream())

    _run(command, settings, go)


def register(app: typer.Typer) -> None:
    """Add ``secrets``, ``bootstrap``, ``migrate`` and ``stream`` to the main CLI."""
    app.add_typer(secrets_app, name="secrets")
    app.command("bootstrap")(bootstrap)
    app.command("migrate")(migrate)
    app.add_typer(stream_app, name="stream")
