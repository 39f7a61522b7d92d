"""``tieline dlq``: look at and replay dead letters.

The projection worker parks every message it can never apply (invalid JSON, an unknown type or
a newer schema_version than the code knows, a workspace that does not match the subject, a body
over the event size limit, or an event that keeps failing) on ``{prefix}.dlq.{consumer}`` in the
``{STREAM}_DLQ`` stream, with the original bytes and the reason in headers, and records it in
the ``dead_letters`` table of the read-model generation it was feeding.

* ``list`` reads ``dead_letters`` from PostgreSQL (TIELINE_DATABASE_URL, TIELINE_DATABASE_SCHEMA,
  or ``--data-dir`` of a running ``tieline up``; the live generation's table unless
  ``--generation``/``--schema`` say otherwise).
* ``replay`` takes the original bytes of the selected dead letters from the DLQ stream and
  publishes them again, unchanged, to their original subject on the event stream, with
  ``Nats-Msg-Id: dlq-replay:<original stream seq>``; then it sets ``replayed_at``. Fix the cause
  first (deploy the code that knows the new schema_version, ...): a message that is still
  poison is simply dead-lettered again under its new sequence.

``replay`` publishes onto the event stream and reads the DLQ stream, which the per-process NATS
users may not do: run it as an operator (``TIELINE_NATS_USER=admin`` and its password, see
services/runtime/nats_auth.py), or give ``--data-dir`` of the running ``tieline up``. Within
the stream's dedupe window, replaying the same dead letter twice is a no-op (same Nats-Msg-Id);
``--again`` is needed to select one already replayed.

Mounted on the main CLI as ``app.add_typer(dlq.app, name="dlq")``; runnable alone as
``python -m tieline.services.cli.dlq``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tieline.services.cli.ops import DataDir, ops_settings, run_async

app = typer.Typer(
    help="Dead letters: events a projection could not apply (PostgreSQL + the DLQ stream).",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

Generation = Annotated[
    int | None,
    typer.Option("--generation", "-g", help="Read-model generation (default: the live one)."),
]
Schema = Annotated[
    str | None,
    typer.Option(help="Schema holding dead_letters (overrides --generation)."),
]

_COLUMNS = "id, projection, stream_seq, subject, reason, detail, dlq_seq, created_at, replayed_at"


@dataclass(frozen=True)
class DeadLetter:
    id: int
    projection: str
    stream_seq: int
    subject: str
    reason: str
    detail: str
    dlq_seq: int | None
    created_at: datetime
    replayed_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "projection": self.projection,
            "stream_seq": self.stream_seq,
            "subject": self.subject,
            "reason": self.reason,
            "detail": self.detail,
            "dlq_seq": self.dlq_seq,
            "created_at": self.created_at.isoformat(),
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
        }


async def _schema_of(conn: Any, settings: Any, generation: int | None, schema: str | None) -> str:
    """The schema whose dead_letters table to use."""
    if schema:
        return schema
    state = settings.database_schema
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{state}.generations",))
    row = await cur.fetchone()
    if not row or not row[0]:
        if generation is not None:
            raise typer.BadParameter("this database has no read-model generations")
        return str(state)  # read models kept in the state schema (before generations)
    from tieline.projections import generations

    gen = (
        await generations.live(conn, state)
        if generation is None
        else await generations.get(conn, state, generation)
    )
    if gen is None:
        what = "live generation" if generation is None else f"generation {generation}"
        raise typer.BadParameter(f"no {what} in schema {state!r}")
    return gen.schema_name


async def _connect(settings: Any) -> Any:
    from tieline.plumbing import db

    return await db.connect(settings)  # the state schema, and tieline's timeouts and keepalives


async def _select(
    conn: Any,
    schema: str,
    *,
    seqs: list[int],
    reason: str | None,
    projection: str | None,
    include_replayed: bool,
    limit: int | None,
) -> list[DeadLetter]:
    from psycopg import errors, sql

    where = [sql.SQL("TRUE")]
    args: list[Any] = []
    if seqs:
        where.append(sql.SQL("stream_seq = ANY(%s)"))
        args.append(seqs)
    if reason:
        where.append(sql.SQL("reason = %s"))
        args.append(reason)
    if projection:
        where.append(sql.SQL("projection = %s"))
        args.append(projection)
    if not include_replayed:
        where.append(sql.SQL("replayed_at IS NULL"))
    query = sql.SQL(
        "SELECT {cols} FROM {schema}.dead_letters WHERE {where} ORDER BY stream_seq"
    ).format(
        cols=sql.SQL(_COLUMNS), schema=sql.Identifier(schema), where=sql.SQL(" AND ").join(where)
    )
    if limit is not None:
        query = query + sql.SQL(" LIMIT {}").format(sql.Literal(limit))
    try:
        cur = await conn.execute(query, args)
    except errors.UndefinedTable as exc:
        raise typer.BadParameter(
            f"no dead_letters table in schema {schema!r} (has a worker run there?)"
        ) from exc
    return [DeadLetter(*row) for row in await cur.fetchall()]


# -- list ---------------------------------------------------------------------------------


@app.command("list")
def list_(
    reason: Annotated[str | None, typer.Option(help="Only this reason, e.g. invalid_json.")] = None,
    projection: Annotated[str | None, typer.Option(help="Only this projection/consumer.")] = None,
    include_replayed: Annotated[
        bool, typer.Option("--all", help="Include dead letters already replayed.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    generation: Generation = None,
    schema: Schema = None,
    data_dir: DataDir = None,
) -> None:
    """Show dead letters: stream seq, reason, subject, detail, and whether replayed."""
    settings = ops_settings(data_dir, "tieline dlq")

    async def go() -> tuple[str, list[DeadLetter]]:
        conn = await _connect(settings)
        try:
            where = await _schema_of(conn, settings, generation, schema)
            rows = await _select(
                conn,
                where,
                seqs=[],
                reason=reason,
                projection=projection,
                include_replayed=include_replayed,
                limit=limit,
            )
            return where, rows
        finally:
            await conn.close()

    where, rows = run_async("tieline dlq list", settings, go)
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r.as_json()))
        return
    _show(where, rows)


def _show(where: str, rows: list[DeadLetter]) -> None:
    table = Table(
        "seq",
        "reason",
        "subject",
        "detail",
        "projection",
        "dlq_seq",
        "parked",
        "replayed",
        title=f"dead letters in {where} ({len(rows)})",
    )
    for r in rows:
        table.add_row(
            str(r.stream_seq),
            r.reason,
            r.subject,
            escape(r.detail[:80]),  # parked bytes are data, not rich markup
            r.projection,
            str(r.dlq_seq or ""),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.replayed_at.strftime("%Y-%m-%d %H:%M:%S") if r.replayed_at else "",
        )
    console.print(table)


# -- replay -------------------------------------------------------------------------------


@app.command()
def replay(
    seq: Annotated[
        list[int] | None, typer.Option("--seq", help="Original stream seq (repeatable).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Every dead letter with this reason.")] = None,
    projection: Annotated[str | None, typer.Option(help="Only this projection/consumer.")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every dead letter not replayed yet.")
    ] = False,
    again: Annotated[
        bool, typer.Option(help="Also those already replayed (a new Nats-Msg-Id is not made).")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Only show what would be replayed.")] = False,
    generation: Generation = None,
    schema: Schema = None,
    data_dir: DataDir = None,
) -> None:
    """Publish the original bytes of dead letters again to their original subject, with
    Nats-Msg-Id dlq-replay:<seq>, and mark them replayed. Select with --seq, --reason or --all.
    With --data-dir of a running `tieline up` it connects as that installation's NATS admin."""
    seqs = list(seq or [])
    if not (seqs or reason or everything):
        raise typer.BadParameter("say which: --seq N (repeatable), --reason R, or --all")
    settings = ops_settings(data_dir, "tieline dlq")

    async def go() -> int:
        return await _replay(settings, seqs, reason, projection, again, dry_run, generation, schema)

    failures = run_async("tieline dlq replay", settings, go, nats=not dry_run)
    if failures:
        raise typer.Exit(1)


