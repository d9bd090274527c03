"""The monitoring set under deploy/monitoring and the issue-10 metrics contract it is written to.

Shared by the tests of this folder: where the files are, the PromQL expressions they hold, and
the metric and label names those expressions use.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
RULES = MONITORING / "rules.yml"
RULES_TEST = MONITORING / "rules_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "visionrpc.json"
GRAFANA_DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = MONITORING / "grafana" / "provisioning" / "dashboards" / "visionrpc.yml"

CONTRACT_METRICS: dict[str, str] = {
    "visionrpc_grpc_requests_total": "counter",
    "visionrpc_grpc_request_duration_seconds": "histogram",
    "visionrpc_active_streams": "gauge",
    "visionrpc_active_clients": "gauge",
    "visionrpc_refused_total": "counter",
    "visionrpc_inference_requests_total": "counter",
    "visionrpc_inference_failures_total": "counter",
    "visionrpc_inference_images_total": "counter",
    "visionrpc_inference_executions_total": "counter",
    "visionrpc_inference_request_duration_seconds": "histogram",
    "visionrpc_inference_stage_duration_seconds": "histogram",
    "visionrpc_inference_queue_seconds_total": "counter",
    "visionrpc_inference_compute_seconds_total": "counter",
    "visionrpc_inference_queue_depth": "gauge",
    "visionrpc_inference_in_flight": "gauge",
    "visionrpc_inference_batch_size": "histogram",
    "visionrpc_model_instances": "gauge",
    "visionrpc_model_instances_busy": "gauge",
    "visionrpc_model_info": "gauge",
    "visionrpc_model_load_duration_seconds": "gauge",
}
"""The metrics of the contract (README's metrics table), by exposed name, with their types."""

CONTRACT_LABELS = frozenset(
    {"service", "method", "code", "model", "version", "stage", "reason", "limit"}
    | {"execution_provider", "task"}
)
TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""

PROCESS_METRICS = frozenset(
    {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"}
)
"""The prometheus-client process collector's series the monitoring set reads."""

_METRIC = re.compile(r"(?<![\w:$])((?:visionrpc|process)_[a-z_]+)(?![\w:])")
_RECORDED = re.compile(r"(?<![\w$])([a-z_]+:[a-z_]*:[a-z0-9_]+)(?![\w:])")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")
_HISTOGRAM_SERIES = re.compile(r"_(?:bucket|sum|count)$")

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*", "$model": ".*"}
"""What a Grafana variable stands for when a dashboard query is sent to Prometheus directly."""


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    """The dashboard's panels, rows left out."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def variable_queries() -> list[str]:
    """The PromQL of the dashboard's query variables (label_values(METRIC{...}, label))."""
    return [v["definition"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def rule_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in rules()]


def recorded_names() -> list[str]:
    return [rule["record"] for rule in rules() if "record" in rule]


def metric_names(expr: str) -> set[str]:
    """The scraped metrics an expression reads, histogram series reduced to the histogram's name
    (a loose parse: names of visionrpc_ and process_ series not part of a recorded name)."""
    return {_HISTOGRAM_SERIES.sub("", name) for name in _METRIC.findall(expr)}


def recorded_names_used(expr: str) -> set[str]:
    """The recording rules' series (level:metric:operations) an expression reads."""
    return set(_RECORDED.findall(expr))


def label_names(expr: str) -> set[str]:
    """Labels named in matchers and in by/without/on/ignoring clauses."""
    grouped = {name.strip() for group in _GROUPING.findall(expr) for name in group.split(",")}
    return (grouped | set(_MATCHER.findall(expr))) - {""}


def as_promql(expr: str) -> str:
    """A dashboard query as Prometheus takes it: Grafana's variables replaced by what "All" and
    the rate interval stand for."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr
