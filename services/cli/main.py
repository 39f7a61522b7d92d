"""``tieline``: one command to run the stack, and terminal front-end commands that talk to
the HTTP API (so they go through exactly the validation every other front end gets)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from tieline.services.cli.ops import DataDir, operational_errors, ops_settings

app = typer.Typer(help="tieline: an event-sourced relationship backend.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

ApiUrl = Annotated[str, typer.Option(envvar="TIELINE_API_URL", help="Base URL of the HTTP API.")]
Workspace = Annotated[
    str, typer.Option("--workspace", "-w", envvar="TIELINE_WORKSPACE", help="Workspace id.")
]
DEFAULT_API = "http://127.0.0.1:8080"
DEFAULT_DATA_DIR = Path(os.environ.get("TIELINE_DATA_DIR", Path.home() / ".local/share/tieline"))


# -- running ------------------------------------------------------------------------------


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


def _run_db(fn: Any, data_dir: Path | None = None) -> Any:
    """Run ``fn(conn)`` against tieline's schema (TIELINE_DATABASE_URL / _SCHEMA, or the
    database of the `tieline up` running on ``data_dir``)."""
    import asyncio

    from tieline.plumbing import db
    from tieline.plumbing.state import ensure_state_schema

    settings = ops_settings(data_dir)

    async def go() -> Any:
        conn = await db.connect(settings)
        try:
            await ensure_state_schema(conn, settings.database_schema)
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


token_app = typer.Typer(
    help="API tokens (talks to PostgreSQL: TIELINE_DATABASE_URL, or --data-dir of tieline up)."
)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    workspace: Workspace = "default",
    role: Annotated[str, typer.Option(help="read | write | admin")] = "write",
    name: Annotated[str, typer.Option(help="Shown as recorded_by.")] = "cli",
    data_dir: DataDir = None,
) -> None:
    """Create a token bound to one workspace; prints it once."""
    from tieline.services.auth import create_token

    token = _run_db(lambda conn: create_token(conn, workspace, role, name), data_dir)
    console.print(token, soft_wrap=True)


@token_app.command("list")
def token_list(
    workspace: Annotated[str | None, typer.Option("--workspace", "-w")] = None,
    data_dir: DataDir = None,
) -> None:
    """List tokens (never their secrets)."""
    from tieline.services.auth import list_tokens

    rows = _run_db(lambda conn: list_tokens(conn, workspace), data_dir)
    table = Table("token_id", "workspace", "role", "name", "created", "revoked")
    for r in rows:
        table.add_row(*(str(x) if x is not None else "" for x in r))
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str, data_dir: DataDir = None) -> None:
    """Revoke a token by its id (the part after ``tl_``)."""
    from tieline.services.auth import revoke_token

    done = _run_db(lambda conn: revoke_token(conn, token_id), data_dir)
    console.print("revoked" if done else "no such active token")
    if not done:
        raise typer.Exit(1)


@app.command()
def forget(person: str, api_url: ApiUrl = DEFAULT_API, workspace: Workspace = "default") -> None:
    """Erase a person (admin token): destroy their key, purge read models, print the report."""
    data = _call("POST", f"{api_url}/v1/workspaces/{workspace}/people/{person}/forget")
    console.print_json(json.dumps(data, default=str))
    if not data.get("clean"):
        raise typer.Exit(1)


def _progress_reporter() -> tuple[Any, Any]:
    """A rich progress bar on a terminal, structured log lines otherwise."""
    import structlog
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not console.is_terminal:
        log = structlog.get_logger("tieline.replay")
        last = [0.0]

        def report(done: int, total: int, applied: int, elapsed: float) -> None:
            if elapsed - last[0] >= 2.0 or done >= total:
                last[0] = elapsed
                log.info(
                    "replay.progress",
                    seq=done,
                    of=total,
                    applied=applied,
                    events_per_s=round(applied / elapsed) if elapsed else 0,
                )

        return None, report
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
        bar.update(
            task,
            completed=done,
            total=max(total, 1),
            rate=f"{applied / elapsed:,.0f}" if elapsed else "-",
        )

    return bar, update


def _run(bar: Any, go: Any) -> Any:
    """Run the coroutine function ``go`` with the progress bar (if any) shown."""
    import asyncio

    if bar is None:
        return asyncio.run(go())
    with bar:
        return asyncio.run(go())


@app.command("replay")
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
) -> None:
    """Rebuild the read models from the start of the stream into a new generation while the
    live one keeps serving, then switch atomically (or, with --until, build a snapshot)."""
    from datetime import datetime

    from tieline.projections import replay as rp

    settings = ops_settings(data_dir)
    bar, report = _progress_reporter()

    async def go() -> None:
        snapshot = until is not None
        if snapshot and into is None:
            raise typer.BadParameter("--until needs --into NAME")
        when = datetime.fromisoformat(until) if until else None
        if when is not None and when.tzinfo is None:
            raise typer.BadParameter("--until needs a timezone, e.g. 2025-06-30T00:00:00Z")
        result, worker = await rp.replay(
            settings,
            status="scratch" if snapshot else "building",
            until=when,
            schema_name=into,
            note=f"as of {until}" if snapshot else "tieline replay",
            progress=report,
        )
        await worker.close()
        console.print(
            f"generation {result.generation.gen} ({result.generation.schema_name}): "
            f"{result.applied} events up to seq {result.last_seq} in "
            f"{result.seconds:.1f}s ({result.events_per_s:,.0f} events/s)"
            + ("; now live" if result.switched else "")
        )
        if result.switched and not keep_old:
            dropped = await rp.retire_old(settings)
            if dropped:
                console.print(f"dropped retired generation(s) {dropped}")

    _run(bar, go)


@app.command()
def verify(
    keep: Annotated[bool, typer.Option(help="Keep the scratch copy.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Replay into a scratch copy and compare it row by row with the live read models."""

    from tieline.projections import replay as rp

    settings = ops_settings(data_dir)
    bar, report = _progress_reporter()

    async def go() -> list[Any]:
        seen, diffs = await rp.verify(settings, keep=keep, progress=report)
        console.print(f"compared at stream seq {seen}")
        return diffs

    diffs = _run(bar, go)
    table = Table("table", "live rows", "replay rows", "only live", "only replay", "verdict")
    for d in diffs:
        table.add_row(
            d.table,
            str(d.live_rows),
            str(d.replay_rows),
            str(d.only_live),
            str(d.only_replay),
            "[green]same[/]" if d.clean else "[red]DIFFERENT[/]",
        )
    console.print(table)
    for d in diffs:
        for sample in d.samples:
            console.print(f"  {d.table}: {sample}")
    if not all(d.clean for d in diffs):
        raise typer.Exit(1)


