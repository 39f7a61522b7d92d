"""Operator commands that talk to PostgreSQL and NATS directly rather than to the API:
``token create|list|revoke``, ``replay``, ``verify``, ``what-if``, ``generations``.

Settings come from ``TIELINE_*`` (``TIELINE_DATABASE_URL``, ...) or from ``--data-dir`` of a
running ``tieline up``; a server that does not answer is one line and exit code 2
(services/cli/ops.py). ``--json`` prints one JSON document instead of tables.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from tieline.services.cli.client import DEFAULT_WORKSPACE, AsJson, emit_json, out
from tieline.services.cli.ops import DataDir, ops_settings, run_async, run_db

console = Console()

token_app = typer.Typer(
    help="API tokens (talks to PostgreSQL: TIELINE_DATABASE_URL, or --data-dir of tieline up).",
    no_args_is_help=True,
)


def _cells(row: tuple[Any, ...]) -> list[str]:
    return [str(x) if x is not None else "" for x in row]


@token_app.command("create")
def token_create(
    workspace: Annotated[
        str, typer.Option("--workspace", "-w", envvar="TIELINE_WORKSPACE", help="Workspace id.")
    ] = DEFAULT_WORKSPACE,
    role: Annotated[str, typer.Option(help="read | write | admin")] = "write",
    name: Annotated[str, typer.Option(help="Shown as recorded_by.")] = "cli",
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Create a token bound to one workspace; prints it once."""
    from tieline.services.auth import create_token

    settings = ops_settings(data_dir, "tieline token create")
    token = run_db(
        "tieline token create", settings, lambda conn: create_token(conn, workspace, role, name)
    )
    if as_json:
        emit_json(
            {
                "token": token,
                "token_id": token.split("_")[1],
                "workspace_id": workspace,
                "role": role,
                "name": name,
            }
        )
    else:
        out(token)


TOKEN_COLUMNS = ("token_id", "workspace_id", "role", "name", "created_at", "revoked_at")


