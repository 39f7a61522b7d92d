"""The benchmarks import, and their pure helpers compute what they claim. No servers, and never
an assertion about how fast anything is."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing.subjects import event_subject

from bench import common
from bench.events import LogEncoder, client_events, fake_ciphertext, meeting_events

MODULES = [
    "common",
    "events",
    "natsraw",
    "httpload",
    "ingest",
    "projection",
    "rebuild",
    "freshness",
    "queries",
    "peer",
    "emmett",
    "scaling",
    "sse",
    "webhook_claim",
    "whatif",
    "issue15",
    "report",
    "store_harness",
    "__main__",
]


@pytest.mark.parametrize("name", MODULES)
def test_every_bench_module_imports(name: str) -> None:
    mod = importlib.import_module(f"bench.{name}")
    if name == "store_harness":  # a developer tool with its own command line, not in `all`
        assert callable(mod.main) and callable(mod.measure)
    elif name == "emmett":  # the Emmett peer's runner, used by bench/peer.py
        assert callable(mod.run_emmett) and callable(mod.unavailable)
    elif name not in (
        "common",
        "events",
        "natsraw",
        "httpload",
        "whatif",
        "issue15",
        "report",
        "__main__",
    ):
        assert callable(mod.run) and callable(mod.add_args)


def test_percentile_interpolates_like_numpy() -> None:
    xs = [1.0, 2.0, 3.0, 4.0]
    assert common.percentile(xs, 0) == 1.0
    assert common.percentile(xs, 100) == 4.0
    assert common.percentile(xs, 50) == 2.5
    assert common.percentile([4.0, 1.0, 3.0, 2.0], 25) == pytest.approx(1.75)
    assert common.percentile([7.0], 99) == 7.0
    assert math.isnan(common.percentile([], 50))
    with pytest.raises(ValueError):
        common.percentile(xs, 101)


def test_summarize_reports_milliseconds() -> None:
    s = common.summarize([0.001, 0.002, 0.003])
    assert s["n"] == 3
    assert s["p50_ms"] == pytest.approx(2.0)
    assert s["max_ms"] == pytest.approx(3.0)
    assert s["mean_ms"] == pytest.approx(2.0)
    assert math.isnan(common.summarize([])["p99_ms"])


def test_ratio_and_rate() -> None:
    assert common.ratio(75.0, 100.0) == 0.75
    assert common.ratio(1.0, 0.0) is None
    assert common.ratio(None, 3.0) is None
    assert common.ratio(float("nan"), 3.0) is None
    assert common.rate(10, 2.0) == 5.0
    assert common.rate(10, 0.0) == 0.0
    row = common.Row("x", 30.0, "events/s", "raw", 40.0)
    assert row.ratio == 0.75 and row.as_dict()["ratio"] == 0.75


def test_growth_exponent_recovers_known_powers() -> None:
    sizes = [1e3, 1e4, 1e5]
    assert common.growth_exponent(sizes, [2 * s for s in sizes]) == pytest.approx(1.0)
    assert common.growth_exponent(sizes, [s**2 for s in sizes]) == pytest.approx(2.0)
    assert common.growth_exponent(sizes, [5.0, 5.0, 5.0]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        common.growth_exponent([10.0], [1.0])
    assert common.growth_verdict(1.05) == "ok"
    assert common.growth_verdict(1.4) == "WORSE THAN LINEAR"


def test_scaling_verdicts() -> None:
    from bench.scaling import verdict

    assert verdict(1.1, 1.0) == "ok"
    assert verdict(1.3, 1.0) == "WORSE THAN LINEAR"
    assert verdict(0.1, 0.0) == "ok"
    assert verdict(0.5, 0.0).startswith("GROWS")


def test_judge_targets() -> None:
    assert common.judge("t", 0.8, 0.75, at_least=True, measured="80%").met is True
    missed = common.judge("t", 30.0, 25.0, at_least=False, measured="30 ms", reason_if_missed="r")
    assert missed.met is False and missed.reason == "r"
    assert common.judge("t", None, 1.0, at_least=True, measured="").met is None


def test_issue15_cpu_per_event_counts_the_stack_not_the_client_or_the_wall_clock() -> None:
    from bench.issue15 import cpu_ms_per_event

    cpu = {"api": 1.0, "interactions": 2.0, "postgres": 1.0, "bench client": 9.0, "wall": 60.0}
    assert cpu_ms_per_event(cpu, 2000) == pytest.approx(2.0)
    assert cpu_ms_per_event(cpu, 0) is None


def test_issue15_batch_share_differs_by_durability_mode() -> None:
    from bench.issue15 import ingest_targets

    def mode(batch_per_s: float) -> dict[str, object]:
        summary = {"events_per_s": batch_per_s, "events": 1000, "p99_ms": 5.0, "saturated": False}
        return {
            "raw_async": {"events_per_s": 1000.0},
            "batch": summary,
            "batch_cpu": {"interactions": 0.1, "wall": 5.0},
            "single": summary,
            "single_cpu": {"api": 1.0},
            "steady": summary,
        }

    got = {t.name: t.met for t in ingest_targets({"sync": mode(500), "lazy": mode(500)}, 500)}
    assert got["[sync] batch ingest >= 75% of raw async publish (issue 15)"] is False
    assert got["[lazy] batch ingest >= 40% of raw async publish (issue 15)"] is True
    assert got["[sync] batch ingest CPU per line, all processes <= 0.15 ms (issue 15)"] is True
    assert got["[lazy] single-event p99 < 25 ms at 500 events/s (issue 15)"] is True


def test_formatting() -> None:
    assert common.fmt_num(None) == "-"
    assert common.fmt_num(12345.0) == "12.3k"
    assert common.fmt_ratio(0.5) == "50%"
    assert common.fmt_ratio(None) == "-"


def test_log_encoder_makes_valid_events_on_the_right_subjects() -> None:
    enc = LogEncoder("bench", "bx", validate_every=1)
    for obj in client_events(50, 400, seed=2):
        subject, raw, event_id = enc.encode(obj)
        event = REGISTRY.decode(raw)
        assert str(event.event_id) == event_id
        assert event_subject("bx", event) == subject
        for f in ("display_name", "email", "context", "where", "notes"):
            value = getattr(event, f, None)
            assert value is None or value.startswith("enc:v1:")


def test_fake_ciphertext_has_the_real_length() -> None:
    import base64

    value = fake_ciphertext("Ada Lovelace", 3)
    assert value.startswith("enc:v1:")
    assert len(value) - len("enc:v1:") == len(base64.b64encode(b"x" * (12 + 12 + 16)))


def test_meeting_events_name_two_existing_people() -> None:
    ids = [f"m{i}" for i in range(5)]
    for m in meeting_events(ids, 20):
        a, b = m["participants"]
        assert a != b and a in ids and b in ids


def test_freshness_visibility_delays() -> None:
    from bench.freshness import pair_of, visibility_delays

    acks = [(1.0, 1), (1.0, 2), (2.0, 5), (3.0, 9)]
    checkpoints = [(1.5, 2), (1.2, 1), (2.2, 6)]  # out of order on purpose
    delays, missing = visibility_delays(acks, checkpoints)
    assert delays == pytest.approx([0.2, 0.5, 0.2])
    assert missing == 1
    assert pair_of({"type": "relationship.met", "participants": ["a", "b", "c"]}) == ("a", "b")
    assert pair_of({"type": "relationship.followed_up", "from_person": "x", "to_person": "y"}) == (
        "x",
        "y",
    )
    assert pair_of({"type": "person.added"}) is None


def test_network_generation_and_id_substitution() -> None:
    from bench.queries import generate_ties, person_ids, substitute

    pairs = generate_ties(200, 1500)
    assert len(pairs) == len(set(pairs)) == 1500
    assert all(0 <= i < j < 200 for i, j in pairs)
    assert person_ids(3) == ["u0", "u1", "u2"]
    m = {"p1": "u7", "p2": "u9"}
    assert substitute({"from": "p1", "to": ["p2", "z"], "n": 3}, m) == {
        "from": "u7",
        "to": ["u9", "z"],
        "n": 3,
    }


def test_collapsed_profile_summary(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("main (a.py:1);work (a.py:5);leaf (b.py:9) 3\nmain (a.py:1);work (a.py:6) 1\n")
    top = {r["frame"]: r for r in common.collapsed_top(f)}
    assert top["work (a.py)"]["inclusive"] == 1.0
    assert top["leaf (b.py)"]["self"] == 0.75
    assert common.collapsed_self_top(f)[0]["frame"] == "leaf (b.py:9)"
    assert common.collapsed_top(tmp_path / "missing.txt") == []


def test_report_renders_a_result() -> None:
    from bench.report import table

    md = table(
        {
            "name": "x",
            "argv": ["bench", "x"],
            "duration_s": 1.0,
            "rows": [common.Row("m", 1.0, "ms", "raw", 2.0, "a|b").as_dict()],
            "targets": [common.Target("t", False, "1 ms", "why").as_dict()],
        }
    )
    assert "| m | 1 | ms | raw | 2 | 50% | a\\|b |" in md
    assert "**missed**" in md


def test_emmett_peer_without_node_is_skipped_with_a_reason_not_faked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bench import emmett
    from bench.peer import emmett_rows

    monkeypatch.setenv("PATH", str(tmp_path))
    reason = emmett.unavailable()
    assert reason is not None and "node" in reason and "npm" in reason
    tl = {"single": {"events_per_s": 400.0}, "catch_up": (3300, 0.5)}
    rows, targets = emmett_rows(tl, {"skipped": reason})
    assert rows == []
    assert [t.met for t in targets] == [None, None]
    assert all(reason in t.measured for t in targets)


def test_emmett_rows_are_same_run_ratios_over_what_the_projector_handled() -> None:
    from bench.peer import emmett_rows

    tl = {"single": {"events_per_s": 400.0}, "catch_up": (6000, 1.0)}
    projected = {"pairs": 10, "meetings": 900, "minutes": 1}
    em = {
        "appended": 1000,
        "in_flight": 16,
        "sequential": (200, 0.5),  # 400/s
        "concurrent": (800, 0.5),  # 1600/s
        "projections": {
            "raw_sql": {"handled": 900, "seconds": 0.6, "projected": projected},  # 1500/s
            "pongo": {"handled": 900, "seconds": 0.9, "projected": projected},  # 1000/s
        },
    }
    rows, targets = emmett_rows(tl, em)
    assert [r.ratio for r in rows] == pytest.approx([0.25, 1.0, 4.0, 6.0])
    assert "900 of 1000" in rows[2].note
    writes, projection = targets
    assert writes.met is False and "0.25x" in writes.measured
    assert (
        projection.met is False
        and "4.0x" in projection.measured
        and "raw_sql" in projection.measured
    )
