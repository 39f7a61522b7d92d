"""The strength read models on the running stack: explain, as-of, follow-ups due,
give-and-take, can-introduce and warm paths; and the projection agrees with the pure model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tieline.projections.strength_model import CONTACT_TYPES, PARAMS, PairEvent, strength
from tieline.projections.strength_model_momentum import momentum

from tests.e2e.test_walking_skeleton import add_people

T0 = datetime(2024, 1, 1, 18, 0, tzinfo=UTC)


def at(days: float) -> str:
    return (T0 + timedelta(days=days)).isoformat()


def record(api: httpx.Client, ws: str, events: list[dict[str, Any]]) -> int:
    lines = "\n".join(__import__("json").dumps(e) for e in events).encode()
    r = api.post(f"/v1/workspaces/{ws}/events/batch", content=lines)
    body = r.json()
    assert body["rejected"] == 0, body
    return int(body["last_seq"])


def friendship(a: str, b: str, start: float, n: int, every: float) -> list[dict[str, Any]]:
    """Meals every ``every`` days, alternating who initiates, each followed up and answered."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        who, other = (a, b) if i % 2 == 0 else (b, a)
        out.append(
            {
                "type": "relationship.met",
                "participants": [a, b],
                "depth": "meal_or_activity",
                "duration_minutes": 120,
                "initiated_by": who,
                "occurred_at": at(start + i * every),
            }
        )
        out.append(
            {
                "type": "relationship.followed_up",
                "from_person": other,
                "to_person": who,
                "channel": "message",
                "replied": True,
                "occurred_at": at(start + i * every + 1),
            }
        )
    return out


@pytest.fixture
def network(api: httpx.Client, ws: str) -> tuple[str, int]:
    add_people(api, ws, "ada", "grace", "linus", "mallory", "sam", "zoe")
    events = friendship("ada", "grace", 0, 30, 14)  # a long friendship
    events += friendship("grace", "linus", 30, 20, 20)  # grace knows linus well
    events += friendship("linus", "zoe", 60, 20, 20)  # linus knows zoe well
    events += [
        {
            "type": "relationship.met",
            "participants": ["ada", "mallory"],
            "depth": "card_exchange",
            "occurred_at": at(400),
        }
    ]
    # sam sells and disappears: always initiates, never answered
    events += [
        {
            "type": "relationship.followed_up",
            "from_person": "sam",
            "to_person": "ada",
            "channel": "email",
            "replied": False,
            "occurred_at": at(300 + i),
        }
        for i in range(8)
    ]
    return ws, record(api, ws, events)


def test_explain_names_top_contributions_decay_and_reciprocity(
    api: httpx.Client, network: tuple[str, int]
) -> None:
    ws, seq = network
    e = api.get(
        f"/v1/workspaces/{ws}/relationships/ada/grace/explain",
        params={"min_seq": seq, "as_of": at(500)},
    ).json()
    assert e["top_contributions"] and e["top_contributions"][0]["type"] == "relationship.met"
    assert e["decay"]["days_since_contact"] > 0 and "reciprocity" in e
    assert 0 < e["score"] <= 100 and e["tier"]


def test_as_of_answers_equal_a_replay_stopped_at_that_date(
    api: httpx.Client, network: tuple[str, int]
) -> None:
    ws, seq = network
    tl = api.get(
        f"/v1/workspaces/{ws}/relationships/ada/grace/timeline", params={"min_seq": seq}
    ).json()["events"]
    all_events = [
        PairEvent(
            e["event_id"],
            e["type"],
            datetime.fromisoformat(e["occurred_at"]),
            e["seq"],
            "ada",
            "grace",
            e["detail"],
        )
        for e in tl
    ]
    for day in (10, 100, 250, 420, 800):
        when = T0 + timedelta(days=day)
        got = api.get(
            f"/v1/workspaces/{ws}/relationships/ada/grace", params={"as_of": when.isoformat()}
        ).json()
        expected = strength([e for e in all_events if e.occurred_at <= when], PARAMS, when)
        assert got["score"] == round(expected.score, 4), day
        assert got["tier"] == expected.tier
        assert got["event_count"] == len(expected.contributions)


