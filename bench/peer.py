"""The same work on two peers against the same PostgreSQL server, next to tieline in the same
run: the Python ``eventsourcing`` library (9.x, PostgreSQL persistence) and Emmett 0.42
(TypeScript on Node, ``bench/emmett.py``; skipped with a line saying so without node/npm).

Workload: append N two-person meeting events, then project them into a per-pair read model
(meeting count and total duration), catching up from zero.

eventsourcing, written the way its documentation shows:
  * a ``Meeting`` aggregate created per meeting; appended one per ``save()`` (one transaction
    each), and in batches (``save(*500 meetings)``, one transaction per batch);
  * a ``Projection`` with a ``PostgresTrackingRecorder`` view that upserts the pair's counters
    and records the tracking position in one transaction per event (``ProjectionRunner``).

Emmett (``bench/peer_emmett/peer.mjs``, its own database on the same server): one stream per
meeting, ``appendToStream`` awaited one at a time for the first ``--one-by-one`` meetings and
with 16 in flight for the rest; then two async projectors (``postgreSQLRawSQLProjection`` with
an upsert per event, ``pongoMultiStreamProjection`` with a document per pair), each caught up
from zero by its own ``postgreSQLEventStoreConsumer`` with the default pulling.

tieline, on the same PostgreSQL (its log on JetStream, fsync before ack): the same meetings
through the HTTP API (single-event requests with 64 concurrent clients, and the batch endpoint),
then the projection worker catching up from zero (its read models are richer: the archive, the
pair timeline and the strength model).

Needs ``pip install 'eventsourcing[postgres]==9.*'`` (optional ``bench`` extra).

    python -m bench peer                 # 20k meetings
    python -m bench peer --quick         # 3k meetings
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import uuid
from typing import Any
from urllib.parse import urlparse

from bench.common import (
    Row,
    Target,
    cli_main,
    finish_run,
    judge,
    make_token,
    other_activity,
    postgres,
    quiet_logging,
    rate,
    running_stack,
    temp_root,
)
from bench.events import meeting_events
from bench.httpload import client, closed_loop

WS = "peer"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meetings", type=int, default=20_000)
    p.add_argument(
        "--one-by-one",
        type=int,
        default=3_000,
        help="meetings appended one per transaction/request (each side)",
    )
    p.add_argument("--people", type=int, default=1_000)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-emmett", action="store_true", help="leave the Emmett peer out")
    p.add_argument("--emmett-in-flight", type=int, default=16)


# -- eventsourcing ---------------------------------------------------------------------------


def _peer_classes() -> dict[str, Any]:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event
    from eventsourcing.persistence import Tracking
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.projection import Projection
    from eventsourcing.utils import get_topic
    from psycopg.sql import SQL, Identifier

    class Meeting(Aggregate):
        @event("Recorded")
        def __init__(self, a: str, b: str, minutes: int) -> None:
            self.a, self.b, self.minutes = a, b, minutes

    class Meetings(Application[Any]):
        pass

    class PairView(PostgresTrackingRecorder):
        def __init__(self, datastore: Any, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            self.view_table = self.tracking_table_name.replace("_tracking", "") + "_pairs"
            self.sql_create_statements.append(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0}.{1} (a text, b text, meetings int NOT NULL, "
                    "minutes bigint NOT NULL, PRIMARY KEY (a, b))"
                ).format(Identifier(self.datastore.schema), Identifier(self.view_table))
            )
            self.upsert = SQL(
                "INSERT INTO {0}.{1} VALUES (%s, %s, 1, %s) ON CONFLICT (a, b) DO UPDATE SET "
                "meetings = {0}.{1}.meetings + 1, minutes = {0}.{1}.minutes + EXCLUDED.minutes"
            ).format(Identifier(self.datastore.schema), Identifier(self.view_table))

        def add(self, a: str, b: str, minutes: int, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as curs:
                self._insert_tracking(curs, tracking)
                curs.execute(self.upsert, (a, b, minutes), prepare=True)

    class PairProjection(Projection[PairView]):
        name = "pairview"
        topics = (get_topic(Meeting.Recorded),)  # type: ignore[attr-defined]

        def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            # (The docs use @singledispatchmethod; a plain isinstance does the same here.)
            if isinstance(domain_event, Meeting.Recorded):  # type: ignore[attr-defined]
                a, b = sorted((domain_event.a, domain_event.b))
                self.view.add(a, b, domain_event.minutes, tracking)
            else:
                self.view.insert_tracking(tracking)

    return {
        "Meeting": Meeting,
        "Meetings": Meetings,
        "PairView": PairView,
        "PairProjection": PairProjection,
    }


def peer_env(database_url: str, schema: str) -> dict[str, str]:
    u = urlparse(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": (u.path or "/postgres").lstrip("/"),
        "POSTGRES_HOST": u.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(u.port or 5432),
        "POSTGRES_USER": u.username or "postgres",
        "POSTGRES_PASSWORD": u.password or "x",
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": "5",
    }


def run_peer(database_url: str, meetings: list[dict[str, Any]], one_by_one: int) -> dict[str, Any]:
    import psycopg
    from eventsourcing.projection import ProjectionRunner

    c = _peer_classes()
    schema = f"es_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    env = peer_env(database_url, schema)
    app = c["Meetings"](env=env)
    Meeting = c["Meeting"]

    def args(m: dict[str, Any]) -> tuple[str, str, int]:
        return m["participants"][0], m["participants"][1], m["duration_minutes"]

    one = meetings[:one_by_one]
    rest = meetings[one_by_one:]
    t0 = time.perf_counter()
    for m in one:
        app.save(Meeting(*args(m)))
    one_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(rest), 500):
        app.save(*(Meeting(*args(m)) for m in rest[i : i + 500]))
    batch_s = time.perf_counter() - t0
    last_id = app.recorder.max_notification_id()
    app.close()
    t0 = time.perf_counter()
    with ProjectionRunner(
        application_class=c["Meetings"],
        projection_class=c["PairProjection"],
        view_class=c["PairView"],
        env=env,
    ) as runner:
        view = runner.projection.view
        deadline = time.monotonic() + 3600
        while (view.max_tracking_id(runner.app.name) or 0) < last_id:
            if time.monotonic() > deadline:
                raise TimeoutError("eventsourcing projection did not catch up")
            time.sleep(0.02)
        catch_s = time.perf_counter() - t0
        with psycopg.connect(database_url) as conn:
            total = conn.execute(
                f"SELECT sum(meetings) FROM {schema}.{view.view_table}"
            ).fetchone()[0]
    return {
        "one": (len(one), one_s),
        "batch": (len(rest), batch_s),
        "catch_up": (int(last_id or 0), catch_s),
        "projected_meetings": int(total or 0),
    }


# -- tieline ---------------------------------------------------------------------------------


def run_tieline(
    root: Any,
    database_url: str,
    people: list[dict[str, Any]],
    meetings: list[dict[str, Any]],
    one_by_one: int,
) -> dict[str, Any]:
    from bench.projection import drain_with_worker

    dumps = json.dumps
    with running_stack(root / "stack", database_url, roles=("api", "people", "interactions")) as rs:
        token = make_token(rs.settings, WS, "write")

        async def load() -> tuple[Any, Any]:
            async with client(rs.api_url, token, 64) as http:
                for i in range(0, len(people), 500):
                    chunk = "\n".join(dumps(p) for p in people[i : i + 500]).encode()
                    r = await http.post(
                        f"/v1/workspaces/{WS}/events/batch",
                        content=chunk,
                        headers={"content-type": "application/x-ndjson"},
                    )
                    r.raise_for_status()
                single = await closed_loop(
                    http,
                    f"/v1/workspaces/{WS}/events",
                    [dumps(m).encode() for m in meetings[:one_by_one]],
                    concurrency=64,
                )
                rest = meetings[one_by_one:]
                bodies = [
                    "\n".join(dumps(m) for m in rest[i : i + 500]).encode()
                    for i in range(0, len(rest), 500)
                ]
                batch = await closed_loop(
                    http,
                    f"/v1/workspaces/{WS}/events/batch",
                    bodies,
                    concurrency=4,
                    content_type="application/x-ndjson",
                    events_per_body=lambda r: int(r.json()["accepted"]),
                )
                return single, batch

        single, batch = asyncio.run(load())

        async def last_seq() -> int:
            from bench.common import nats_connect

            nc = await nats_connect(rs.admin, "bench-peer-info")
            try:
                info = await nc.jetstream().stream_info(rs.settings.stream_name)
                return int(info.state.last_seq)
            finally:
                await nc.close()

        last = asyncio.run(last_seq())
        stats, secs, cpu = asyncio.run(drain_with_worker(rs.admin, last))
    return {
        "single": single.summary(),
        "batch": batch.summary(),
        "catch_up": (stats.applied, secs),
        "catch_up_cpu_s": cpu,
        "dead_lettered": stats.dead_lettered,
    }


def run_emmett_peer(
    args: argparse.Namespace, db_url: str, meetings: list[dict[str, Any]]
) -> dict[str, Any]:
    """Emmett's results, or ``{"skipped": reason}`` without node/npm (never a made-up row)."""
    from bench import emmett

    reason = "--no-emmett" if args.no_emmett else emmett.unavailable()
    if reason:
        print(f"[peer] Emmett: SKIPPED ({reason})", flush=True)
        return {"skipped": reason}
    print(f"[peer] Emmett: {len(meetings)} meetings ...", flush=True)
    return emmett.run_emmett(
        db_url, emmett.as_pairs(meetings), args.one_by_one, in_flight=args.emmett_in_flight
    )


