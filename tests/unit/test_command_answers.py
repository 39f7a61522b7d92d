"""Every command gets an answer, line by line (the API's command bus, a batch's runs, a
write service's handler): a failure in one place is answered there, at once, instead of the
API's 503 after its command timeout for everything."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from tieline.plumbing.config import Settings
from tieline.services.api.errors import ApiError
from tieline.services.api.routers.events import send_runs
from tieline.services.api.runtime import CommandBus
from tieline.services.service_app import handle_command


class Replies:
    """A NATS connection whose service answers 201 to every item it is sent."""

    def __init__(self) -> None:
        self.sent: list[list[Any]] = []

    async def request(self, subject: str, body: bytes, **_: Any) -> Any:
        items = json.loads(body)["items"]
        self.sent.append(items)
        results = [{"status": 201, "seq": len(self.sent)} for _ in items]
        return SimpleNamespace(data=json.dumps({"results": results}).encode())


def test_the_bus_refuses_items_no_service_can_decode_and_sends_the_rest() -> None:
    nc = Replies()
    bus = CommandBus(Settings(), SimpleNamespace(nc=nc))  # type: ignore[arg-type]
    items = [
        {"type": "relationship.met", "where": "ok"},
        {"type": "relationship.met", "where": "caf\ud800"},
        {"type": "relationship.met", "notes": ["a", "b\x00"]},
        {"type": "relationship.met", "x": float("nan")},
        {"type": "relationship.met", "duration_minutes": 10**400},
        {"type": "relationship.met", "x": {"y": _nested(953)}},
        {"type": "relationship.met", "where": "fine", "n": [1, {"m": True}]},
    ]
    out = asyncio.run(bus.command("w", "interactions", items, "t", "c"))
    assert [r["status"] for r in out] == [201, 422, 422, 422, 422, 422, 201]
    assert [r["errors"][0]["loc"] for r in out[1:5]] == [
        ["where"],
        ["notes", "1"],
        ["x"],
        ["duration_minutes"],
    ]
    assert out[5]["errors"][0]["loc"][:3] == ["x", "y", "0"]
    assert nc.sent == [[items[0], items[6]]]  # one command, without the unfit items


def _nested(depth: int) -> list[Any]:
    """A list ``depth`` levels deep: ``json.loads`` reads 953 levels, but encoding the command
    around it overflowed the stack (a 500)."""
    out: list[Any] = []
    for _ in range(depth):
        out = [out]
    return out


def test_a_batch_run_whose_service_does_not_answer_fails_alone() -> None:
    """That run's lines get 503; the service's later runs too, without waiting for it again
    (one command timeout each would make a long batch take hours); other services' runs,
    before and after, are sent; an unforeseen error is a 500 for its run only."""
    asked: list[str] = []

    class Bus:
        async def command(self, ws: str, service: str, items: list[Any], *_: Any) -> Any:
            asked.append(service)
            if service == "people":
                raise ApiError(503, "the people service did not answer in time")
            if items[0].get("boom"):
                raise RecursionError
            return [{"status": 201, "seq": 7} for _ in items]

    met, boom = {"type": "relationship.met"}, {"type": "relationship.met", "boom": 1}
    objs = {0: met, 1: {"type": "person.added", "event_id": "e1"}, 2: met, 3: {}, 4: boom}
    runs = [("interactions", [0]), ("people", [1]), ("interactions", [2]), ("people", [3])]
    runs.append(("x", [4]))
    results: list[dict[str, Any] | None] = [None] * 5
    asyncio.run(send_runs(Bus(), "w", runs, objs, "t", results))
    assert asked == ["interactions", "people", "interactions", "x"]
    assert [r["status"] if r else None for r in results] == [201, 503, 201, 503, 500]
    assert results[1] is not None and results[1]["event_id"] == "e1"
    assert "did not answer" in results[1]["error"]


@pytest.mark.parametrize(
    ("error", "status"),
    [(OSError("database unavailable"), 503), (TimeoutError(), 503), (KeyError("bug"), 500)],
)
def test_a_command_that_fails_as_a_whole_is_still_answered(error: Exception, status: int) -> None:
    class Side:
        async def record_many(self, *_: Any, **__: Any) -> Any:
            raise error

    body = {"actor": "t", "items": [{"type": "relationship.met"}, {"type": "relationship.met"}]}
    out = asyncio.run(handle_command(Side(), "p.cmd.w.interactions", body, "interactions"))  # type: ignore[arg-type]
    assert [r["status"] for r in out["results"]] == [status, status]
