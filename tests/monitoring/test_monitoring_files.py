"""The monitoring set reads only the metrics and labels of the contract, and is wired together:
dashboard variables and data source, Grafana provisioning, rules with severities and help.

The metric list is the issue-10 contract (monitoring_files.CONTRACT_METRICS); the
Prometheus test (test_prometheus.py) checks the same names against a real server's /metrics.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.monitoring.monitoring_files import (
    CONTRACT_LABELS,
    CONTRACT_METRICS,
    GRAFANA_DASHBOARDS,
    GRAFANA_DATASOURCES,
    PROCESS_METRICS,
    PROMETHEUS_CONFIG,
    RULES,
    TARGET_LABELS,
    dashboard,
    dashboard_exprs,
    label_names,
    load_yaml,
    metric_names,
    panels,
    recorded_names,
    recorded_names_used,
    rule_exprs,
    rules,
    variable_queries,
)

KNOWN = set(CONTRACT_METRICS) | PROCESS_METRICS

PANELS_ASKED_FOR = {
    "Request rate by method and code",
    "Error ratio per model",
    "Inference latency per model (p50, p95, p99)",
    "Stage latency (p95)",
    "Queue depth",
    "In flight",
    "Batch size",
    "Instances busy",
    "Queue ÷ compute per model",
    "Refused by limit",
    "Active streams and clients",
    "Model info",
    "Process CPU",
    "Process memory (RSS)",
}


def test_dashboard_reads_only_contract_metrics() -> None:
    used = set().union(*map(metric_names, dashboard_exprs() + variable_queries()))
    assert used - KNOWN == set()
    # every metric of the contract is on the dashboard somewhere
    assert set(CONTRACT_METRICS) - used == set()


def test_dashboard_needs_no_recording_rules() -> None:
    """The dashboard works on any Prometheus that scrapes the server, rules loaded or not."""
    assert set().union(*map(recorded_names_used, dashboard_exprs())) == set()


def test_rules_read_only_contract_metrics_and_their_own_records() -> None:
    used = set().union(*map(metric_names, rule_exprs()))
    assert used - KNOWN == set()
    assert set().union(*map(recorded_names_used, rule_exprs())) <= set(recorded_names())


def test_recording_rules_are_defined_before_they_are_read() -> None:
    """Rules of a group run in order: a record read before the rule of its own group that writes
    it would lag one evaluation behind."""
    for group in load_yaml(RULES)["groups"]:
        unwritten = {rule["record"] for rule in group["rules"] if "record" in rule}
        for rule in group["rules"]:
            assert not recorded_names_used(str(rule["expr"])) & unwritten, rule
            unwritten.discard(rule.get("record"))


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_queries_use_only_contract_labels(source: str) -> None:
    exprs = dashboard_exprs() + variable_queries() if source == "dashboard" else rule_exprs()
    used = set().union(*map(label_names, exprs))
    assert used - CONTRACT_LABELS - TARGET_LABELS - {"le"} == set()


def test_the_contract_expressions_are_recorded_word_for_word() -> None:
    """The error ratio, p99 and queue÷compute of the contract, as the autoscaler will use them."""
    exprs = {" ".join(str(r["expr"]).split()) for r in rules() if "record" in r}
    assert (
        "sum(rate(visionrpc_inference_failures_total[5m])) "
        "/ sum(rate(visionrpc_inference_requests_total[5m]))"
    ) in exprs
    assert (
        "histogram_quantile(0.99, sum by (le, model) "
        "(rate(visionrpc_inference_request_duration_seconds_bucket[5m])))"
    ) in exprs
    assert (
        "sum by (model) (rate(visionrpc_inference_queue_seconds_total[1m])) "
        "/ sum by (model) (rate(visionrpc_inference_compute_seconds_total[1m]))"
    ) in exprs


def test_alerts_have_a_severity_and_say_what_to_do() -> None:
    alerts = [r for r in rules() if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert {
        "VisionrpcTargetDown",
        "VisionrpcErrorRatioHigh",
        "VisionrpcLatencyP99High",
        "VisionrpcQueueTimeHigh",
        "VisionrpcQueueDepthHigh",
    } <= names
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        assert len(alert["annotations"]["description"]) > 100, alert["alert"]


def test_dashboard_variables_and_data_source() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["definition"].startswith("label_values(visionrpc_model_info")
    assert variables["model"]["includeAll"] and variables["model"]["allValue"] == ".*"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    for expr in dashboard_exprs():
        if "model" in label_names(expr) and "model=~" not in expr:
            pytest.fail(f"a per-model query ignores the model variable: {expr}")


def test_dashboard_has_the_panels_asked_for_laid_out_without_overlap() -> None:
    board_panels = dashboard()["panels"]
    assert {p["title"] for p in board_panels} >= PANELS_ASKED_FOR
    ids = [p["id"] for p in board_panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board_panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    sources: list[dict[str, Any]] = load_yaml(GRAFANA_DATASOURCES)["datasources"]
    assert [(s["type"], s["url"]) for s in sources] == [("prometheus", "http://prometheus:9090")]
    providers: list[dict[str, Any]] = load_yaml(GRAFANA_DASHBOARDS)["providers"]
    assert [(p["type"], p["options"]["path"]) for p in providers] == [
        ("file", "/var/lib/grafana/dashboards")
    ]


def test_prometheus_config_scrapes_the_metrics_port_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "visionrpc"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9464"]}]
