"""CLI commands ``tieline simulate``, ``tieline import`` and ``tieline export``.

Mounted on the main typer app with :func:`register`; runnable alone too
(``python -m tieline.services.cli.tools ...``). The API commands read ``TIELINE_TOKEN`` like every
other front-end command.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from tieline.services.cli.client import DEFAULT_API, ApiUrl, AsJson, Token, Workspace

err = Console(stderr=True)


def _parse_time(value: str, option: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date or time", param_hint=option
        ) from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# -- simulate -----------------------------------------------------------------------------


def simulate(
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same lines.")] = 1,
    people: Annotated[int, typer.Option(help="People in the network (added first).")] = 1000,
    events: Annotated[int, typer.Option(help="Lines to generate, people included.")] = 100_000,
    start: Annotated[
        str, typer.Option(help="Start of the simulated period (ISO date).")
    ] = "2020-01-01",
    years: Annotated[float, typer.Option(help="Length of the simulated period.")] = 5.0,
    out: Annotated[Path | None, typer.Option(help="JSON Lines file (default: stdout).")] = None,
) -> None:
    """Generate a realistic synthetic network as JSON Lines for `tieline import`:
    conferences and meetups, follow-ups, friendships that grow and fade, introductions, help,
    closeness ratings and one-sided sellers. Deterministic for a seed."""
    from tieline.services.tools.simulate import SimConfig, write_jsonl

    cfg = SimConfig(
        seed=seed, people=people, events=events, start=_parse_time(start, "--start"), years=years
    )
    try:
        cfg.check()
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    if cfg.end > datetime.now(UTC):
        err.print(
            "[yellow]the simulated period reaches into the future; the API refuses "
            "events that have not happened yet[/]"
        )
    t0 = time.perf_counter()
    if out is None:
        n = write_jsonl(cfg, sys.stdout)
        sys.stdout.flush()
    else:
        tmp = out.with_name(f".{out.name}.partial")
        with tmp.open("w", encoding="utf-8") as f:
            n = write_jsonl(cfg, f)
        os.replace(tmp, out)
    dt = time.perf_counter() - t0
    err.print(
        f"simulated {n} events ({people} people, {years:g} years from "
        f"{cfg.start.date()}) in {dt:.2f}s, {n / max(dt, 1e-9):,.0f} events/s"
        + (f" -> {out}" if out else "")
    )


# -- import -------------------------------------------------------------------------------

IMPORT_HELP = """Import events from FILE into the workspace, through the HTTP batch endpoint.

Formats, by extension or --format: jsonl (the batch endpoint's JSON Lines; exports import as
they are), csv, vcf (vCard: one person.added per card), ics (iCalendar: attendees become
people, each VEVENT one relationship.met with duration from DTSTART/DTEND and context from
SUMMARY).

CSV mapping: a header row; every column is an event field name; `type` is required. Empty
cells are "not set", so one file can mix types. Lists (participants) are separated by `;`;
booleans are true/false; occurred_at is ISO 8601 with a timezone, or a bare date (midnight
UTC). Example header and rows:

  type,occurred_at,person_id,display_name,participants,depth,duration_minutes,context

  person.added,2024-05-01,ada,Ada Lovelace,,,,

  relationship.met,2024-05-02T18:30:00Z,,,ada;grace,conversation,45,PyCon hallway

