"""projections/merges.py, the pure part: which relationship a stored pair belongs to while
merges hold, and how stored rows are read as the relationship's events."""

from __future__ import annotations

from datetime import UTC, datetime

from tieline.projections.merges import Aliases, moved_keys, resolve_rows
from tieline.projections.strength_model import PairEvent

T = datetime(2025, 1, 1, tzinfo=UTC)
# In workspace w, b was merged into a; in workspace v nobody was.
ALIASES = Aliases.of([("w", "b", "a")])


def ev(eid: str, seq: int, a: str, b: str, **detail: object) -> PairEvent:
    return PairEvent(eid, "relationship.met", T, seq, a, b, detail)


def test_a_merged_person_counts_as_the_survivor_in_its_own_workspace_only() -> None:
    assert ALIASES.key("w", "b", "x") == ("w", "a", "x")
    assert ALIASES.key("w", "x", "b") == ("w", "a", "x")
    assert ALIASES.key("w", "0", "b") == ("w", "0", "a")  # re-ordered after the translation
    assert ALIASES.key("v", "b", "x") == ("v", "b", "x")
    assert ALIASES.key("w", "a", "b") is None  # one person: no relationship


def test_stored_pairs_of_a_relationship_include_the_merged_persons() -> None:
    assert ALIASES.stored_keys(("w", "a", "x")) == [("w", "a", "x"), ("w", "b", "x")]
    assert ALIASES.stored_keys(("v", "a", "x")) == [("v", "a", "x")]


def test_rows_are_read_as_the_relationships_events_each_event_once() -> None:
    rows = [
        (("w", "b", "x"), ev("e1", 1, "b", "x", initiated_by="b", group_size=2)),
        (("w", "a", "x"), ev("e2", 2, "a", "x", initiated_by="x")),
        # One group meeting of a, b and x: two stored rows on (a, x) once merged, one kept.
        (("w", "b", "x"), ev("e3", 3, "b", "x", initiated_by="b")),
        (("w", "a", "x"), ev("e3", 3, "a", "x", initiated_by="b")),
        (("w", "a", "b"), ev("e3", 3, "a", "b", initiated_by="b")),
    ]
    got = resolve_rows(ALIASES, rows)
    assert list(got) == [("w", "a", "x")]  # the pair (a, b) belongs to nobody
    events = got[("w", "a", "x")]
    assert sorted(e.event_id for e in events) == ["e1", "e2", "e3"]
    assert {(e.person_a, e.person_b) for e in events} == {("a", "x")}
    assert {e.event_id: e.detail["initiated_by"] for e in events} == {
        "e1": "a",
        "e2": "x",
        "e3": "a",
    }
    assert resolve_rows(Aliases(), rows)[("w", "a", "b")][0].detail["initiated_by"] == "b"


def test_a_merge_moves_the_relationships_of_the_merged_persons_stored_pairs() -> None:
    stored = [("w", "b", "x"), ("w", "a", "b")]
    assert moved_keys(Aliases(), ALIASES, stored) == [
        ("w", "a", "b"),
        ("w", "a", "x"),
        ("w", "b", "x"),
    ]
    assert moved_keys(ALIASES, Aliases(), stored) == moved_keys(Aliases(), ALIASES, stored)