def test_no_new_events_means_strength_never_rises(
    api: httpx.Client, network: tuple[str, int]
) -> None:
    ws, seq = network
    scores = [
        api.get(
            f"/v1/workspaces/{ws}/relationships/ada/grace", params={"as_of": at(d), "min_seq": seq}
        ).json()["score"]
        for d in (430, 500, 700, 1000, 2000)
    ]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


def test_projected_state_equals_the_pure_function_now(
    api: httpx.Client, network: tuple[str, int]
) -> None:
    ws, seq = network
    ties = api.get(f"/v1/workspaces/{ws}/people/ada/relationships", params={"min_seq": seq}).json()[
        "relationships"
    ]
    direct = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace").json()
    from_state = next(t for t in ties if t["other"] == "grace")
    assert abs(from_state["score"] - direct["score"]) < 1e-3
    # The fast path (stored decay state) equals the pure model over the events at that instant.
    pure = api.get(
        f"/v1/workspaces/{ws}/relationships/ada/grace", params={"as_of": direct["as_of"]}
    ).json()
    assert abs(pure["score"] - direct["score"]) < 1e-6
    assert (pure["tier"], pure["event_count"], pure["can_vouch"]) == (
        direct["tier"],
        direct["event_count"],
        direct["can_vouch"],
    )
    assert ties[0]["other"] == "grace"


def test_follow_ups_due_lists_fading_ties_with_strength_at_stake(
    api: httpx.Client, network: tuple[str, int]
) -> None:
    ws, seq = network
    due = api.get(
        f"/v1/workspaces/{ws}/people/ada/follow-ups", params={"as_of": at(520), "min_seq": seq}
    ).json()["due"]
    assert "grace" in [d["other"] for d in due]
    assert all(d["days_since_contact"] > d["cadence_days"] for d in due)
    stakes = [d["at_stake"] for d in due]
    assert stakes == sorted(stakes, reverse=True)
    not_yet = api.get(
        f"/v1/workspaces/{ws}/people/ada/follow-ups", params={"as_of": at(407.5)}
    ).json()["due"]
    assert "grace" not in [d["other"] for d in not_yet]


def test_give_and_take_flags_the_sell_and_disappear_tie(
    api: httpx.Client, network: tuple[str, int]
) -> None:
    ws, seq = network
    ties = api.get(f"/v1/workspaces/{ws}/people/ada/give-and-take", params={"min_seq": seq}).json()[
        "ties"
    ]
    flags = {t["other"]: t["one_sided"] for t in ties}
    assert flags["sam"] is True and flags["grace"] is False


def test_can_introduce_needs_the_introducer_to_know_both_well(
    api: httpx.Client, network: tuple[str, int]
) -> None:
    ws, seq = network
    api.get(f"/v1/workspaces/{ws}/people", params={"min_seq": seq})
    ok = api.get(
        f"/v1/workspaces/{ws}/introductions/check",
        params={"introducer": "grace", "a": "ada", "b": "linus", "as_of": at(420)},
    ).json()
    assert ok["can_introduce"] is True, ok
    card = api.get(
        f"/v1/workspaces/{ws}/introductions/check",
        params={"introducer": "ada", "a": "grace", "b": "mallory", "as_of": at(420)},
    ).json()
    assert card["can_introduce"] is False
    assert card["mallory"]["can_vouch"] is False and card["mallory"]["reasons"]


def test_warm_paths_find_intermediaries_over_vouching_ties(api: httpx.Client, ws: str) -> None:
    add_people(api, ws, "ada", "grace", "linus", "zoe")
    recent = 600.0 + (datetime.now(UTC) - T0 - timedelta(days=600)).days  # end near today
    start = recent - 400
    events = friendship("ada", "grace", start, 30, 13)
    events += friendship("grace", "linus", start, 30, 13)
    events += friendship("linus", "zoe", start, 30, 13)
    seq = record(api, ws, events)
    paths = api.get(
        f"/v1/workspaces/{ws}/people/ada/warm-paths", params={"target": "zoe", "min_seq": seq}
    ).json()["paths"]
    assert paths and paths[0]["path"] == ["ada", "grace", "linus", "zoe"]
    one_hop = api.get(
        f"/v1/workspaces/{ws}/people/ada/warm-paths", params={"target": "linus"}
    ).json()["paths"]
    assert one_hop[0]["intermediaries"] == ["grace"]