async def _republish(js: Any, settings: Any, r: DeadLetter) -> bool:
    """Publish one dead letter's original bytes to its original subject; False (with the
    reason on stderr) when its DLQ message is missing or belongs to another sequence."""
    from nats.js.errors import NotFoundError

    dlq_stream = f"{settings.stream_name}_DLQ"
    if r.dlq_seq is None:
        err.print(f"[red]seq {r.stream_seq}: no DLQ message recorded; cannot replay[/]")
        return False
    try:
        msg = await js.get_msg(dlq_stream, seq=r.dlq_seq)
    except NotFoundError:
        err.print(f"[red]seq {r.stream_seq}: DLQ message {r.dlq_seq} is gone from {dlq_stream}[/]")
        return False
    headers = msg.headers or {}
    original = headers.get("Tieline-Original-Seq")
    if original is not None and original != str(r.stream_seq):
        err.print(
            f"[red]seq {r.stream_seq}: DLQ message {r.dlq_seq} belongs to seq "
            f"{original}; not replaying[/]"
        )
        return False
    subject = headers.get("Tieline-Original-Subject") or r.subject
    ack = await js.publish(
        subject,
        msg.data or b"",
        headers={"Nats-Msg-Id": f"dlq-replay:{r.stream_seq}"},
        stream=settings.stream_name,
        timeout=10,
    )
    dup = " (duplicate: already replayed within the dedupe window)" if ack.duplicate else ""
    console.print(
        f"replayed seq={r.stream_seq} reason={r.reason} -> {subject} as seq={ack.seq}{dup}"
    )
    return True


async def _replay(
    settings: Any,
    seqs: list[int],
    reason: str | None,
    projection: str | None,
    again: bool,
    dry_run: bool,
    generation: int | None,
    schema: str | None,
) -> int:
    from psycopg import sql
    from tieline.plumbing.jetstream import connect_nats

    conn = await _connect(settings)
    nc = None
    failures = 0
    try:
        where = await _schema_of(conn, settings, generation, schema)
        rows = await _select(
            conn,
            where,
            seqs=seqs,
            reason=reason,
            projection=projection,
            include_replayed=again,
            limit=None,
        )
        missing = sorted(set(seqs) - {r.stream_seq for r in rows})
        for s in missing:
            err.print(
                f"[yellow]seq {s}: no such dead letter"
                f"{'' if again else ' not yet replayed'} in {where}[/]"
            )
        if not rows:
            console.print("nothing to replay")
            return len(missing)
        if dry_run:
            for r in rows:
                console.print(f"would replay seq={r.stream_seq} reason={r.reason} -> {r.subject}")
            return 0
        nc = await connect_nats(settings, name="tieline-dlq-replay")
        mark = sql.SQL("UPDATE {}.dead_letters SET replayed_at = now() WHERE id = %s").format(
            sql.Identifier(where)
        )
        for r in rows:
            if await _republish(nc.jetstream(), settings, r):
                await conn.execute(mark, (r.id,))
            else:
                failures += 1
        return failures + len(missing)
    finally:
        if nc is not None:
            await nc.close()
        await conn.close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
