"""Render ``bench/results/*.json`` as Markdown (the tables of docs/performance.md).

python -m bench report            # every result file, in the benchmarks' order
python -m bench report freshness  # ... except those named
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.common import RESULTS_DIR, fmt_num, fmt_ratio

ORDER = (
    "ingest",
    "projection",
    "rebuild",
    "freshness",
    "freshness-batch",
    "queries",
    "peer",
    "scaling",
    "sse",
    "sse-workspace",
)


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def table(result: dict[str, Any], title: str | None = None) -> str:
    code = result.get("code") or {}
    at = (
        f"code {code['commit']}" + (" + uncommitted changes" if code.get("modified") else "")
        if code.get("commit")
        else "code: not recorded"
    )
    lines = [
        f"### {title or result['name']} ({result.get('finished_at', '')[:16]}, "
        f"{result.get('duration_s') or 0:.0f} s; argv `{' '.join(result['argv'][1:])}`; "
        f"{at})",
        "",
        "| metric | value | unit | same-run reference | ref value | ratio | note |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {_md(r['metric'])} | {fmt_num(r['value'])} | {r['unit']} | "
            f"{_md(r['limit_name'] or '-')} | {fmt_num(r['limit_value'])} | "
            f"{fmt_ratio(r['ratio'])} | {_md(r['note'])} |"
        )
    if result.get("targets"):
        lines += ["", "| target | verdict | measured | reason for a miss |", "|---|---|---|---|"]
        for t in result["targets"]:
            v = "not measured" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
            lines.append(f"| {_md(t['name'])} | {v} | {_md(t['measured'])} | {_md(t['reason'])} |")
    act = result.get("activity_before") or {}
    if act.get("other_processes"):
        lines += [
            "",
            f"Other activity at start: load {act['loadavg'][0]:.1f}; "
            f"{'; '.join(p[:70] for p in act['other_processes'][:3])}",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    files = {p.stem: p for p in RESULTS_DIR.glob("*.json")}
    names = [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    if not names:
        print("no results yet: run python -m bench all", file=sys.stderr)
        return 1
    skip = set(argv or [])
    for n in names:
        if n not in skip:
            print(table(json.loads(files[n].read_text()), n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
