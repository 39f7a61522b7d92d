"""Scenario 5 (first half): poison published straight onto the stream subjects.

Each poison message must be parked in the dead-letter stream with its reason and its original
bytes, and recorded in ``dead_letters``; every event after it must still be projected. Then
``tieline dlq`` (services/cli/dlq.py): ``list`` shows them, and ``replay`` gets a message with
a future schema_version projected once a worker that knows that version runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any, ClassVar

import pytest
from nats.js.errors import APIError
from tieline.events_schema.models import RelationshipMet
from tieline.events_schema.registry import EventRegistry, default_registry
from tieline.plumbing.jetstream import MAX_MSG_BYTES
from tieline.projections.partitions import partition_of
from tieline.projections.worker import Worker
from tieline.services.runtime.supervisor import worker_process

from tests.faults.conftest import Shared
from tests.faults.support import (
    REPO_ROOT,
    EventFactory,
    Oracle,
    check_projection,
    checkpoint_of,
    encode,
    live_target,
    nats_admin,
    pg_connect,
    rng_for,
    stream_last_seq,
    subject_of,
    summary,
    wait_for,
)


async def _caught_up(shared: Shared, js: Any, within: float = 60) -> int:
    last = await stream_last_seq(js, shared.settings.stream_name)

    async def done() -> bool:
        return await checkpoint_of(shared.admin) >= last

    await wait_for(done, within=within, interval=0.1, what=f"checkpoint {last}")
    return last


async def _dead_letters(shared: Shared) -> dict[int, dict[str, Any]]:
    target = await live_target(shared.admin)
    assert target is not None
    conn = await pg_connect(shared.admin, target.schema)
    try:
        cur = await conn.execute(
            "SELECT stream_seq, subject, reason, detail, dlq_seq, replayed_at FROM dead_letters"
        )
        cols = ("stream_seq", "subject", "reason", "detail", "dlq_seq", "replayed_at")
        return {r[0]: dict(zip(cols, r, strict=True)) for r in await cur.fetchall()}
    finally:
        await conn.close()


def dlq_cli(shared: Shared, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m tieline.services.cli.dlq ARGS`` as an operator (the NATS admin user)."""
    a = shared.admin
    env = {
        **os.environ,
        "TIELINE_DATABASE_URL": a.database_url,
        "TIELINE_DATABASE_SCHEMA": a.database_schema,
        "TIELINE_NATS_URL": a.nats_url,
        "TIELINE_NATS_USER": a.nats_user or "",
        "TIELINE_NATS_PASSWORD": a.nats_password or "",
        "TIELINE_STREAM_NAME": a.stream_name,
        "TIELINE_SUBJECT_PREFIX": a.subject_prefix,
        "COLUMNS": "250",
    }
    return subprocess.run(
        [sys.executable, "-m", "tieline.services.cli.dlq", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_poison_is_parked_with_reason_and_bytes_and_later_events_flow(
    shared: Shared,
) -> None:
    rng = rng_for("poison")
    ws = "poison-ws"
    p = shared.settings.subject_prefix
    factory = EventFactory(rng, ws, people=8)
    met_subject = f"{p}.ev.{ws}.relationship.met"

    def met(**changes: Any) -> dict[str, Any]:
        obj = factory.interaction()
        while obj["type"] != "relationship.met":
            obj = factory.interaction()
        obj.update(changes)
        return obj

    future = met(schema_version=99, venue="rooftop")
    missing = met()
    del missing["participants"]
    other_ws = met(workspace_id="someone-else")
    huge = met(context="x" * 1_000_000)  # ~1 MB: under the stream's 1 MiB, over 64 KiB
    poison: list[tuple[str, str, bytes]] = [
        ("invalid_json", met_subject, b"{not json"),
        (
            "unknown_type",
            f"{p}.ev.{ws}.relationship.stalked",
            encode({**met(), "type": "relationship.stalked"}),
        ),
        ("unsupported_schema_version", met_subject, encode(future)),
        ("invalid_event", met_subject, encode(missing)),
        ("workspace_mismatch", met_subject, encode(other_ws)),
        ("too_large", met_subject, encode(huge)),
    ]
    assert 64 * 1024 < len(poison[-1][2]) < MAX_MSG_BYTES
    good = [factory.interaction() for _ in range(len(poison) + 1)]
    oracle = Oracle()
    # good, poison, good, poison, ..., good: every poison has events before and after it.
    sequence: list[tuple[str, str, bytes, str | None]] = []
    for i, g in enumerate(good):
        oracle.send(g)
        sequence.append((g["event_id"], subject_of(p, g), encode(g), None))
        if i < len(poison):
            reason, subject, data = poison[i]
            sequence.append((f"poison-{reason}", subject, data, reason))

    async with nats_admin(shared.admin) as (_, js):
        before = await _caught_up(shared, js)
        seqs: dict[str, int] = {}
        for msg_id, subj, data, why in sequence:  # in order, one at a time
            ack = await js.publish(
                subj, data, headers={"Nats-Msg-Id": msg_id}, stream=shared.settings.stream_name
            )
            if why is None:
                oracle.ack(msg_id, int(ack.seq))
            else:
                seqs[why] = int(ack.seq)
        # Over the stream's max_msg_size (1 MiB): refused, and nothing is stored.
        last = await stream_last_seq(js, shared.settings.stream_name)
        with pytest.raises(APIError):
            await js.publish(
                met_subject, b"x" * (MAX_MSG_BYTES + 1), stream=shared.settings.stream_name
            )
        assert await stream_last_seq(js, shared.settings.stream_name) == last
        await _caught_up(shared, js)
        parked = await _dead_letters(shared)
        problems = []
        for reason, subject, data in poison:
            seq = seqs[reason]
            row = parked.get(seq)
            if row is None:
                problems.append(f"{reason}: seq {seq} not in dead_letters")
                continue
            if row["reason"] != reason or row["subject"] != subject or not row["detail"]:
                problems.append(f"{reason}: recorded as {row}")
            msg = await js.get_msg(f"{shared.settings.stream_name}_DLQ", seq=row["dlq_seq"])
            headers = msg.headers or {}
            if msg.data != data:
                problems.append(f"{reason}: DLQ holds other bytes than the original")
            if headers.get("Tieline-Reason") != reason:
                problems.append(f"{reason}: DLQ header reason {headers.get('Tieline-Reason')}")
            if headers.get("Tieline-Original-Seq") != str(seq):
                problems.append(f"{reason}: DLQ header seq {headers.get('Tieline-Original-Seq')}")
            if headers.get("Tieline-Original-Subject") != subject:
                problems.append(f"{reason}: DLQ header subject")
        parked_here = {s for s in parked if s > before}
        if parked_here != set(seqs.values()):
            problems.append(f"dead letters {sorted(parked_here)} != poison {sorted(seqs.values())}")
        check = await check_projection(shared.admin, oracle, workspace=ws)
        summary(
            "poison",
            sent=len(sequence),
            acked=len(oracle.acked) + len(seqs),
            in_stream=len(oracle.acked) + len(seqs),
            projected=check.projected,
            lost=check.lost + len(set(seqs.values()) - parked_here),
            double_counted=check.double_counted,
            crashes=0,
            recover_s=0,
        )
    assert not problems, problems
    assert check.lost == 0 and check.unexpected == 0 and not check.pair_mismatches, check

    listed = dlq_cli(shared, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    shown = {r["stream_seq"]: r for r in rows}
    for reason, subject, _ in poison:
        r = shown[seqs[reason]]
        assert r["reason"] == reason and r["subject"] == subject and r["replayed_at"] is None
    table = dlq_cli(shared, "list")
    assert table.returncode == 0, table.stderr
    for reason in seqs:
        assert reason in table.stdout


class RelationshipMetV2(RelationshipMet):
    """What a later release might make of relationship.met: v2 adds ``venue``."""

    version: ClassVar[int] = 2
    venue: str | None = None


def registry_knowing_v2() -> EventRegistry:
    registry = default_registry()
    registry.register(RelationshipMetV2)
    registry.register_upcaster("relationship.met", 1, lambda obj: obj)
    return registry


async def test_dlq_replay_projects_a_future_version_once_the_code_knows_it(
    shared: Shared,
) -> None:
    rng = rng_for("dlq_replay")
    ws = "replay-ws"
    p = shared.settings.subject_prefix
    factory = EventFactory(rng, ws, people=4)
    v2 = factory.interaction()
    while v2["type"] != "relationship.met":
        v2 = factory.interaction()
    v2.update(schema_version=2, venue="rooftop", participants=["p000", "p001"])
    stack = shared.stack
    async with nats_admin(shared.admin) as (_, js):
        ack = await js.publish(
            subject_of(p, v2),
            encode(v2),
            headers={"Nats-Msg-Id": v2["event_id"]},
            stream=shared.settings.stream_name,
        )
        seq = int(ack.seq)
        await _caught_up(shared, js)
        row = (await _dead_letters(shared))[seq]
        assert row["reason"] == "unsupported_schema_version" and row["replayed_at"] is None

        # "Fix the cause": the product worker of the workspace's partition stops; one that
        # knows v2 takes over that partition (with TIELINE_FAULTS_WORKERS=N the stack runs N;
        # a worker with another N would build a new generation instead).
        n = stack.config.workers
        part = partition_of(ws, n)
        role = worker_process(part)
        await asyncio.to_thread(stack.kill_role, role, signal.SIGTERM)
        mine = shared.admin.model_copy(
            update={"projection_workers": n, "projection_partition": part}
        )
        fixed = Worker(mine, registry_knowing_v2())
        await fixed.start()
        running = asyncio.create_task(fixed.run())
        try:
            dry = dlq_cli(shared, "replay", "--seq", str(seq), "--dry-run")
            assert dry.returncode == 0 and f"seq={seq}" in dry.stdout, dry.stdout + dry.stderr
            done = dlq_cli(shared, "replay", "--seq", str(seq))
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"replayed seq={seq}" in done.stdout, done.stdout
            last = await stream_last_seq(js, shared.settings.stream_name)

            async def projected() -> bool:
                return fixed.stats.last_seq >= last

            await wait_for(projected, within=30, what="the replayed event to be projected")
        finally:
            fixed.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running, 10)
            await fixed.close()
            stack.start_role(role)
        again = dlq_cli(shared, "replay", "--seq", str(seq))
        assert again.returncode == 1 and "no such dead letter" in again.stderr, again.stderr

    target = await live_target(shared.admin)
    assert target is not None
    conn = await pg_connect(shared.admin, target.schema)
    try:
        cur = await conn.execute(
            "SELECT seq, schema_version, payload->>'venue' FROM events WHERE event_id = %s",
            (v2["event_id"],),
        )
        archived = await cur.fetchone()
        cur = await conn.execute(
            "SELECT event_count, meetings FROM strength_v1 WHERE workspace_id = %s "
            "AND person_a = 'p000' AND person_b = 'p001'",
            (ws,),
        )
        strength = await cur.fetchone()
    finally:
        await conn.close()
    replayed = (await _dead_letters(shared))[seq]
    summary(
        "dlq_replay",
        sent=1,
        acked=1,
        in_stream=2,
        projected=1 if archived else 0,
        lost=0 if archived else 1,
        double_counted=max((strength or (0,))[0] - 1, 0),
        crashes=0,
        recover_s=0,
    )
    assert archived is not None and archived[0] == last and archived[1] == 2
    assert archived[2] == "rooftop"
    assert strength == (1, 1)
    assert replayed["replayed_at"] is not None
    listed = dlq_cli(shared, "list", "--json")
    assert seq not in {json.loads(x)["stream_seq"] for x in listed.stdout.splitlines() if x}
    listed_all = dlq_cli(shared, "list", "--json", "--all")
    assert seq in {json.loads(x)["stream_seq"] for x in listed_all.stdout.splitlines() if x}
    stack.wait_ready(timeout=60)
