"""Event ids are unique per workspace, end to end (api -> services -> JetStream -> worker ->
read models): another workspace may use an id for its own event, and what one workspace does
with an id (a re-send, a conflict, a retraction) never touches the other's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack

from tests.e2e.conftest import make_token


@pytest.fixture
def two(stack: Stack, stack_settings: Settings) -> Iterator[list[tuple[str, httpx.Client]]]:
    """Two fresh workspaces, each with its admin client and people ada and grace."""
    out: list[tuple[str, httpx.Client]] = []
    try:
        for _ in range(2):
            ws = f"ws-{uuid.uuid4().hex[:12]}"
            headers = {"Authorization": f"Bearer {make_token(stack_settings, ws)}"}
            client = httpx.Client(base_url=stack.api_url, timeout=30, headers=headers)
            out.append((ws, client))
            for pid in ("ada", "grace"):
                r = client.post(
                    f"/v1/workspaces/{ws}/people", json={"person_id": pid, "display_name": pid}
                )
                assert r.status_code == 201, r.text
        yield out
    finally:
        for _, client in out:
            client.close()


def _met(event_id: str, depth: str = "conversation") -> dict[str, object]:
    return {
        "event_id": event_id,
        "type": "relationship.met",
        "participants": ["ada", "grace"],
        "depth": depth,
    }


def _meetings(api: httpx.Client, ws: str, seq: int) -> int:
    r = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": seq})
    if r.status_code == 404:  # no unretracted contact left
        return 0
    assert r.status_code == 200, r.text
    return int(r.json()["meetings"])


def test_two_workspaces_use_one_event_id_each_for_their_own_event(
    two: list[tuple[str, httpx.Client]],
) -> None:
    (a, api_a), (b, api_b) = two
    met, retraction = str(uuid.uuid4()), str(uuid.uuid4())
    first = api_a.post(f"/v1/workspaces/{a}/events", json=_met(met))
    assert first.status_code == 201, first.text
    # The same id in the other workspace is that workspace's own event, not a conflict.
    second = api_b.post(f"/v1/workspaces/{b}/events", json=_met(met))
    assert second.status_code == 201, second.text
    assert second.json()["seq"] != first.json()["seq"]
    # Each workspace's re-send and conflict are its own.
    again = api_a.post(f"/v1/workspaces/{a}/events", json=_met(met))
    assert again.status_code == 200 and again.json()["seq"] == first.json()["seq"], again.text
    other = api_b.post(f"/v1/workspaces/{b}/events", json=_met(met, "brief_chat"))
    assert other.status_code == 409 and other.json()["errors"][0]["loc"][-1] == "event_id"
    assert _meetings(api_a, a, first.json()["seq"]) == 1
    assert _meetings(api_b, b, second.json()["seq"]) == 1
    # A retraction of the id in one workspace retracts that workspace's event only, and the
    # other may use the retraction's id too.
    body = {"event_id": retraction, "type": "event.retracted", "retracted_event_id": met}
    gone = api_a.post(f"/v1/workspaces/{a}/events", json=body)
    assert gone.status_code == 201, gone.text
    assert _meetings(api_a, a, gone.json()["seq"]) == 0
    assert _meetings(api_b, b, gone.json()["seq"]) == 1
    also = api_b.post(f"/v1/workspaces/{b}/events", json=body)
    assert also.status_code == 201, also.text
    assert _meetings(api_b, b, also.json()["seq"]) == 0