@app.command("what-if")
def what_if_cmd(
    params_file: Annotated[
        Path,
        typer.Argument(
            help="JSON with the strength parameters to change (the rest keep their values)."
        ),
    ],
    keep: Annotated[bool, typer.Option(help="Keep the scratch generation.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Replay with an alternative strength parameter set into a scratch schema and compare
    with the live read models (tier moves, biggest changes, rank changes). Nothing live is
    touched."""

    from tieline.projections import replay as rp
    from tieline.projections.strength_model import Params

    params = Params.from_dict(json.loads(params_file.read_text()))
    settings = ops_settings(data_dir)
    bar, report = _progress_reporter()

    async def go() -> Any:
        return await rp.what_if(settings, params, keep=keep, progress=report)

    result = _run(bar, go)
    console.print(f"{result.pairs} pairs compared; mean |score change| {result.mean_abs_delta}")
    tiers = list(result.tier_moves)
    table = Table("live \\ what-if", *tiers, title="tier moves")
    for t in tiers:
        table.add_row(t, *(str(result.tier_moves[t][u]) for u in tiers))
    console.print(table)
    _show({"biggest_changes": result.biggest, "rank_changes": result.rank_changes})


@app.command("generations")
def generations_cmd(data_dir: DataDir = None) -> None:
    """List read-model generations (live, building, retired, scratch)."""
    from tieline.projections import generations as gens

    schema = ops_settings(data_dir).database_schema

    async def rows(conn: Any) -> list[Any]:
        await gens.ensure_table(conn, schema)
        cur = await conn.execute(
            "SELECT gen, schema_name, version, status, consumer, note, "
            "created_at, live_at FROM generations ORDER BY gen"
        )
        return list(await cur.fetchall())

    table = Table("gen", "schema", "version", "status", "consumer", "note", "created", "live")
    for r in _run_db(rows, data_dir):
        table.add_row(*(str(x) if x is not None else "" for x in r))
    console.print(table)


@app.command()
def serve(
    role: Annotated[str, typer.Argument(help="api | people | interactions | worker | webhooks")],
) -> None:
    """Run one process (settings from TIELINE_* environment variables)."""
    from tieline.services.runtime.run import main as run_main

    run_main([role])


@app.command()
def worker() -> None:
    """Run the projection worker (same as ``tieline serve worker``)."""
    from tieline.services.runtime.run import main as run_main

    run_main(["worker"])


# -- talking to the API -------------------------------------------------------------------


def _call(method: str, url: str, **kwargs: Any) -> Any:
    import httpx  # here, not at the top: `tieline up` must reach its port check fast

    token = os.environ.get("TIELINE_TOKEN")
    if token:
        kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": f"Bearer {token}"}
    try:
        resp = httpx.request(method, url, timeout=120, **kwargs)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach tieline at {url}: {exc}[/]")
        raise typer.Exit(2) from exc
    data = resp.json() if resp.content else {}
    if resp.status_code >= 400:
        err.print(f"[red]{resp.status_code}[/] {data.get('detail') or data.get('error')}")
        raise typer.Exit(1)
    return data


def _record(api_url: str, ws: str, event: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = _call("POST", f"{api_url}/v1/workspaces/{ws}/events", json=event)
    dup = " (already recorded)" if data.get("duplicate") else ""
    console.print(f"recorded {event['type']} event_id={data['event_id']} seq={data['seq']}{dup}")
    return data


def _opt(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


@app.command("add-person")
def add_person(
    person_id: str,
    name: Annotated[str, typer.Option("--name")],
    email: str | None = None,
    organization: str | None = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Add a person to the workspace's directory."""
    body = _opt(person_id=person_id, display_name=name, email=email, organization=organization)
    data = _call("POST", f"{api_url}/v1/workspaces/{workspace}/people", json=body)
    console.print(f"added {data['person_id']} seq={data['seq']}")


@app.command()
def met(
    people: Annotated[list[str], typer.Argument(help="Two or more person ids.")],
    depth: str = "conversation",
    minutes: int = 0,
    remote: bool = False,
    context: str | None = None,
    where: str | None = None,
    initiated_by: str | None = None,
    at: str | None = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Record that people met (depth: card_exchange | brief_chat | conversation |
    deep_conversation | meal_or_activity)."""
    _record(
        api_url,
        workspace,
        _opt(
            type="relationship.met",
            participants=people,
            depth=depth,
            duration_minutes=minutes,
            mode="remote" if remote else "in_person",
            context=context,
            where=where,
            initiated_by=initiated_by,
            occurred_at=at,
        ),
    )


@app.command("follow-up")
def follow_up(
    from_person: str,
    to_person: str,
    channel: str = "email",
    replied: bool = False,
    note: str | None = None,
    at: str | None = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Record that FROM followed up with TO."""
    _record(
        api_url,
        workspace,
        _opt(
            type="relationship.followed_up",
            from_person=from_person,
            to_person=to_person,
            channel=channel,
            replied=replied,
            note=note,
            occurred_at=at,
        ),
    )


@app.command()
def introduce(
    introducer: str,
    person_a: str,
    person_b: str,
    reason: str | None = None,
    at: str | None = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Record that INTRODUCER introduced A and B."""
    _record(
        api_url,
        workspace,
        _opt(
            type="relationship.introduced",
            introducer=introducer,
            person_a=person_a,
            person_b=person_b,
            reason=reason,
            occurred_at=at,
        ),
    )


@app.command()
def retract(
    event_id: str,
    reason: str | None = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Retract an event recorded by mistake (events are never edited or deleted)."""
    _record(
        api_url, workspace, _opt(type="event.retracted", retracted_event_id=event_id, reason=reason)
    )


AsOfOpt = Annotated[str | None, typer.Option("--as-of", help="ISO time with timezone.")]


def _params(as_of: str | None, **more: Any) -> dict[str, Any]:
    return {k: v for k, v in {"as_of": as_of, **more}.items() if v is not None}


def _show(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


@app.command()
def strength(
    person_a: str,
    person_b: str,
    as_of: AsOfOpt = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the strength of the tie between A and B (now, or --as-of a date)."""
    data = _call(
        "GET",
        f"{api_url}/v1/workspaces/{workspace}/relationships/{person_a}/{person_b}",
        params=_params(as_of),
    )
    if as_json:
        _show(data)
        return
    table = Table(title=f"{data['person_a']} - {data['person_b']}")
    for key in (
        "score",
        "tier",
        "event_count",
        "meetings",
        "follow_ups",
        "introductions",
        "helps",
        "last_contact_at",
        "can_vouch",
    ):
        table.add_row(key, str(data.get(key)))
    console.print(table)


@app.command()
def explain(
    person_a: str,
    person_b: str,
    as_of: AsOfOpt = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Why the tie between A and B is as strong as it is."""
    _show(
        _call(
            "GET",
            f"{api_url}/v1/workspaces/{workspace}/relationships/{person_a}/{person_b}/explain",
            params=_params(as_of),
        )
    )


@app.command()
def timeline(
    person_a: str,
    person_b: str,
    as_of: AsOfOpt = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Show how the relationship between A and B developed, event by event."""
    data = _call(
        "GET",
        f"{api_url}/v1/workspaces/{workspace}/relationships/{person_a}/{person_b}/timeline",
        params=_params(as_of),
    )
    table = Table("occurred_at", "type", "recorded_by", "contribution", "strength after", "why")
    for e in data["events"]:
        table.add_row(
            str(e["occurred_at"]),
            e["type"],
            str(e["recorded_by"]),
            f"{e['contribution']:.1f}",
            f"{e['strength_after']:.1f}",
            e["reason"],
        )
    console.print(table)


@app.command()
def ties(
    person: str,
    limit: int = 20,
    as_of: AsOfOpt = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """A person's strongest ties, with Dunbar-like tiers."""
    data = _call(
        "GET",
        f"{api_url}/v1/workspaces/{workspace}/people/{person}/relationships",
        params=_params(as_of, limit=limit),
    )
    table = Table("other", "score", "tier", "events", "last contact")
    for r in data["relationships"]:
        table.add_row(
            r["other"],
            f"{r['score']:.1f}",
            r["tier"],
            str(r["event_count"]),
            str(r["last_contact_at"]),
        )
    console.print(table)


@app.command("follow-ups")
def follow_ups(
    person: str,
    as_of: AsOfOpt = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Ties of PERSON that are due a follow-up, most strength at stake first."""
    data = _call(
        "GET",
        f"{api_url}/v1/workspaces/{workspace}/people/{person}/follow-ups",
        params=_params(as_of),
    )
    table = Table("other", "score", "tier at last contact", "days since", "cadence", "at stake")
    for d in data["due"]:
        table.add_row(
            d["other"],
            f"{d['score']:.1f}",
            str(d["tier_at_last_contact"]),
            f"{d['days_since_contact']:.0f}",
            str(d["cadence_days"]),
            f"{d['at_stake']:.1f}",
        )
    console.print(table)


@app.command("give-and-take")
def give_and_take(
    person: str, api_url: ApiUrl = DEFAULT_API, workspace: Workspace = "default"
) -> None:
    """Who initiates and who helps whom, per tie; one-sided ties first."""
    _show(_call("GET", f"{api_url}/v1/workspaces/{workspace}/people/{person}/give-and-take"))


@app.command("can-introduce")
def can_introduce(
    introducer: str,
    person_a: str,
    person_b: str,
    as_of: AsOfOpt = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Whether INTRODUCER knows both A and B well enough to introduce them, with reasons."""
    _show(
        _call(
            "GET",
            f"{api_url}/v1/workspaces/{workspace}/introductions/check",
            params=_params(as_of, introducer=introducer, a=person_a, b=person_b),
        )
    )


@app.command("warm-paths")
def warm_paths(
    person: str,
    target: Annotated[str, typer.Option("--target")],
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
) -> None:
    """Who can introduce PERSON to --target (at most two intermediaries)."""
    data = _call(
        "GET",
        f"{api_url}/v1/workspaces/{workspace}/people/{person}/warm-paths",
        params={"target": target},
    )
    for p in data["paths"]:
        console.print(" -> ".join(p["path"]) + f"   (weakest link {p['weakest_link']:.1f})")
    if not data["paths"]:
        console.print("no warm path found")


from tieline.services.cli.tools import register as register_tools  # noqa: E402  (needs `app`)

register_tools(app)

from tieline.services.cli import dlq  # noqa: E402

app.add_typer(dlq.app, name="dlq")

from tieline.services.cli.deploy import register as register_deploy  # noqa: E402

register_deploy(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
