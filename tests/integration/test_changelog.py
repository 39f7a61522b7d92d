"""The change log behind live updates and webhooks, written by the real projection worker on
real JetStream and PostgreSQL: one row per applied event and per changed pair, at positions
that only grow; erasure announced without personal data; old events left out with the trim
point recorded; the follow-up scan finds exactly the ties that fell due in its window."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections import replay
from tieline.projections.changelog import SCAN_SUB, cadence_bands, scan_follow_ups, trim
from tieline.projections.schema import ensure_schema
from tieline.projections.strength_model import tier_for
from tieline.projections.worker import Worker

from tests.integration.conftest import Log, first_generation, make_event, scalar


async def project(settings: Settings, until_seq: int) -> None:
    worker = Worker(settings)
    await worker.start()
    try:
        async with asyncio.timeout(20):
            while worker.stats.last_seq < until_seq:
                await worker.run_once()
    finally:
        await worker.close()


async def changes(pg: AsyncConnection[Any], ws: str) -> list[tuple[int, int, str, dict[str, Any]]]:
    cur = await pg.execute(
        "SELECT seq, sub, kind, data FROM changes_v1 WHERE workspace_id = %s ORDER BY seq, sub",
        (ws,),
    )
    return [(s, sub, k, d) for s, sub, k, d in await cur.fetchall()]


def met(ws: str, a: str, b: str, **fields: Any) -> Any:
    return make_event(
        ws, type="relationship.met", participants=[a, b], depth="conversation", **fields
    )


async def test_batch_changes_are_logged_per_event_and_per_pair(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = "w-log"
    seqs = [
        await log.publish(make_event(ws, type="person.added", person_id=p, display_name=f"N {p}"))
        for p in ("a", "b", "c")
    ]
    first = met(ws, "a", "b")
    second = met(ws, "b", "a")
    seqs += [
        await log.publish(first),
        await log.publish(second),
        await log.publish(met(ws, "b", "c")),
    ]
    await project(settings, seqs[-1])
    rows = await changes(pg, ws)
    recorded = [r for r in rows if r[2] == "event.recorded"]
    assert [r[0] for r in recorded] == seqs
    assert recorded[3][3] == {
        "type": "relationship.met",
        "event_id": str(first.event_id),
        "seq": seqs[3],
        "people": ["a", "b"],
    }
    changed = {tuple(r[3]["pair"]): r for r in rows if r[2] == "relationship.changed"}
    assert set(changed) == {("a", "b"), ("b", "c")}
    ab = changed[("a", "b")]
    # Both meetings of a-b came in one batch (published before the worker started): one row,
    # at the later meeting's position, counting both.
    assert ab[0] == seqs[4] and ab[3]["events"] == 2
    assert ab[3]["cause"] == {
        "event_id": str(second.event_id),
        "type": "relationship.met",
        "seq": seqs[4],
    }
    assert ab[3]["score_before"] is None and ab[3]["score_after"] > 0
    assert ab[3]["tier_before"] is None and ab[3]["tier_changed"] is True
    positions = [(r[0], r[1]) for r in rows]
    assert positions == sorted(set(positions))
    for seq in {r[0] for r in rows}:
        assert sorted(sub for s, sub, _, _ in rows if s == seq) == list(
            range(sum(1 for r in rows if r[0] == seq))
        )


async def test_retraction_and_erasure_are_logged_without_personal_data(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = "w-forget"
    secret = "Zelda Secretname"
    await log.publish(make_event(ws, type="person.added", person_id="z", display_name=secret))
    await log.publish(make_event(ws, type="person.added", person_id="y", display_name="Y"))
    keep = met(ws, "y", "z")
    drop = met(ws, "y", "z", context="private matter")
    await log.publish(keep)
    last = await log.publish(drop)
    await project(settings, last)
    stored = await scalar(pg, "SELECT score FROM strength_v1 WHERE workspace_id = %s", ws)
    retract = make_event(ws, type="event.retracted", retracted_event_id=str(drop.event_id))
    r_seq = await log.publish(retract)
    f_seq = await log.publish(make_event(ws, type="person.forgotten", person_id="z"))
    await project(settings, f_seq)
    rows = await changes(pg, ws)
    [undo] = [r for r in rows if r[2] == "relationship.changed" and r[0] == r_seq]
    assert undo[3]["cause"]["type"] == "event.retracted"
    assert undo[3]["score_before"] == round(stored, 4) > undo[3]["score_after"]
    [gone] = [r for r in rows if r[2] == "person.forgotten"]
    assert gone[0] == f_seq and gone[3] == {"person_id": "z", "seq": f_seq, "people": ["z"]}
    text = json.dumps([r[3] for r in rows])
    assert secret not in text and "private matter" not in text and "enc:" not in text


async def test_an_adoption_and_its_retraction_each_cause_the_rows_of_the_pairs_they_move(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = "w-calib"
    month_ago = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    # Two meetings a month apart: the stored score (at the latest event) depends on how much
    # of the first one decayed, so on the half-lives the adoption changes.
    for days in (60, 30):
        at = (datetime.now(UTC) - timedelta(days=days)).isoformat()
        for other in ("b", "c"):
            seq = await log.publish(met(ws, "a", other, occurred_at=at))
    await project(settings, seq)  # the pairs exist before the adoption's batch
    adopt = make_event(
        ws,
        type="workspace.model_calibrated",
        strength={"version": "x", "values": {"fast_half_life_days": 7.0, "slow_share": 0.1}},
        holdout_share=0.25,
        validated_at=month_ago,
    )
    a_seq = await log.publish(adopt)
    await project(settings, a_seq)
    undo = make_event(ws, type="event.retracted", retracted_event_id=str(adopt.event_id))
    r_seq = await log.publish(undo)
    await project(settings, r_seq)
    rows = [r for r in await changes(pg, ws) if r[2] == "relationship.changed"]
    for seq, cause in ((a_seq, adopt), (r_seq, undo)):
        moved = {tuple(r[3]["pair"]): r[3] for r in rows if r[0] == seq}
        assert set(moved) == {("a", "b"), ("a", "c")}
        for data in moved.values():
            assert data["cause"] == {
                "event_id": str(cause.event_id),
                "type": cause.type,
                "seq": seq,
            }
            assert data["score_before"] != data["score_after"]
    # The retraction restores the scores the adoption replaced.
    before = {tuple(r[3]["pair"]): r[3]["score_before"] for r in rows if r[0] == a_seq}
    after = {tuple(r[3]["pair"]): r[3]["score_after"] for r in rows if r[0] == r_seq}
    assert before == after


async def test_events_recorded_before_the_horizon_get_no_rows_and_move_the_trim_point(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = "w-old"
    old = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    s1 = await log.publish(met(ws, "a", "b", recorded_at=old, occurred_at=old))
    s2 = await log.publish(met(ws, "a", "c"))
    await project(settings, s2)
    rows = await changes(pg, ws)
    assert {r[0] for r in rows} == {s2}
    assert await scalar(pg, "SELECT trimmed_seq FROM live_state") == s1


async def test_follow_up_scan_reports_ties_that_fell_due_in_its_window_once(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = "w-due"
    probe = await log.publish(met(ws, "p", "q"))
    await project(settings, probe)
    score = await scalar(pg, "SELECT score_at_last_contact FROM strength_v1 WHERE person_a = 'p'")
    tier = tier_for(score)
    [days] = [b[3] for b in cadence_bands() if b[0] == tier]
    now = datetime.now(UTC)

    def contact(ago_days: float) -> str:
        return (now - timedelta(days=ago_days)).isoformat()

    # Due 30 minutes ago (inside the window), 3 hours ago (before it), in an hour (not yet).
    await log.publish(met(ws, "a", "due", occurred_at=contact(days + 30 / 1440)))
    await log.publish(met(ws, "a", "old", occurred_at=contact(days + 3 / 24)))
    last = await log.publish(met(ws, "a", "later", occurred_at=contact(days - 1 / 24)))
    await project(settings, last)
    _, consumer = first_generation(settings)
    assert await scan_follow_ups(pg, consumer) == []  # the first scan only marks its start
    await pg.execute("UPDATE live_state SET scanned_until = now() - interval '1 hour'")
    found = await scan_follow_ups(pg, consumer)
    assert [(seq, sub, w, kind) for seq, sub, w, kind, _ in found] == [
        (last, SCAN_SUB, ws, "follow_up.due")
    ]
    data = json.loads(found[0][4])
    assert data["pair"] == ["a", "due"] and data["tier_at_last_contact"] == tier
    assert data["cadence_days"] == days
    assert await scan_follow_ups(pg, consumer) == []  # nothing is reported twice
    rows = await changes(pg, ws)
    assert rows[-1][:3] == (last, SCAN_SUB, "follow_up.due")

    # A day without events: the webhooks process trims the change log through the checkpoint,
    # the scan's rows included, and a later scan (here over the same window again) writes at
    # the same seq. Its rows go above the trimmed ones: webhooks dedupe deliveries on the
    # position, and live clients that saw it would skip the new rows.
    await trim(pg, last)
    assert await changes(pg, ws) == []
    await pg.execute("UPDATE live_state SET scanned_until = now() - interval '1 hour'")
    again = await scan_follow_ups(pg, consumer)
    assert [(seq, sub) for seq, sub, *_ in again] == [(last, SCAN_SUB + 1)]

    # A rebuild switched in carries the scan on: the same window, positions above the old.
    old_state = await pg.execute("SELECT scanned_until, scan_seq, scan_sub FROM live_state")
    before = await old_state.fetchone()
    result, worker = await replay.replay(settings, status="building")
    await worker.close()
    assert result.switched
    new_state = await pg.execute(
        f"SELECT scanned_until, scan_seq, scan_sub FROM {result.generation.schema_name}.live_state"
    )
    assert await new_state.fetchone() == before == (before[0], last, SCAN_SUB + 1)
    # A process that has not noticed the switch yet scans the old generation: nothing, as
    # the new generation's scan goes on from here (before, it announced the ties again).
    await pg.execute("UPDATE live_state SET scanned_until = now() - interval '1 hour'")
    assert await scan_follow_ups(pg, consumer) == []


async def test_a_start_on_an_existing_generation_waits_for_no_scan(
    settings: Settings, pg: AsyncConnection[Any]
) -> None:
    """Every process runs the read-model DDL at start. On an existing generation it must not
    wait for the follow-up scan, which holds live_state's row (and then writes the change
    log) for a while: a column added with a plain ALTER TABLE ... IF NOT EXISTS takes an
    exclusive lock each time, and could deadlock with the scan."""
    schema, _ = first_generation(settings)
    other = await db.connect(settings)
    await ensure_schema(other, schema)  # the generation exists
    await pg.execute("BEGIN")
    await pg.execute("SELECT 1 FROM live_state WHERE id = 1 FOR UPDATE")  # a scan's hold
    try:
        await other.execute("SET lock_timeout = '2s'")
        await ensure_schema(other, schema)  # raises LockNotAvailable if it needs the table
    finally:
        await other.close()
        await pg.execute("ROLLBACK")
