"""The strength validation through tieline's ingest path (``--through-api``).

It starts a real stack (``services.runtime.supervisor.Stack``: embedded NATS with per-process
users and embedded PostgreSQL under a temporary directory, or the servers in
``TIELINE_BENCH_NATS_URL`` / ``TIELINE_BENCH_DATABASE_URL`` with a fresh stream, subject prefix
and schema), gives each data set a workspace and an admin token, POSTs ``person.added`` for every
participant and then every contact at its real time (``relationship.met`` for a meeting,
``relationship.followed_up`` by ``message`` for a message) to ``/events/batch``, 500 JSON Lines
a request, waits for the projection (``?min_seq=``), and reads every candidate pair's strength
as of each split's cut-off from ``GET /people/{p}/relationships?as_of=`` (every page). A sample
of pairs is read again from ``GET /relationships/{a}/{b}?as_of=``. Everything after the
cut-off is sent too: the API has to leave it out itself. Every tie's ``score`` (strength) and
``momentum`` are read, so the report gives both scores' AUCs and precision@10 from the API next
to the pure functions' on the same events (the pure momentum with each person's last contact
with anyone up to the cut-off, as the API computes it).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import NAMESPACE_URL, uuid4, uuid5

from tieline.projections.strength_model import FOLLOWED_UP, PARAMS, PairEvent, strength
from tieline.projections.strength_model_eval import build, evaluate, score_all
from tieline.projections.strength_model_momentum import MOMENTUM_PARAMS

from bench.validate_strength import momentum_of
from bench.validate_strength_data import NAMES, DataSet, Pair, load, to_events

if TYPE_CHECKING:
    import httpx
    from tieline.services.runtime.supervisor import Stack

BATCH_LINES = 500
PAIR_SAMPLE = 300


def lines_for(data: DataSet, events: Mapping[Pair, Sequence[PairEvent]], ws: str) -> list[Any]:
    """``person.added`` for everyone, then every contact in time order, as API lines."""
    first = min(c.t for c in data.contacts)
    people = [
        {
            "type": "person.added",
            "event_id": str(uuid5(NAMESPACE_URL, f"tieline-validate:{ws}:person:{p}")),
            "occurred_at": datetime.fromtimestamp(first - 60, tz=UTC).isoformat(),
            "person_id": p,
            "display_name": f"{data.name} participant {p}",
        }
        for p in data.people
    ]
    contacts = sorted((e for evs in events.values() for e in evs), key=lambda e: e.seq)
    return people + [_line(e) for e in contacts]


def _line(e: PairEvent) -> dict[str, Any]:
    d = e.detail
    base = {"event_id": e.event_id, "occurred_at": e.occurred_at.isoformat()}
    if e.type == FOLLOWED_UP:
        return {
            **base,
            "type": FOLLOWED_UP,
            "from_person": d["from"],
            "to_person": d["to"],
            "channel": "message",
            "replied": False,
        }
    return {
        **base,
        "type": e.type,
        "participants": [e.person_a, e.person_b],
        "depth": d["depth"],
        "mode": d["mode"],
        "duration_minutes": d["duration_minutes"],
    }


@contextmanager
def bench_stack(root: Path) -> Iterator[Stack]:
    """A real tieline under ``root`` (or on the ``TIELINE_BENCH_*`` servers, with fresh names);
    always stopped on the way out, its logs kept if it failed."""
    from tieline.services.runtime.supervisor import Stack, StackConfig

    tag = uuid4().hex[:10]
    env = {
        "TIELINE_DATABASE_SCHEMA": f"vs_{tag}",
        "TIELINE_STREAM_NAME": f"VS_{tag}",
        "TIELINE_SUBJECT_PREFIX": f"vs{tag}",
        "TIELINE_CONSUMER_NAME": "projections",
    }
    config = StackConfig(
        data_dir=root,
        nats_url=os.environ.get("TIELINE_BENCH_NATS_URL") or None,
        database_url=os.environ.get("TIELINE_BENCH_DATABASE_URL") or None,
        env=env,
    )
    stack = Stack(config)
    try:
        with stack:
            yield stack
    except BaseException:
        kept = Path(tempfile.mkdtemp(prefix="tieline-validate-logs-"))
        if (root / "logs").is_dir():
            shutil.copytree(root / "logs", kept, dirs_exist_ok=True)
        print(f"the stack is stopped; its process logs are kept in {kept}", file=sys.stderr)
        raise


def make_token(stack: Stack, workspace: str) -> str:
    """A new admin token for ``workspace``, stored as ``tieline token create`` stores it."""
    from tieline.services.auth import issue_token

    settings = stack.settings(database_url=stack.database_url)
    return asyncio.run(issue_token(settings, workspace, "admin", "validate-strength"))


def ingest(client: httpx.Client, ws: str, lines: Sequence[Any]) -> tuple[int, int]:
    """POST the lines, ``BATCH_LINES`` a request; (accepted, last seq). A rejected line stops
    the run: the comparison is only meaningful with every event in."""
    accepted, last_seq = 0, 0
    for start in range(0, len(lines), BATCH_LINES):
        body = "\n".join(json.dumps(line) for line in lines[start : start + BATCH_LINES])
        resp = client.post(
            f"/v1/workspaces/{ws}/events/batch",
            content=body.encode(),
            headers={"content-type": "application/x-ndjson"},
        )
        resp.raise_for_status()
        out = resp.json()
        if out["rejected"]:
            bad = next(r for r in out["results"] if r["status"] >= 300)
            raise RuntimeError(f"{ws}: {out['rejected']} lines rejected, e.g. {bad}")
        accepted += out["accepted"]
        last_seq = max(last_seq, out["last_seq"] or 0)
    return accepted, last_seq


def wait_projection(client: httpx.Client, ws: str, seq: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/v1/workspaces/{ws}/people", params={"limit": 1, "min_seq": seq})
        if resp.status_code == 200:
            return
        if resp.status_code != 503 or time.monotonic() > deadline:
            raise RuntimeError(f"projection did not reach seq {seq}: {resp.text[:300]}")


def scores_by_person(
    client: httpx.Client, ws: str, people: Sequence[str], as_of: datetime
) -> dict[Pair, tuple[float, float]]:
    """Every tie's (strength, momentum) as of ``as_of``, from each person's listing (all
    pages)."""
    out: dict[Pair, tuple[float, float]] = {}
    for person in people:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"as_of": as_of.isoformat(), "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            resp = client.get(f"/v1/workspaces/{ws}/people/{person}/relationships", params=params)
            resp.raise_for_status()
            page = resp.json()
            for tie in page["relationships"]:
                a, b = sorted((person, str(tie["other"])))
                out[(a, b)] = (float(tie["score"]), float(tie["momentum"]))
            cursor = page.get("next_cursor")
            if not cursor:
                break
    return out


def _pair_endpoint(
    client: httpx.Client, ws: str, pairs: Sequence[Pair], as_of: datetime
) -> dict[Pair, tuple[float, float]]:
    out = {}
    for a, b in pairs:
        resp = client.get(f"/v1/workspaces/{ws}/relationships/{a}/{b}", params={"as_of": as_of})
        resp.raise_for_status()
        body = resp.json()
        out[(a, b)] = (float(body["score"]), float(body["momentum"]))
    return out


def _max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def api_split(
    client: httpx.Client, ws: str, data: DataSet, events: Any, split: str, bootstrap: int
) -> dict[str, Any]:
    """One split: read the API's scores at the cut-off, evaluate them, compare with pure."""
    table = build(data.contacts, data.cutoff(split))
    as_of = table.context.cutoff
    t0 = time.perf_counter()
    api = scores_by_person(client, ws, data.people, as_of)
    t1 = time.perf_counter()
    missing = [p for p in table.pairs if p not in api]
    if missing:
        raise RuntimeError(f"{ws}: no API score for {len(missing)} pairs, e.g. {missing[0]}")
    sample = random.Random(0).sample(table.pairs, min(PAIR_SAMPLE, len(table.pairs)))
    by_pair = _pair_endpoint(client, ws, sample, as_of)
    pure = score_all(
        table,
        events,
        {
            "strength": lambda p, tr, c: strength(tr, PARAMS, c.cutoff).score,
            "momentum": momentum_of(MOMENTUM_PARAMS),
        },
    )
    scores = {
        "strength_api": [api[p][0] for p in table.pairs],
        "strength_pure": pure["strength"],
        "momentum_api": [api[p][1] for p in table.pairs],
        "momentum_pure": pure["momentum"],
    }
    return {
        "cutoff": as_of.isoformat(),
        "extra_api_ties": len(set(api) - set(table.pairs)),
        "max_abs_api_minus_pure": _max_diff(scores["strength_api"], pure["strength"]),
        "max_abs_momentum_api_minus_pure": _max_diff(scores["momentum_api"], pure["momentum"]),
        "max_abs_pair_minus_person_endpoint": max(
            (abs(x - y) for p in sample for x, y in zip(by_pair[p], api[p], strict=True)),
            default=0.0,
        ),
        "pair_endpoint_sample": len(sample),
        "read_seconds": t1 - t0,
        "evaluation": evaluate(table, scores, bootstrap),
    }


