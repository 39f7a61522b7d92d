"""Scenario 6: idempotency beyond JetStream's dedupe window (1 s on the shared stack).

* Re-sent straight onto the stream after the window, the same event (same Nats-Msg-Id) is
  stored twice; the projection counts it once (the archive's event_id is the key).
* Re-sent within the window, JetStream itself drops it (``duplicate`` in the PubAck).
* Re-sent through the HTTP API after the window, the write side finds it in its own table of
  taken ids and answers 200 ``duplicate`` with the original seq, publishing nothing; the
  same id with another body is a 409 conflict, also after the window.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.faults.conftest import Shared
from tests.faults.support import (
    EventFactory,
    Oracle,
    check_projection,
    checkpoint_of,
    encode,
    make_token,
    nats_admin,
    read_stream,
    rng_for,
    stream_last_seq,
    subject_of,
    summary,
    wait_for,
)


async def test_resend_beyond_the_dedupe_window_is_stored_twice_and_counted_once(
    shared: Shared,
) -> None:
    assert shared.settings.duplicate_window_s == 1.0
    rng = rng_for("dedupe_window")
    ws = "dedupe-ws"
    factory = EventFactory(rng, ws, people=6)
    late, early = factory.interaction(), factory.interaction()
    p = shared.settings.subject_prefix
    oracle = Oracle()
    stream = shared.settings.stream_name
    async with nats_admin(shared.admin) as (_, js):

        async def send(obj: dict[str, Any]) -> tuple[int, bool]:
            oracle.send(obj)
            ack = await js.publish(
                subject_of(p, obj),
                encode(obj),
                headers={"Nats-Msg-Id": obj["event_id"]},
                stream=stream,
            )
            if not ack.duplicate:
                oracle.ack(obj["event_id"], int(ack.seq))
            return int(ack.seq), bool(ack.duplicate)

        first, dup = await send(late)
        assert not dup
        # Within the window JetStream drops the re-send.
        e1, _ = await send(early)
        e2, dup2 = await send(early)
        assert dup2 and e2 == e1
        # After the window it stores it again (the server forgets ids lazily: poll).
        second = first
        deadline = time.monotonic() + 15
        while second == first:
            assert time.monotonic() < deadline, "the re-send was still deduplicated after 15 s"
            await asyncio.sleep(0.5)
            ack = await js.publish(
                subject_of(p, late),
                encode(late),
                headers={"Nats-Msg-Id": late["event_id"]},
                stream=stream,
            )
            second = first if ack.duplicate else int(ack.seq)
        last = await stream_last_seq(js, stream)

        async def projected() -> bool:
            return await checkpoint_of(shared.admin) >= last

        await wait_for(projected, within=30, what="projection")
        msgs = await read_stream(js, stream, f"{p}.ev.{ws}.>")
        copies = {
            eid: sum(1 for m in msgs if m.event_id == eid)
            for eid in (late["event_id"], early["event_id"])
        }
        check = await check_projection(shared.admin, oracle, workspace=ws)

        # Through the API: after the window the archive still knows the id.
        token = await make_token(shared.admin, ws, "write")
        async with httpx.AsyncClient(
            base_url=shared.stack.api_url,
            trust_env=False,
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            for pid in ("p000", "p001"):
                r = await client.post(
                    f"/v1/workspaces/{ws}/people", json={"person_id": pid, "display_name": pid}
                )
                assert r.status_code == 201, r.text
            body = {
                "type": "relationship.met",
                "event_id": factory._event_id(),
                "participants": ["p000", "p001"],
                "depth": "brief_chat",
            }
            r1 = await client.post(f"/v1/workspaces/{ws}/events", json=body)
            assert r1.status_code == 201, r1.text
            seq = r1.json()["seq"]
            await client.get(
                f"/v1/workspaces/{ws}/relationships/p000/p001", params={"min_seq": seq}
            )
            await asyncio.sleep(shared.settings.duplicate_window_s + 1.0)
            before = await stream_last_seq(js, stream)
            r2 = await client.post(f"/v1/workspaces/{ws}/events", json=body)
            # The same id with another body, beyond the window: a conflict, nothing published.
            r3 = await client.post(
                f"/v1/workspaces/{ws}/events", json={**body, "depth": "deep_conversation"}
            )
            after = await stream_last_seq(js, stream)
    summary(
        "dedupe_window",
        sent=len(oracle.sent) + 1,
        acked=len(oracle.acked) + 1,
        in_stream=sum(1 for c in copies.values() if c) + 1,
        projected=check.projected + 1,
        lost=check.lost,
        double_counted=check.double_counted,
        crashes=0,
        recover_s=0,
    )
    assert copies == {late["event_id"]: 2, early["event_id"]: 1}, copies
    assert check.lost == 0 and check.double_counted == 0 and not check.pair_mismatches, check
    assert check.projected == 2
    assert r2.status_code == 200, r2.text
    assert r2.json()["duplicate"] is True and r2.json()["seq"] == seq, r2.json()
    assert r3.status_code == 409 and r3.json()["errors"][0]["loc"] == ["event_id"], r3.text
    assert after == before, "the API published a re-sent event again"
