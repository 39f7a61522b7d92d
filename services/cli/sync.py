"""``tieline sync add|list|run|remove``: calendar and address-book sources (admin token), over
the API's ``/v1/workspaces/{ws}/sync-sources``. The ``sync`` process does the pulling."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from tieline.services.cli.client import (
    DEFAULT_API,
    DEFAULT_WORKSPACE,
    Api,
    ApiUrl,
    AsJson,
    Token,
    Workspace,
    emit_json,
    out,
)

app = typer.Typer(
    help="Calendar (CalDAV) and address-book (CardDAV) sync sources (admin token).",
    no_args_is_help=True,
)
console = Console()


def _status_line(src: dict[str, Any]) -> str:
    st = src["status"]
    if st["last_error"]:
        return f"error: {st['last_error']} (failures={st['failures']}, next {st['next_run_at']})"
    if st["last_success_at"]:
        run = st.get("last_run") or {}
        return (
            f"ok at {st['last_success_at']}: {st['items_seen']} objects, "
            f"{run.get('recorded', 0)} recorded, {run.get('retracted', 0)} retracted"
        )
    return f"not run yet (next {st['next_run_at']})"


@app.command("add")
def add(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="caldav (a calendar) | carddav (an address book)")],
    url: Annotated[
        str,
        typer.Argument(
            help="The calendar's or address book's URL (or the "
            "user's principal URL: every one under it)."
        ),
    ],
    user: Annotated[str, typer.Option("--user", "-u", help="User name on the server.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            envvar="TIELINE_SYNC_PASSWORD",
            help="Prompted when not given (or TIELINE_SYNC_PASSWORD).",
        ),
    ],
    owner: Annotated[
        str | None, typer.Option(help="caldav: the person whose calendar it is (required).")
    ] = None,
    window_days: Annotated[int, typer.Option(help="How far back meetings are taken.")] = 90,
    interval: Annotated[int, typer.Option(help="Seconds between pulls.")] = 900,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Add a source; the password is sealed under the master key and never shown again."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    body = {
        "kind": kind,
        "url": url,
        "username": user,
        "password": password,
        "owner": owner,
        "window_days": window_days,
        "interval_s": interval,
    }
    data = api.post("/sync-sources", {k: v for k, v in body.items() if v is not None})
    if as_json:
        emit_json(data)
    else:
        out(f"source_id={data['source_id']} (first pull within seconds: tieline sync list)")


@app.command("list")
def list_sources(
    ctx: typer.Context,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Every source of the workspace with its status."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    data = api.get("/sync-sources")
    if as_json:
        emit_json(data)
        return
    table = Table("source", "kind", "url", "user", "owner", "status")
    for s in data["sources"]:
        table.add_row(
            s["source_id"], s["kind"], s["url"], s["username"], s["owner"] or "", _status_line(s)
        )
    console.print(table)


@app.command("run")
def run(
    ctx: typer.Context,
    source_id: Annotated[str, typer.Argument(help="The source (tieline sync list).")],
    wait: Annotated[bool, typer.Option(help="Wait for the run's outcome.")] = True,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Pull a source now. Exit code 1 when the run failed (its error is printed)."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    before = api.get(f"/sync-sources/{source_id}")["status"]
    data = api.post(f"/sync-sources/{source_id}/run", None)
    deadline = time.monotonic() + 300
    while wait and time.monotonic() < deadline:
        st = data["status"]
        if (st["last_success_at"], st["last_error_at"]) != (
            before["last_success_at"],
            before["last_error_at"],
        ):
            break
        time.sleep(0.5)
        data = api.get(f"/sync-sources/{source_id}")
    if as_json:
        emit_json(data)
    else:
        out(f"{source_id}: {_status_line(data)}")
    if wait and data["status"]["last_error"]:
        raise typer.Exit(1)


@app.command("remove")
def remove(
    ctx: typer.Context,
    source_id: Annotated[str, typer.Argument(help="The source (tieline sync list).")],
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Remove a source with its password and cached objects (what it recorded stays)."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    data = api.request("DELETE", api.path(f"/sync-sources/{source_id}"))
    if as_json:
        emit_json(data)
    else:
        out(f"removed {source_id}")
