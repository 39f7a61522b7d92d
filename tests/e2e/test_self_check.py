"""The running worker checks its read models against the log and /readyz shows the result."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
from tieline.services.runtime.supervisor import Stack


def test_readyz_shows_a_clean_self_check_after_writes(
    api: httpx.Client, ws: str, stack: Stack
) -> None:
    for p in ("sc-a", "sc-b"):
        api.post(f"/v1/workspaces/{ws}/people", json={"person_id": p, "display_name": p})
    r = api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "relationship.met",
            "participants": ["sc-a", "sc-b"],
            "depth": "conversation",
        },
    )
    assert r.status_code in (200, 201), r.text
    seq = r.json()["seq"]
    written = datetime.now().astimezone()
    deadline = time.monotonic() + 30
    check = None
    while time.monotonic() < deadline:
        body = httpx.get(f"{stack.api_url}/readyz", timeout=5).json()
        check = body["checks"].get("self_check")
        if (
            check is not None
            and check["checkpoint"] >= seq
            and datetime.fromisoformat(check["checked_at"]) > written
        ):
            break
        time.sleep(0.3)
    assert check is not None and check["checkpoint"] >= seq, check
    assert check["ok"] is True and check["problem_count"] == 0, check
    assert "problems" not in check  # the differences name workspaces: never without a token
    assert check["sampled_messages"] > 0 and check["sampled_pairs"] > 0, check
