"""Checks of the monitoring files in deploy/ (``.ci/validate-deploy`` runs :func:`check`).

* ``deploy/prometheus/alerts.yaml``: the rule-file structure (groups with a name and rules;
  each alert with ``expr``, a ``severity`` of warning or critical and a ``summary``), and
  every ``tieline_*`` / ``faststream_*`` metric it names is one the code exports.
* ``deploy/grafana/tieline-dashboard.json``: parses; panel ids are unique; every query names
  only exported metrics.
* With ``promtool`` on PATH (Debian's ``prometheus`` package): ``promtool check rules``, the
  alert unit tests (``promtool test rules alerts.test.yaml``), ``promtool check config`` of
  ``prometheus.yaml``, and every dashboard query parsed as PromQL (written as recording
  rules into a temporary file for ``promtool check rules``, Grafana's variables replaced).
  Without promtool the PromQL itself is not parsed, and the report says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "tieline-dashboard.json"
_METRIC = re.compile(r"\b((?:tieline|faststream)_[a-z0-9_]+)\b")
#: Grafana variables and what they stand for when a query is parsed as plain PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$api_job": "tieline-api",
    "$service_job": "tieline-people|tieline-interactions",
    "$worker_job": "tieline-worker",
}


def exported_metrics() -> set[str]:
    """Every sample name tieline's processes can export (plumbing/metrics.py and FastStream's
    Prometheus middleware), with the suffixes Prometheus adds per type."""
    from prometheus_client import REGISTRY
    from tieline.plumbing import metrics

    metrics.faststream_middleware()  # registers FastStream's metrics
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for family in REGISTRY.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def _unknown(expr: str, known: set[str]) -> list[str]:
    return sorted(set(_METRIC.findall(expr)) - known)


def check_rules(path: Path, known: set[str]) -> list[str]:
    """Structure of a Prometheus rule file, and its metric names."""
    doc = yaml.safe_load(path.read_text())
    errors: list[str] = []
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not groups:
        return ["no 'groups' list"]
    for group in groups:
        name = group.get("name")
        rules = group.get("rules")
        if not isinstance(name, str) or not isinstance(rules, list) or not rules:
            errors.append(f"group {name!r}: needs a name and a non-empty 'rules' list")
            continue
        for rule in rules:
            alert = rule.get("alert")
            where = f"group {name}: alert {alert!r}"
            if not isinstance(alert, str) or not isinstance(rule.get("expr"), str):
                errors.append(f"{where}: needs 'alert' and a string 'expr'")
                continue
            if (rule.get("labels") or {}).get("severity") not in ("warning", "critical"):
                errors.append(f"{where}: labels.severity must be warning or critical")
            if not (rule.get("annotations") or {}).get("summary"):
                errors.append(f"{where}: annotations.summary is missing")
            errors += [f"{where}: unknown metric {m}" for m in _unknown(rule["expr"], known)]
    return errors


def dashboard_queries(path: Path) -> tuple[list[str], list[str]]:
    """(queries, structural errors) of a Grafana dashboard."""
    dash: dict[str, Any] = json.loads(path.read_text())
    errors: list[str] = []
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        errors.append("panel ids are not unique")
    queries = [
        t["expr"]
        for p in dash.get("panels", [])
        for t in p.get("targets", [])
        if isinstance(t.get("expr"), str)
    ]
    if not queries:
        errors.append("no queries")
    return queries, errors


def _promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def promtool_checks(queries: list[str]) -> list[str]:
    """promtool's own checks (see the module docstring); [] when all pass."""
    promtool = shutil.which("promtool")
    assert promtool is not None
    errors = []
    runs = [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
        ["check", "config", "prometheus.yaml"],
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "dashboard-queries.yaml"
        records = [{"record": f"dashboard:q{i}", "expr": _promql(q)} for i, q in enumerate(queries)]
        rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
        runs.append(["check", "rules", str(rules)])
        for args in runs:
            done = subprocess.run(
                [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                errors.append(f"promtool {' '.join(args)}: {(done.stdout + done.stderr).strip()}")
    return errors


def check() -> tuple[list[str], list[str]]:
    """(lines to print, failures) for .ci/validate-deploy."""
    known = exported_metrics()
    out: list[str] = []
    failures = [
        f"prometheus/alerts.yaml: {e}" for e in check_rules(PROMETHEUS / "alerts.yaml", known)
    ]
    queries, errors = dashboard_queries(DASHBOARD)
    errors += [f"query {q!r}: unknown metric {m}" for q in queries for m in _unknown(q, known)]
    failures += [f"grafana/tieline-dashboard.json: {e}" for e in errors]
    out.append(
        f"alert rules and dashboard ({len(queries)} queries) against the exported metrics: "
        f"{'ok' if not failures else 'FAILED'}"
    )
    if shutil.which("promtool"):
        problems = promtool_checks(queries)
        out.append(
            "promtool check rules, test rules, check config, dashboard PromQL: "
            f"{'ok' if not problems else 'FAILED'}"
        )
        failures += problems
    else:
        out.append(
            "promtool not found (apt-get install prometheus): PromQL not parsed, "
            "alert unit tests not run; rule-file structure and metric names checked only"
        )
    return out, failures
