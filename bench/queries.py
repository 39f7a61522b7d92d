"""Query latency on a large network: p50/p95/p99 under concurrent clients over HTTP.

Building 100k people and 1M ties through the projection would take longer than the
measurement, so the read models are loaded with COPY, but from rows the product itself made:

1. a simulated history (``tieline.services.tools.simulate``) is published to the stack's stream and
   projected by the stack's own worker: real ``people_v1``, ``pair_events_v1`` and
   ``strength_v1`` rows (templates);
2. a network of N people and M ties (heavy-tailed degrees) is generated in another
   workspace; every tie is a copy of a template pair (its strength row and all its timeline
   events) with the people's ids substituted everywhere (JSON details included), fresh event
   ids and sequence numbers; everything is COPYed (binary) into the live generation's tables,
   whatever columns they have today, then ANALYZEd.

Then each endpoint is hammered by C concurrent HTTP clients for a while; the reference for each
is the same read-model query run in-process with psycopg at the same concurrency (no HTTP, auth
or access-log write): the database floor. Endpoints that answer 404 (not there yet) are skipped
and reported as such.

    python -m bench queries                 # 100k people, 1M ties
    python -m bench queries --quick         # 5k people, 50k ties
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from bench.common import (
    Row,
    Target,
    cli_main,
    finish_run,
    judge,
    make_token,
    nats_connect,
    other_activity,
    postgres,
    quiet_logging,
    running_stack,
    summarize,
    temp_root,
)
from bench.events import LogEncoder, client_events
from bench.httpload import client
from bench.issue15 import query_targets

TEMPLATE_WS = "tmpl"
WS = "big"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--people", type=int, default=100_000)
    p.add_argument("--ties", type=int, default=1_000_000)
    p.add_argument("--template-events", type=int, default=40_000)
    p.add_argument("--template-people", type=int, default=1_500)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15.0, help="per endpoint")
    p.add_argument("--profile", action="store_true", help="py-spy the api process")
    p.add_argument(
        "--api-workers", type=int, default=1, help="api processes (tieline up --api-workers)"
    )
    p.add_argument("--quick", action="store_true")


# -- the network -------------------------------------------------------------------------------


def person_ids(n: int) -> list[str]:
    width = len(str(n - 1))
    return [f"u{i:0{width}d}" for i in range(n)]


def generate_ties(
    people: int, ties: int, seed: int = 3, alpha: float = 0.7
) -> list[tuple[int, int]]:
    """``ties`` distinct unordered pairs (i < j) over ``people`` with heavy-tailed degrees
    (endpoint chosen with weight 1/(rank+1)**alpha)."""
    if ties > people * (people - 1) // 2:
        raise ValueError("more ties than pairs")
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (i + 1) ** alpha for i in range(people)))
    seen: set[int] = set()
    out: list[tuple[int, int]] = []
    while len(out) < ties:
        need = ties - len(out)
        a = rng.choices(range(people), cum_weights=cum, k=need + 16)
        b = [rng.randrange(people) for _ in range(need + 16)]
        for x, y in zip(a, b, strict=True):
            if x == y:
                continue
            i, j = (x, y) if x < y else (y, x)
            key = i * people + j
            if key in seen:
                continue
            seen.add(key)
            out.append((i, j))
            if len(out) == ties:
                break
    return out


def substitute(value: Any, mapping: dict[str, str]) -> Any:
    """``value`` with every person id in ``mapping`` replaced (strings, lists, dicts)."""
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, list):
        return [substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {substitute(k, mapping): substitute(v, mapping) for k, v in value.items()}
    return value


async def _columns(conn: Any, schema: str, table: str) -> list[tuple[str, str]]:
    cur = await conn.execute(
        "SELECT column_name, udt_name FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = %s ORDER BY ordinal_position",
        (schema, table),
    )
    return [(r["column_name"], r["udt_name"]) for r in await cur.fetchall()]


async def load_network(
    database_url: str,
    schema: str,
    people: int,
    ties: int,
    log: Callable[[str], None] = print,
    ws: str = WS,
) -> dict[str, Any]:
    """Clone the template workspace's projected rows into a big network (see module doc)."""
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb

    conn = await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    )
    try:
        cols = {
            t: await _columns(conn, schema, t)
            for t in ("people_v1", "strength_v1", "pair_events_v1")
        }
        q = sql.SQL
        cur = await conn.execute(
            q("SELECT * FROM {}.strength_v1 WHERE workspace_id = %s").format(
                sql.Identifier(schema)
            ),
            (TEMPLATE_WS,),
        )
        t_strength = await cur.fetchall()
        cur = await conn.execute(
            q("SELECT * FROM {}.pair_events_v1 WHERE workspace_id = %s ORDER BY seq").format(
                sql.Identifier(schema)
            ),
            (TEMPLATE_WS,),
        )
        t_events: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in await cur.fetchall():
            t_events[(r["person_a"], r["person_b"])].append(r)
        cur = await conn.execute(
            q("SELECT * FROM {}.people_v1 WHERE workspace_id = %s LIMIT 1").format(
                sql.Identifier(schema)
            ),
            (TEMPLATE_WS,),
        )
        t_person = await cur.fetchone()
        templates = [r for r in t_strength if t_events.get((r["person_a"], r["person_b"]))]
        if not templates or t_person is None:
            raise RuntimeError("the template projection produced no ties")
        log(
            f"[queries] {len(templates)} template ties, generating {ties} ties over "
            f"{people} people ..."
        )
        ids = person_ids(people)
        pairs = generate_ties(people, ties)
        rng = random.Random(9)
        now = datetime.now(UTC)

        def typed(udt: str, v: Any) -> Any:
            if udt in ("json", "jsonb") and v is not None:
                return Jsonb(v)
            return v

        async def copy(table: str, rows: Any) -> int:
            names = [c for c, _ in cols[table]]
            types = [u for _, u in cols[table]]
            stmt = q("COPY {}.{} ({}) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(schema),
                sql.Identifier(table),
                q(", ").join(sql.Identifier(n) for n in names),
            )
            n = 0
            async with conn.transaction(), conn.cursor() as c, c.copy(stmt) as cp:
                cp.set_types(types)
                for row in rows:
                    await cp.write_row(
                        [typed(u, row.get(k)) for k, u in zip(names, types, strict=True)]
                    )
                    n += 1
            return n

        t0 = time.perf_counter()
        n_people = await copy(
            "people_v1",
            (
                {
                    **t_person,
                    "workspace_id": ws,
                    "person_id": pid,
                    "added_event_id": uuid.uuid4(),
                    "last_seq": 1,
                }
                for pid in ids
            ),
        )
        seq = itertools.count(10_000_000)

        # Strength rows and their events must come from the same template: remember which.
        chosen: list[int] = []

        def strength_rows_tracked() -> Any:
            for i, j in pairs:
                k = rng.randrange(len(templates))
                chosen.append(k)
                t = templates[k]
                m = {t["person_a"]: ids[i], t["person_b"]: ids[j]}
                row = {c: substitute(v, m) for c, v in t.items()}
                row.update(workspace_id=ws, person_a=ids[i], person_b=ids[j], last_seq=next(seq))
                yield row

        n_ties = await copy("strength_v1", strength_rows_tracked())

        def event_rows() -> Any:
            for (i, j), k in zip(pairs, chosen, strict=True):
                t = templates[k]
                m = {t["person_a"]: ids[i], t["person_b"]: ids[j]}
                for e in t_events[(t["person_a"], t["person_b"])]:
                    row = {c: substitute(v, m) for c, v in e.items()}
                    row.update(
                        workspace_id=ws,
                        person_a=ids[i],
                        person_b=ids[j],
                        event_id=uuid.uuid4(),
                        seq=next(seq),
                        recorded_at=now,
                    )
                    yield row

        n_events = await copy("pair_events_v1", event_rows())
        load_s = time.perf_counter() - t0
        log(
            f"[queries] loaded {n_people} people, {n_ties} ties, {n_events} timeline rows in "
            f"{load_s:.0f}s; ANALYZE ..."
        )
        for t in ("people_v1", "strength_v1", "pair_events_v1"):
            await conn.execute(q("ANALYZE {}.{}").format(sql.Identifier(schema), sql.Identifier(t)))
        degree: dict[int, int] = defaultdict(int)
        for i, j in pairs:
            degree[i] += 1
            degree[j] += 1
        return {
            "ids": ids,
            "pairs": pairs,
            "degree": dict(degree),
            "people": n_people,
            "ties": n_ties,
            "timeline_rows": n_events,
            "load_s": load_s,
            "templates": len(templates),
        }
    finally:
        await conn.close()


