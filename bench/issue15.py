"""Issue 15's targets judged from the figures ingest, queries and rebuild already compute
(per-phase, per-process CPU meters, HTTP latency summaries, the row-by-row diff); kept here
so each bench module stays about measuring."""

from __future__ import annotations

from typing import Any

from bench.common import Target, judge

#: Issue 15's batch-ingest share of the raw async publish, per durability mode.
BATCH_SHARE = {"sync": 0.75, "lazy": 0.40}
#: Keys of a phase's CPU split that are not a process of the stack: the load generator, and
#: the CpuMeter's wall-clock seconds.
NOT_STACK = frozenset({"bench client", "wall"})


def cpu_ms_per_event(cpu: dict[str, float], events: int) -> float | None:
    """CPU of every process of the stack in one phase (api, interactions, worker, NATS,
    PostgreSQL, ...; not the load generator) per event, in ms."""
    if not events:
        return None
    return 1000 * sum(v for k, v in cpu.items() if k not in NOT_STACK) / events


def ingest_targets(results: dict[str, dict[str, Any]], steady_rate: float) -> list[Target]:
    out = []
    for mode, m in results.items():
        ref = m["raw_async"]["events_per_s"]
        b = m["batch"]["events_per_s"] / ref if ref else None
        share = BATCH_SHARE.get(mode, 0.75)
        out.append(
            judge(
                f"[{mode}] batch ingest >= {100 * share:.0f}% of raw async publish (issue 15)",
                b,
                share,
                at_least=True,
                measured=f"{100 * (b or 0):.0f}% "
                f"({m['batch']['events_per_s']:,.0f} vs {ref:,.0f}/s)",
                reason_if_missed="write path CPU per event (see CPU split/profile)",
            )
        )
        per_line = cpu_ms_per_event(m["batch_cpu"], m["batch"]["events"])
        out.append(
            judge(
                f"[{mode}] batch ingest CPU per line, all processes <= 0.15 ms (issue 15)",
                per_line,
                0.15 + 1e-9,
                at_least=False,
                measured=f"{per_line or 0:.3f} ms ({_split(m['batch_cpu'])})",
                reason_if_missed="see the per-process split: interactions and PostgreSQL",
            )
        )
        per_ev = cpu_ms_per_event(m["single_cpu"], m["single"]["events"])
        out.append(
            judge(
                f"[{mode}] single-event HTTP CPU per event, all processes <= 2 ms (issue 15)",
                per_ev,
                2 + 1e-9,
                at_least=False,
                measured=f"{per_ev or 0:.2f} ms ({_split(m['single_cpu'])})",
                reason_if_missed="HTTP + NATS request/reply + validation + commit per event",
            )
        )
        st = m["steady"]
        out.append(
            judge(
                f"[{mode}] single-event p99 < 25 ms at {steady_rate:g} events/s (issue 15)",
                st["p99_ms"] if not st["saturated"] else float("inf"),
                25,
                at_least=False,
                measured=f"p99 {st['p99_ms']:.1f} ms at {st['events_per_s']:,.0f}/s"
                + ("; SATURATED" if st["saturated"] else ""),
                reason_if_missed="queueing: the write path is near saturation at this rate",
            )
        )
    return out


def _split(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in cpu.items() if k not in NOT_STACK)


def query_targets(res: dict[str, Any], clients: int, scale: str) -> list[Target]:
    """Issue 15's read targets at ``clients`` closed-loop clients on the api processes."""
    out = []
    ps = res.get("pair strength", {})
    name = f"pair strength, {clients} clients >= 2.5k/s with p99 < 10 ms (issue 15; {scale})"
    if "http" in ps:
        h = ps["http"]
        ok = h["per_s"] >= 2_500 and h["p99_ms"] < 10
        out.append(
            Target(
                name,
                ok,
                f"{h['per_s']:,.0f} req/s, p99 {h['p99_ms']:.1f} ms "
                f"({ps['http_1']['p99_ms']:.1f} ms with 1 client)",
                ""
                if ok
                else "closed-loop clients queue on the api process(es) sharing 2 cores with "
                "PostgreSQL and the load generator (p99 = queueing; see the 1-client row)",
            )
        )
    else:
        out.append(Target(name, None, "not measured", ps.get("skipped", "")))
    top = res.get("top-50 ties", {})
    name = f"top-50 ties of the best-connected 1% p99 < 15 ms (issue 15; {scale})"
    if "http" in top:
        v = top["http"]["p99_ms"]
        out.append(
            judge(
                name,
                v,
                15,
                at_least=False,
                measured=f"p99 {v:.1f} ms at {clients} clients, half the requests for one "
                f"of the 1% best-connected ({top['http_1']['p99_ms']:.1f} ms with 1 client)",
                reason_if_missed="see the in-process p99 of the same index scan beside it",
            )
        )
    else:
        out.append(Target(name, None, "not measured", top.get("skipped", "")))
    return out


def verify_target(inc: dict[str, Any] | None) -> Target:
    """Bulk == incremental on this run's stream: what ``tieline verify`` checks, row by row."""
    name = "bulk rebuild == worker-built generation, row by row (issue 15, verify)"
    if not inc:
        return Target(name, None, "not run (--incremental)")
    diff = inc["diff_vs_bulk"]
    bad = [t for t, d in diff.items() if not d["clean"]]
    return Target(
        name,
        not bad,
        f"{len(diff)} tables, {sum(d['bulk_rows'] for d in diff.values())} rows"
        + (f"; differ: {', '.join(bad)}" if bad else "; identical"),
        "see diff_vs_bulk in the results" if bad else "",
    )
