"""The monitoring files in deploy/ (alert rules, Grafana dashboard, Prometheus config) pass
the checks .ci/validate-deploy runs, and those checks catch what they claim to."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy import observability


def test_shipped_alerts_and_dashboard_pass() -> None:
    lines, failures = observability.check()
    assert failures == [], failures
    assert lines


def test_a_rule_naming_a_metric_tieline_does_not_export_is_caught(tmp_path: Path) -> None:
    doc = yaml.safe_load((observability.PROMETHEUS / "alerts.yaml").read_text())
    rule = doc["groups"][0]["rules"][0]
    rule["expr"] = "max(tieline_projection_lag) > 1"  # the gauge is ..._lag_events
    del rule["labels"]
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(doc))
    errors = observability.check_rules(path, observability.exported_metrics())
    assert any("unknown metric tieline_projection_lag" in e for e in errors), errors
    assert any("severity" in e for e in errors), errors


def test_every_metric_the_dashboard_and_alerts_use_is_exported() -> None:
    known = observability.exported_metrics()
    assert {
        "tieline_projection_lag_events",
        "tieline_dlq_messages",
        "tieline_http_request_duration_seconds_bucket",
        "tieline_command_events_total",
        "faststream_received_processed_messages_duration_seconds_bucket",
    } <= known
    queries, errors = observability.dashboard_queries(observability.DASHBOARD)
    assert errors == []
    used = {m for q in queries for m in observability._METRIC.findall(q)}
    assert used and used <= known


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_rejects_a_query_that_is_not_promql() -> None:
    problems = observability.promtool_checks(["sum(rate(tieline_http_requests_total[5m])"])
    assert problems and "dashboard-queries" in problems[-1]