def emmett_rows(tl: dict[str, Any], em: dict[str, Any]) -> tuple[list[Row], list[Target]]:
    """Rows and targets of tieline beside Emmett (the targets are unmeasured when skipped)."""
    single, t_catch = tl["single"]["events_per_s"], rate(*tl["catch_up"])
    if "skipped" in em:
        names = (
            "single-event writes >= 1x Emmett's 16-in-flight appends",
            "live projection >= 8x Emmett's fastest projector",
        )
        return [], [Target(n, None, f"not measured: {em['skipped']}") for n in names]
    seq, conc = rate(*em["sequential"]), rate(*em["concurrent"])
    catch = {k: rate(v["handled"], v["seconds"]) for k, v in em["projections"].items()}
    fastest = max(catch, key=lambda k: catch[k])
    n_in = em["in_flight"]
    rows = [
        Row(
            "append one at a time: tieline single-event HTTP (64 concurrent)",
            single,
            "events/s",
            f"Emmett: appendToStream, {n_in} in flight",
            conc,
            note=f"Emmett {em['concurrent'][0]} appends in {em['concurrent'][1]:.1f}s",
        ),
        Row(
            "append one at a time: tieline single-event HTTP (64 concurrent)",
            single,
            "events/s",
            "Emmett: appendToStream awaited one at a time",
            seq,
            note=f"Emmett {em['sequential'][0]} appends in {em['sequential'][1]:.1f}s",
        ),
    ]
    for kind, label in (("raw_sql", "postgreSQLRawSQLProjection"), ("pongo", "pongo multi-stream")):
        p = em["projections"][kind]
        rows.append(
            Row(
                "projection catch-up from zero: tieline worker",
                t_catch,
                "events/s",
                f"Emmett projector: {label}",
                catch[kind],
                note=f"Emmett handled {p['handled']} of {em['appended']} appended in "
                f"{p['seconds']:.1f}s; read model counts {p['projected']['meetings']} meetings",
            )
        )
    r_w, r_p = single / conc if conc else None, t_catch / catch[fastest] if catch[fastest] else None
    targets = [
        judge("single-event writes >= 1x Emmett's 16-in-flight appends", r_w, 1, at_least=True,
              measured=f"{r_w or 0:.2f}x ({single:,.0f} vs {conc:,.0f} events/s)",
              reason_if_missed="tieline's per-request CPU (api, interactions, nats, PostgreSQL)"),
        judge("live projection >= 8x Emmett's fastest projector", r_p, 8, at_least=True,
              measured=f"{r_p or 0:.1f}x ({t_catch:,.0f} vs {catch[fastest]:,.0f} events/s, "
              f"{fastest})", reason_if_missed="tieline's worker CPU per event"),
    ]  # fmt: skip
    return rows, targets


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.meetings, args.one_by_one, args.people = (
            min(args.meetings, 3_000),
            min(args.one_by_one, 500),
            min(args.people, 300),
        )
    quiet_logging()
    started = time.time()
    before = other_activity()
    width = len(str(args.people - 1))
    ids = [f"m{i:0{width}d}" for i in range(args.people)]
    people = [{"type": "person.added", "person_id": p, "display_name": f"Person {p}"} for p in ids]
    meetings = list(itertools.islice(meeting_events(ids, args.meetings), args.meetings))
    with temp_root() as root, postgres(root) as db_url:
        print(f"[peer] eventsourcing: {args.meetings} meetings ...", flush=True)
        peer = run_peer(db_url, meetings, args.one_by_one)
        em = run_emmett_peer(args, db_url, meetings)
        print(f"[peer] tieline: {args.meetings} meetings ...", flush=True)
        tl = run_tieline(root, db_url, people, meetings, args.one_by_one)
    p_one, p_batch, p_catch = (rate(*peer[k]) for k in ("one", "batch", "catch_up"))
    t_catch = rate(*tl["catch_up"])
    rows = [
        Row(
            "append one at a time: tieline single-event HTTP (64 concurrent)",
            tl["single"]["events_per_s"],
            "events/s",
            "eventsourcing: one save() per meeting",
            p_one,
            note=f"{tl['single']['events']} events; tieline p99 {tl['single']['p99_ms']:.0f} ms",
        ),
        Row(
            "append batched: tieline batch HTTP (500/request, 4 concurrent)",
            tl["batch"]["events_per_s"],
            "events/s",
            "eventsourcing: save(*500 meetings)",
            p_batch,
            note=f"{tl['batch']['events']} events",
        ),
        Row(
            "projection catch-up from zero: tieline worker",
            t_catch,
            "events/s",
            "eventsourcing ProjectionRunner",
            p_catch,
            note=f"tieline {tl['catch_up'][0]} events in {tl['catch_up'][1]:.1f}s (incl. "
            f"{args.people} person.added); eventsourcing {peer['catch_up'][0]} in "
            f"{peer['catch_up'][1]:.1f}s, {peer['projected_meetings']} meetings counted",
        ),
    ]
    r = t_catch / p_catch if p_catch else None
    targets = [
        judge(
            "live projection >= 10x the peer's projection catch-up",
            r,
            10,
            at_least=True,
            measured=f"{r or 0:.1f}x ({t_catch:,.0f} vs {p_catch:,.0f} events/s)",
            reason_if_missed="tieline's worker CPU per event (see projection profile)",
        )
    ]
    rows_e, targets_e = emmett_rows(tl, em)
    return finish_run(
        "peer",
        "peer: the same meetings on eventsourcing 9 and Emmett 0.42 (same PostgreSQL)",
        args,
        rows + rows_e,
        targets + targets_e,
        extra={"eventsourcing": peer, "emmett": em, "tieline": tl},
        started=started,
        before=before,
    )


def main(argv: list[str] | None = None) -> None:
    cli_main("peer", __doc__, add_args, run, argv)


if __name__ == "__main__":
    main()
