"""The synthetic network generator: deterministic, valid, causally ordered, bounded in time."""

from __future__ import annotations

import io
import itertools
import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from tieline.events_schema.registry import REGISTRY
from tieline.services.tools.simulate import SimConfig, event_namespace, simulate, write_jsonl

PERSON_FIELDS = (
    "participants",
    "initiated_by",
    "from_person",
    "to_person",
    "introducer",
    "person_a",
    "person_b",
    "helper",
    "helped",
    "rater",
    "ratee",
)
ENVELOPE = {
    "workspace_id": "sim-check",
    "recorded_at": "2099-01-01T00:00:00Z",
    "recorded_by": "test",
    "schema_version": 1,
}


def named(ev: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for f in PERSON_FIELDS:
        v = ev.get(f)
        if isinstance(v, list):
            out.extend(v)
        elif isinstance(v, str):
            out.append(v)
    return out


def test_the_same_seed_gives_the_same_lines_and_another_seed_does_not() -> None:
    cfg = SimConfig(seed=42, people=200, events=5000)
    a, b = io.StringIO(), io.StringIO()
    assert write_jsonl(cfg, a) == write_jsonl(cfg, b) == 5000
    assert a.getvalue() == b.getvalue()
    other = io.StringIO()
    write_jsonl(SimConfig(seed=43, people=200, events=5000), other)
    assert other.getvalue() != a.getvalue()


def test_event_ids_are_uuid5_of_the_seed_and_the_counter() -> None:
    events = list(itertools.islice(simulate(SimConfig(seed=9, people=50, events=500)), 500))
    ns = event_namespace(9)
    assert [e["event_id"] for e in events] == [str(uuid.uuid5(ns, str(i))) for i in range(500)]


@pytest.mark.parametrize(("people", "events"), [(2, 10), (30, 400), (500, 20_000)])
def test_every_line_is_a_valid_event_naming_only_people_added_before(
    people: int, events: int
) -> None:
    cfg = SimConfig(seed=7, people=people, events=events)
    added: set[str] = set()
    count = 0
    for line in (json.loads(x) for x in _lines(cfg)):
        count += 1
        assert "workspace_id" not in line and "recorded_at" not in line
        event = REGISTRY.decode_obj({**line, **ENVELOPE})
        assert str(event.event_id) == line["event_id"]
        if event.type == "person.added":
            assert not (set(named(line)) - added)
            added.add(line["person_id"])
        else:
            missing = set(named(line)) - added
            assert not missing, f"{line} names people not added before: {missing}"
    assert count == events
    assert len(added) == people


def _lines(cfg: SimConfig) -> list[str]:
    buf = io.StringIO()
    write_jsonl(cfg, buf)
    return buf.getvalue().splitlines()


def test_people_come_first_and_times_stay_inside_the_period() -> None:
    start = datetime(2018, 3, 1, tzinfo=UTC)
    cfg = SimConfig(seed=3, people=300, events=30_000, start=start, years=2)
    events = list(simulate(cfg))
    assert all(e["type"] == "person.added" for e in events[:300])
    assert not any(e["type"] == "person.added" for e in events[300:])
    times = [datetime.fromisoformat(e["occurred_at"]) for e in events]
    assert min(times) >= start
    assert max(times) < cfg.end
    # Interactions are spread over the whole period, roughly in time order.
    inter = times[300:]
    assert inter[len(inter) // 10] < start.replace(year=2018, month=8)
    assert inter[-1] > cfg.end.replace(month=1, day=1)


def test_the_network_looks_like_one() -> None:
    events = list(simulate(SimConfig(seed=1, people=400, events=60_000)))
    kinds = Counter(e["type"] for e in events)
    assert set(kinds) == {
        "person.added",
        "relationship.met",
        "relationship.followed_up",
        "relationship.introduced",
        "relationship.helped",
        "relationship.closeness_rated",
    }
    depths = Counter(e["depth"] for e in events if e["type"] == "relationship.met")
    light = depths["card_exchange"] + depths["brief_chat"]
    assert light > 0.6 * sum(depths.values()), depths
    assert depths["meal_or_activity"] > 0 and depths["deep_conversation"] > 0
    assert any(len(e["participants"]) > 2 for e in events if e["type"] == "relationship.met")
    # Friends meet again and again; most pairs meet once or twice.
    per_pair: Counter[tuple[str, ...]] = Counter()
    for e in events:
        if e["type"] == "relationship.met" and len(e["participants"]) == 2:
            per_pair[tuple(sorted(e["participants"]))] += 1
    assert max(per_pair.values()) >= 10
    assert sum(1 for v in per_pair.values() if v <= 2) > 0.5 * len(per_pair)
    # Sellers: people who always initiate and are never answered.
    sent: dict[str, list[bool]] = {}
    received: Counter[str] = Counter()
    for e in events:
        if e["type"] == "relationship.followed_up":
            sent.setdefault(e["from_person"], []).append(e["replied"])
            received[e["to_person"]] += 1
    one_sided = [p for p, r in sent.items() if len(r) >= 5 and not any(r) and received[p] == 0]
    assert one_sided, "expected some sell-and-disappear contacts"
    # Ties fade: some pairs that met often stop meeting long before the end.
    last_met: dict[tuple[str, ...], str] = {}
    for e in events:
        if e["type"] == "relationship.met" and len(e["participants"]) == 2:
            last_met[tuple(sorted(e["participants"]))] = e["occurred_at"]
    faded = [p for p, n in per_pair.items() if n >= 5 and last_met[p] < "2023-01-01"]
    assert faded, "expected some ties to fade out"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (SimConfig(people=1, events=10), "people"),
        (SimConfig(people=100, events=50), "events"),
        (SimConfig(years=0), "years"),
        (SimConfig(start=datetime(2020, 1, 1)), "timezone"),
    ],
)
def test_impossible_configurations_are_refused(cfg: SimConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        next(iter(simulate(cfg)))