@token_app.command("list")
def token_list(
    workspace: Annotated[str | None, typer.Option("--workspace", "-w")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """List tokens (never their secrets)."""
    from tieline.services.auth import list_tokens

    settings = ops_settings(data_dir, "tieline token list")
    rows = run_db("tieline token list", settings, lambda conn: list_tokens(conn, workspace))
    if as_json:
        emit_json({"tokens": [dict(zip(TOKEN_COLUMNS, r, strict=True)) for r in rows]})
        return
    table = Table("token_id", "workspace", "role", "name", "created", "revoked")
    for r in rows:
        table.add_row(*_cells(r))
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str, data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Revoke a token by its id (the part after ``tl_``)."""
    from tieline.services.auth import revoke_token

    settings = ops_settings(data_dir, "tieline token revoke")
    done = run_db("tieline token revoke", settings, lambda conn: revoke_token(conn, token_id))
    if as_json:
        emit_json({"token_id": token_id, "revoked": bool(done)})
    else:
        out("revoked" if done else "no such active token")
    if not done:
        raise typer.Exit(1)


# -- replay and friends -------------------------------------------------------------------


def _progress_reporter(quiet: bool = False) -> tuple[Any, Any]:
    """A rich progress bar on a terminal, structured log lines otherwise, nothing when
    ``quiet`` (``--json`` keeps stdout for the one document)."""
    if quiet:
        return None, None
    if not console.is_terminal:
        return None, _log_reporter()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} ev/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task("replay", total=1, rate="-")

    def update(done: int, total: int, applied: int, elapsed: float) -> None:
        rate = f"{applied / elapsed:,.0f}" if elapsed else "-"
        bar.update(task, completed=done, total=max(total, 1), rate=rate)

    return bar, update


def _log_reporter() -> Any:
    import structlog

    log = structlog.get_logger("tieline.replay")
    last = [0.0]

    def report(done: int, total: int, applied: int, elapsed: float) -> None:
        if elapsed - last[0] >= 2.0 or done >= total:
            last[0] = elapsed
            rate = round(applied / elapsed) if elapsed else 0
            log.info("replay.progress", seq=done, of=total, applied=applied, events_per_s=rate)

    return report


def _run(command: str, settings: Any, bar: Any, go: Any) -> Any:
    """Run ``go`` (which uses NATS and PostgreSQL) with the progress bar (if any) shown."""
    if bar is None:
        return run_async(command, settings, go, nats=True)
    with bar:
        return run_async(command, settings, go, nats=True)


def _until(until: str | None, into: str | None) -> datetime | None:
    if until is None:
        return None
    if into is None:
        raise typer.BadParameter("--until needs --into NAME")
    try:
        when = datetime.fromisoformat(until)
    except ValueError:
        raise typer.BadParameter(f"--until {until!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise typer.BadParameter("--until needs a timezone, e.g. 2025-06-30T00:00:00Z")
    return when


def replay_cmd(
    until: Annotated[
        str | None,
        typer.Option(
            help="Materialise a snapshot as of this ISO time (events that occurred later are "
            "left out) into a scratch generation instead of rebuilding live."
        ),
    ] = None,
    into: Annotated[str | None, typer.Option(help="Schema name for the --until snapshot.")] = None,
    keep_old: Annotated[bool, typer.Option(help="Keep the retired generation's tables.")] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Rebuild the read models from the start of the stream into a new generation while the
    live one keeps serving, then switch atomically (or, with --until, build a snapshot)."""
    from tieline.projections import replay as rp

    when = _until(until, into)
    settings = ops_settings(data_dir, "tieline replay")
    bar, report = _progress_reporter(as_json)

    async def go() -> dict[str, Any]:
        snapshot = when is not None
        result, worker = await rp.replay(
            settings,
            status="scratch" if snapshot else "building",
            until=when,
            schema_name=into,
            note=f"as of {until}" if snapshot else "tieline replay",
            progress=report,
        )
        await worker.close()
        dropped = await rp.retire_old(settings) if result.switched and not keep_old else []
        g = result.generation
        return {
            "generation": g.gen,
            "schema": g.schema_name,
            "applied": result.applied,
            "last_seq": result.last_seq,
            "seconds": round(result.seconds, 3),
            "events_per_s": round(result.events_per_s),
            "switched": result.switched,
            "dropped": dropped,
        }

    r = _run("tieline replay", settings, bar, go)
    if as_json:
        emit_json(r)
        return
    out(
        f"generation {r['generation']} ({r['schema']}): {r['applied']} events up to seq "
        f"{r['last_seq']} in {r['seconds']:.1f}s ({r['events_per_s']:,} events/s)"
        + ("; now live" if r["switched"] else "")
    )
    if r["dropped"]:
        out(f"dropped retired generation(s) {r['dropped']}")


def verify(
    keep: Annotated[bool, typer.Option(help="Keep the scratch copy.")] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Replay into a scratch copy and compare it row by row with the live read models."""
    from tieline.projections import replay as rp

    settings = ops_settings(data_dir, "tieline verify")
    bar, report = _progress_reporter(as_json)

    async def go() -> tuple[int, list[Any]]:
        return await rp.verify(settings, keep=keep, progress=report)

    seen, diffs = _run("tieline verify", settings, bar, go)
    clean = all(d.clean for d in diffs)
    if as_json:
        tables = [{**dataclasses.asdict(d), "clean": d.clean} for d in diffs]
        emit_json({"seq": seen, "clean": clean, "tables": tables})
    else:
        _show_diffs(seen, diffs)
    if not clean:
        raise typer.Exit(1)


def _show_diffs(seen: int, diffs: list[Any]) -> None:
    out(f"compared at stream seq {seen}")
    table = Table("table", "live rows", "replay rows", "only live", "only replay", "verdict")
    for d in diffs:
        verdict = "[green]same[/]" if d.clean else "[red]DIFFERENT[/]"
        row = (d.live_rows, d.replay_rows, d.only_live, d.only_replay)
        table.add_row(d.table, *(str(x) for x in row), verdict)
    console.print(table)
    for d in diffs:
        for sample in d.samples:
            console.print(f"  {d.table}: {sample}", markup=False)


def what_if_cmd(
    params_file: Annotated[
        Path,
        typer.Argument(
            help="JSON with the strength parameters to change (the rest keep their values)."
        ),
    ],
    keep: Annotated[bool, typer.Option(help="Keep the scratch generation.")] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Replay with an alternative strength parameter set into a scratch schema and compare
    with the live read models (tier moves, biggest changes, rank changes). Nothing live is
    touched."""
    from tieline.projections import replay as rp
    from tieline.projections.strength_model import Params

    try:
        params = Params.from_dict(json.loads(params_file.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise typer.BadParameter(f"{params_file}: {exc}", param_hint="PARAMS_FILE") from None
    settings = ops_settings(data_dir, "tieline what-if")
    bar, report = _progress_reporter(as_json)

    async def go() -> Any:
        return await rp.what_if(settings, params, keep=keep, progress=report)

    result = _run("tieline what-if", settings, bar, go)
    if as_json:
        emit_json(dataclasses.asdict(result))
        return
    out(f"{result.pairs} pairs compared; mean |score change| {result.mean_abs_delta}")
    tiers = list(result.tier_moves)
    table = Table("live \\ what-if", *tiers, title="tier moves")
    for t in tiers:
        table.add_row(t, *(str(result.tier_moves[t][u]) for u in tiers))
    console.print(table)
    emit_json({"biggest_changes": result.biggest, "rank_changes": result.rank_changes})


GENERATION_COLUMNS = (
    "gen",
    "schema_name",
    "version",
    "status",
    "consumer",
    "note",
    "created_at",
    "live_at",
)


def generations_cmd(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """List read-model generations (live, building, retired, scratch)."""
    from tieline.projections import generations as gens

    settings = ops_settings(data_dir, "tieline generations")
    schema = settings.database_schema

    async def rows(conn: Any) -> list[Any]:
        await gens.ensure_table(conn, schema)
        cur = await conn.execute(
            f"SELECT {', '.join(GENERATION_COLUMNS)} FROM generations ORDER BY gen"
        )
        return [
            tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in await cur.fetchall()
        ]

    found = run_db("tieline generations", settings, rows)
    if as_json:
        emit_json({"generations": [dict(zip(GENERATION_COLUMNS, r, strict=True)) for r in found]})
        return
    table = Table("gen", "schema", "version", "status", "consumer", "note", "created", "live")
    for r in found:
        table.add_row(*_cells(r))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the operator commands to ``app``."""
    app.add_typer(token_app, name="token")
    app.command("replay")(replay_cmd)
    app.command("verify")(verify)
    app.command("what-if")(what_if_cmd)
    app.command("generations")(generations_cmd)