Every record is validated locally first; bad ones are reported by line number and nothing
from them is published. Records without event_id get a deterministic one, so importing the
same file twice publishes nothing new. --remap-ids gives the copy ids of its own (uuid5(target
workspace, old id)); an export imports into another workspace without it. Exit status: 0 all
good, 1 some records were rejected, 2 nothing could be imported (bad arguments, API
unreachable or refused)."""


def import_events(
    file: Annotated[
        Path, typer.Argument(help="The file to import.", exists=True, dir_okay=False, readable=True)
    ],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="jsonl | csv | vcf | ics (default: from the extension)."),
    ] = None,
    remap_ids: Annotated[
        bool,
        typer.Option(
            "--remap-ids",
            help="Map event ids to uuid5(target workspace, old id), so the copy's ids differ "
            "from the export's (not needed to import into another workspace: ids are unique "
            "per workspace).",
        ),
    ] = False,
    depth: Annotated[
        str, typer.Option(help="Depth of meetings from iCalendar events.")
    ] = "conversation",
    chunk: Annotated[int, typer.Option(help="Lines per batch request.")] = 500,
    concurrency: Annotated[int, typer.Option(help="Batch requests in flight.")] = 4,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate only; publish nothing.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Write the full summary (every rejected line) to this JSON file."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
    token: Token = None,
) -> None:
    from tieline.services.tools import importer

    progress = None if dry_run else importer.default_progress()
    try:
        summary = importer.import_file(
            file,
            api_url=api_url,
            workspace=workspace,
            token=token,
            fmt=fmt,
            remap_ids=remap_ids,
            depth=depth,
            chunk_lines=chunk,
            concurrency=concurrency,
            dry_run=dry_run,
            progress=progress,
        )
    except (ValueError, importer.ImportAborted) as exc:
        err.print(f"[red]import failed:[/] {exc}")
        raise typer.Exit(2) from exc
    _finish_import(summary, report, as_json)


def _finish_import(summary: Any, report: Path | None, as_json: bool) -> None:
    """Write the report, print the summary; exit code 1 when some records were rejected."""
    data = summary.as_dict()
    if report is not None:
        report.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        _print_summary(summary)
    if summary.rejected:
        raise typer.Exit(1)


def _print_summary(s: object) -> None:
    from tieline.services.tools.importer import ImportSummary

    assert isinstance(s, ImportSummary)
    out = Console()
    verb = "would publish" if s.dry_run else "published new"
    count = s.valid if s.dry_run else s.published
    out.print(
        f"[bold]{s.file}[/] ({s.format}) -> workspace [bold]{s.workspace}[/]: {s.records} records"
    )
    out.print(f"  {verb}: [green]{count}[/]")
    if not s.dry_run:
        out.print(f"  already present: {s.already_present}")
    out.print(f"  rejected: [{'red' if s.rejected else 'green'}]{len(s.rejected)}[/]")
    for line, error in sorted(s.rejected)[:50]:
        out.print(f"    line {line}: {error}", soft_wrap=True, markup=False)
    if len(s.rejected) > 50:
        out.print(f"    ... and {len(s.rejected) - 50} more (see --report)")
    if s.skipped:
        out.print(f"  skipped: {len(s.skipped)}")
        for line, reason in sorted(s.skipped)[:20]:
            out.print(f"    line {line}: {reason}", markup=False)
    if not s.dry_run and s.publish_s > 0:
        out.print(
            f"  {s.elapsed_s:.2f}s, {s.events_per_s:,.0f} events/s"
            + (f", last seq {s.last_seq}" if s.last_seq else "")
        )


# -- export -------------------------------------------------------------------------------


ExportMinSeq = Annotated[
    int | None,
    typer.Option(
        "--min-seq",
        help="Wait until the projection has applied this stream seq (e.g. the last seq an "
        "import printed).",
    ),
]


def export(
    kind: Annotated[str, typer.Argument(help="events | people | strength | timeline")],
    out: Annotated[
        Path | None, typer.Option(help="File to write (JSON Lines to stdout if left out).")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="jsonl | csv | parquet (default: from --out's extension, else jsonl)."
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="Only what occurred by then (ISO 8601; strength: not applied yet)."
        ),
    ] = None,
    min_seq: ExportMinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = "default",
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Export a workspace's events (decrypted; a forgotten person's data comes out erased),
    people, strength or timelines (admin token) as JSON Lines, CSV or Parquet. Strength is
    always the current state (--as-of is not applied to it yet). With --json the summary is
    one JSON object (on stdout with --out, else on stderr after the data)."""
    from tieline.services.tools import exporter

    cutoff = _parse_time(as_of, "--as-of").isoformat() if as_of else None
    try:
        summary = exporter.export_to(
            kind,
            out,
            api_url=api_url,
            workspace=workspace,
            token=token,
            fmt=fmt,
            as_of=cutoff,
            min_seq=min_seq,
        )
    except (ValueError, exporter.ExportFailed) as exc:
        typer.echo(f"tieline export: export failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    except Exception as exc:  # httpx errors: the API is unreachable
        import httpx

        if isinstance(exc, httpx.HTTPError):
            typer.echo(
                f"tieline export: cannot reach the tieline API at {api_url}: {exc}", err=True
            )
            raise typer.Exit(2) from exc
        raise
    _export_done(kind, summary, as_json, to_stdout=out is not None)


def _export_done(kind: str, summary: Any, as_json: bool, to_stdout: bool) -> None:
    if as_json:
        done = {
            "kind": kind,
            "rows": summary.rows,
            "format": summary.format,
            "out": str(summary.out),
            "elapsed_s": round(summary.elapsed_s, 3),
            "as_of_note": summary.as_of_note,
        }
        typer.echo(json.dumps(done), err=not to_stdout)
        return
    note = f" (as_of: {summary.as_of_note})" if summary.as_of_note else ""
    typer.echo(
        f"exported {summary.rows} {kind} rows as {summary.format} to {summary.out} "
        f"in {summary.elapsed_s:.2f}s{note}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``simulate``, ``import`` and ``export`` to ``app``."""
    app.command("simulate")(simulate)
    app.command("import", help=IMPORT_HELP)(import_events)
    app.command("export")(export)


app = typer.Typer(help="tieline data tools: simulate, import, export.", no_args_is_help=True)
register(app)

if __name__ == "__main__":
    app()