def _pair_events(api: httpx.Client, ws: str, a: str, b: str, seq: int) -> list[PairEvent]:
    tl = api.get(
        f"/v1/workspaces/{ws}/relationships/{a}/{b}/timeline", params={"min_seq": seq}
    ).json()["events"]
    pa, pb = sorted((a, b))
    return [
        PairEvent(
            e["event_id"], e["type"], datetime.fromisoformat(e["occurred_at"]), e["seq"], pa, pb,
            e["detail"],
        )
        for e in tl
    ]  # fmt: skip


def test_momentum_is_served_and_equals_the_pure_model(
    api: httpx.Client, network: tuple[str, int]
) -> None:
    """The pair answer's momentum (as of a date, and now from the stored row) is the pure
    momentum model with each person's latest contact with anyone; the ties listing ranks by
    it and follow-ups can put the ties least likely to go on first."""
    ws, _ = network
    # ada meets linus after her last contact with grace: at day 420 the less recently active
    # of ada and grace was active 10 days ago, their pair 13 days ago (both matter).
    meet = {"type": "relationship.met", "participants": ["ada", "linus"], "depth": "conversation"}
    meet["occurred_at"] = at(410)
    seq = record(api, ws, [meet])
    pairs = [("ada", "grace"), ("grace", "linus"), ("linus", "zoe"), ("ada", "mallory")]
    pairs += [("ada", "sam"), ("ada", "linus")]
    history = {p: _pair_events(api, ws, *p, seq) for p in pairs}
    for day in (100, 420, 800):
        when = T0 + timedelta(days=day)
        active: dict[str, datetime] = {}
        around: dict[str, set[str]] = {}
        for events in history.values():
            for e in events:
                if e.occurred_at <= when and e.type in CONTACT_TYPES:  # ratings are not contact
                    for p in (e.person_a, e.person_b):
                        active[p] = max(active.get(p, e.occurred_at), e.occurred_at)
                    around.setdefault(e.person_a, set()).add(e.person_b)
                    around.setdefault(e.person_b, set()).add(e.person_a)
        common = len(around.get("ada", set()) & around.get("grace", set()))
        got = api.get(
            f"/v1/workspaces/{ws}/relationships/ada/grace", params={"as_of": when.isoformat()}
        ).json()
        upto = [e for e in history[("ada", "grace")] if e.occurred_at <= when]
        expected = momentum(upto, when, active, common_neighbours=common)
        assert got["momentum"] == round(expected.score, 4), day
        assert got["common_neighbours"] == common, day
        if day == 420:
            assert expected.score != momentum(upto, when).score  # activity and CN count
            assert common == 1  # linus: ada met him at 410, grace has known him for long
        assert got["episodes"] == expected.episodes and got["momentum_version"]
    direct = api.get(f"/v1/workspaces/{ws}/relationships/linus/grace").json()
    pure = api.get(
        f"/v1/workspaces/{ws}/relationships/linus/grace", params={"as_of": direct["as_of"]}
    ).json()
    assert abs(pure["momentum"] - direct["momentum"]) < 1e-6 and direct["episodes"] > 1
    ranked = api.get(
        f"/v1/workspaces/{ws}/people/ada/relationships",
        params={"order": "momentum", "as_of": at(420)},
    ).json()["relationships"]
    values = [t["momentum"] for t in ranked]
    assert values == sorted(values, reverse=True) and len(values) == 4
    due = api.get(
        f"/v1/workspaces/{ws}/people/ada/follow-ups", params={"as_of": at(520), "order": "lapsing"}
    ).json()["due"]
    lapsing = [d["momentum"] for d in due]
    assert lapsing == sorted(lapsing) and "grace" in [d["other"] for d in due]