def run_api(
    data_dir: Path, bootstrap: int, timeout: float, sets: Sequence[str] = NAMES
) -> dict[str, Any]:
    """Start a stack, replay every data set at its real time, evaluate both splits, stop."""
    import httpx

    wall = time.perf_counter()
    report: dict[str, Any] = {
        "params_version": PARAMS.version,
        "momentum_params": MOMENTUM_PARAMS.to_dict(),
        "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="tieline-validate-") as tmp:
        t0 = time.perf_counter()
        with bench_stack(Path(tmp)) as stack:
            report["stack_start_seconds"] = time.perf_counter() - t0
            with httpx.Client(base_url=stack.api_url, timeout=120) as client:
                for name in sets:
                    data = load(name, data_dir)
                    events = to_events(data)
                    ws = f"vs-{name.replace('_', '-')}"
                    client.headers["Authorization"] = f"Bearer {make_token(stack, ws)}"
                    lines = lines_for(data, events, ws)
                    t1 = time.perf_counter()
                    accepted, seq = ingest(client, ws, lines)
                    wait_projection(client, ws, seq, timeout)
                    report["datasets"][name] = {
                        "lines": len(lines),
                        "accepted": accepted,
                        "ingest_seconds": time.perf_counter() - t1,
                        "splits": {
                            s: api_split(client, ws, data, events, s, bootstrap)
                            for s in ("time", "count")
                        },
                    }
        report["stack_stopped"] = True
    report["wall_seconds"] = time.perf_counter() - wall
    return report