# -- load ----------------------------------------------------------------------------------


async def hammer(
    make: Callable[[random.Random], Awaitable[int]], concurrency: int, seconds: float
) -> dict[str, Any]:
    """Call ``make(rng)`` (returns an HTTP-like status) from ``concurrency`` tasks for
    ``seconds``; latencies of the 2xx answers."""
    lat: list[float] = []
    statuses: dict[int, int] = defaultdict(int)
    deadline = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        rng = random.Random(k)
        while time.perf_counter() < deadline:
            s = time.perf_counter()
            status = await make(rng)
            statuses[status] += 1
            if 200 <= status < 300:
                lat.append(time.perf_counter() - s)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall = time.perf_counter() - t0
    return {**summarize(lat), "per_s": len(lat) / wall, "statuses": dict(statuses)}


async def run_endpoints(
    api_url: str,
    token: str,
    database_url: str,
    schema: str,
    state_schema: str,
    net: dict[str, Any],
    a: argparse.Namespace,
    ws: str = WS,
    only: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool
    from tieline.projections.queries import paths, strength, ties
    from tieline.projections.queries import timeline as q
    from tieline.projections.strength_model import PARAMS

    ids, pairs, degree = net["ids"], net["pairs"], net["degree"]
    hubs = sorted(degree, key=lambda i: -degree[i])
    with_ties = list(degree)

    def pair(rng: random.Random) -> tuple[str, str]:
        i, j = pairs[rng.randrange(len(pairs))]
        return ids[i], ids[j]

    def person(rng: random.Random) -> str:
        # Half the time one of the 1% best-connected people (the expensive case).
        if rng.random() < 0.5:
            return ids[hubs[rng.randrange(max(len(hubs) // 100, 1))]]
        return ids[with_ties[rng.randrange(len(with_ties))]]

    base = f"/v1/workspaces/{ws}"
    http_calls: dict[str, Callable[[Any, random.Random], Any]] = {
        "pair strength": lambda h, r: h.get("{}/relationships/{}/{}".format(base, *pair(r))),
        "top-50 ties": lambda h, r: h.get(
            f"{base}/people/{person(r)}/relationships", params={"limit": 50}
        ),
        "timeline": lambda h, r: h.get("{}/relationships/{}/{}/timeline".format(base, *pair(r))),
        "follow-ups due": lambda h, r: h.get(f"{base}/people/{person(r)}/follow-ups"),
        "warm paths": lambda h, r: h.get(
            f"{base}/people/{person(r)}/warm-paths", params={"target": person(r)}
        ),
    }
    raw_calls: dict[str, Callable[[Any, random.Random], Awaitable[Any]]] = {
        # What the endpoint reads for "now": the stored row (closed-form decay).
        "pair strength": lambda c, r: strength.pair_row(c, ws, *pair(r)),
        # What the endpoints run for the first page now: the index scan (ties.top_scored).
        "top-50 ties": lambda c, r: ties.top_scored(
            c, ws, person(r), datetime.now(UTC), ties.strongest_needs(51), PARAMS
        ),
        "timeline": lambda c, r: q.timeline(c, ws, *pair(r), 1000),
        "follow-ups due": lambda c, r: ties.top_scored(
            c,
            ws,
            person(r),
            datetime.now(UTC),
            ties.follow_ups_need(101, datetime.now(UTC), PARAMS),
            PARAMS,
        ),
        "warm paths": lambda c, r: paths.warm_paths(c, ws, person(r), person(r), 10),
    }
    raw_what = {
        "pair strength": "SELECT the pair's strength row (strength.pair_row)",
        "top-50 ties": "the index scan in-process (ties.top_scored, 51 strongest)",
        "timeline": "SELECT the pair's timeline (timeline.timeline)",
        "follow-ups due": "the index scan in-process (ties.top_scored, 101 due)",
        "warm paths": "paths.warm_paths in-process (its 3 SELECTs + ranking)",
    }
    out: dict[str, Any] = {}
    pool = AsyncConnectionPool(
        database_url,
        min_size=a.concurrency,
        max_size=a.concurrency,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            "options": f"-c search_path={schema},{state_schema}",
        },
        open=False,
    )
    await pool.open(wait=True)
    try:
        async with client(api_url, token, a.concurrency, timeout=30) as http:
            for name, call in http_calls.items():
                if only is not None and name not in only:
                    continue
                probe = await call(http, random.Random(0))
                if probe.status_code == 404 and (
                    probe.text.strip()
                    in ('{"detail":"Not Found"}', '{"error":"Not Found","detail":[]}')
                    or "/problems/no-such-route" in probe.text
                ):
                    out[name] = {"skipped": f"404 (no such route yet): {probe.text[:80]}"}
                    continue

                async def via_http(rng: random.Random, call: Any = call) -> int:
                    try:
                        r = await call(http, rng)
                    except Exception:
                        return 599
                    return int(r.status_code)

                async def via_sql(rng: random.Random, name: str = name) -> int:
                    async with pool.connection() as c:
                        try:
                            await raw_calls[name](c, rng)
                        except Exception:
                            return 500
                    return 200

                print(f"[queries] {name}: HTTP ...", flush=True)
                one = await hammer(via_http, 1, max(a.seconds / 3, 1.0))
                spy = None
                if a.profile and a.api_pid:
                    from bench.common import RESULTS_DIR, start_py_spy

                    ppath = RESULTS_DIR / "profiles" / f"queries-api-{name.replace(' ', '-')}.txt"
                    spy = start_py_spy(a.api_pid, a.seconds + 30, ppath)
                    await asyncio.sleep(1.0)
                h = await hammer(via_http, a.concurrency, a.seconds)
                if spy is not None:
                    from bench.common import collapsed_self_top, collapsed_top, stop_py_spy

                    stop_py_spy(spy)
                    h["profile"] = {
                        "file": str(ppath),
                        "top": collapsed_top(ppath, 40),
                        "self": collapsed_self_top(ppath, 15),
                    }
                print(f"[queries] {name}: in-process SQL ...", flush=True)
                s = await hammer(via_sql, a.concurrency, min(a.seconds, 5.0))
                out[name] = {"http": h, "http_1": one, "sql": s, "sql_what": raw_what[name]}
    finally:
        await pool.close()
    return out


async def _publish_templates(settings: Any, people: int, events: int) -> int:
    from bench.natsraw import publish_many_in_flight

    nc = await nats_connect(settings, "bench-templates")
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        enc = LogEncoder(TEMPLATE_WS, settings.subject_prefix)
        res = await publish_many_in_flight(
            js,
            settings.stream_name,
            (enc.encode(o) for o in client_events(people, events)),
            record_latency=False,
        )
        return res.last_seq
    finally:
        await nc.close()


async def _wait_projected(settings: Any, last_seq: int, timeout: float = 1800) -> tuple[str, int]:
    from tieline.plumbing import db
    from tieline.projections import generations
    from tieline.projections.queries.common import checkpoint

    deadline = time.monotonic() + timeout
    while True:
        conn = await db.connect(settings)
        try:
            live = await generations.live(conn, settings.database_schema)
            if live is not None:
                seen = await checkpoint(conn, live.consumer, live.schema_name)
                if seen >= last_seq:
                    return live.schema_name, seen
        except Exception:
            pass
        finally:
            await conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not project the templates in time")
        await asyncio.sleep(0.5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.people, args.ties = min(args.people, 5_000), min(args.ties, 50_000)
        args.template_events, args.template_people = (
            min(args.template_events, 15_000),
            min(args.template_people, 800),
        )
        args.seconds = min(args.seconds, 3.0)
    quiet_logging()
    started = time.time()
    before = other_activity()
    with temp_root() as root, postgres(root) as db_url:
        with running_stack(root / "stack", db_url, api_workers=args.api_workers) as rs:
            print(f"[queries] projecting {args.template_events} template events ...", flush=True)
            last = asyncio.run(
                _publish_templates(rs.admin, args.template_people, args.template_events)
            )
            schema, _ = asyncio.run(_wait_projected(rs.settings, last))
            net = asyncio.run(load_network(db_url, schema, args.people, args.ties))
            token = make_token(rs.settings, WS, "read")
            args.api_pid = rs.pids().get("api")
            res = asyncio.run(
                run_endpoints(
                    rs.api_url, token, db_url, schema, rs.settings.database_schema, net, args
                )
            )
    rows: list[Row] = []
    targets: list[Target] = []
    for name, r in res.items():
        if "skipped" in r:
            rows.append(Row(f"{name}", None, "ms", note=f"SKIPPED: {r['skipped']}"))
            continue
        h, s = r["http"], r["sql"]
        bad = {k: v for k, v in h["statuses"].items() if not 200 <= int(k) < 300}
        for p in ("p50", "p95", "p99"):
            rows.append(
                Row(
                    f"{name} {p} (HTTP, {args.concurrency} clients)",
                    h[f"{p}_ms"],
                    "ms",
                    f"same query in-process {p}",
                    s[f"{p}_ms"],
                    note=(
                        f"{h['per_s']:.0f} req/s; non-2xx {bad}"
                        if p == "p50"
                        else s.get("sql_what", r.get("sql_what", ""))
                        if p == "p95"
                        else f"max {h['max_ms']:.0f} ms"
                    ),
                )
            )
        one = r["http_1"]
        rows.append(
            Row(
                f"{name} p99 (HTTP, 1 client)",
                one["p99_ms"],
                "ms",
                "same query in-process p99",
                s["p99_ms"],
                note=f"p50 {one['p50_ms']:.1f} ms; unloaded latency",
            )
        )
    scale = f"{args.people:,} people / {args.ties:,} ties"
    targets += query_targets(res, args.concurrency, scale)
    wp = res.get("warm paths", {})
    if "http" in wp:
        v = wp["http"]["p95_ms"]
        v1 = wp["http_1"]["p95_ms"]
        targets.append(
            judge(
                f"warm paths p95 < 50 ms ({scale})",
                v,
                50,
                at_least=False,
                measured=f"p95 {v:.1f} ms at {args.concurrency} clients "
                f"({v1:.1f} ms with 1 client)",
                reason_if_missed="hub neighbourhoods: all ties of both people "
                "scored in Python, then a join over both sets",
            )
        )
    else:
        targets.append(
            Target(
                f"warm paths p95 < 50 ms ({scale})",
                None,
                "endpoint not available",
                wp.get("skipped", ""),
            )
        )
    extra = {
        "network": {k: v for k, v in net.items() if k not in ("ids", "pairs", "degree")},
        "max_degree": max(net["degree"].values()),
        "api_workers": args.api_workers,
        "results": res,
    }
    return finish_run(
        "queries",
        f"queries ({scale})",
        args,
        rows,
        targets,
        extra=extra,
        started=started,
        before=before,
    )


def main(argv: list[str] | None = None) -> None:
    cli_main("queries", __doc__, add_args, run, argv)


if __name__ == "__main__":
    main()
