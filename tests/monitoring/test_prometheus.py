"""A real Prometheus (Debian's `prometheus` binary) with deploy/monitoring's config and rules,
scraping a real `visionrpc serve --metrics-port`: after N Infer calls it counts N, the recording
rules evaluate without error, and every dashboard panel's queries run and return data.

The same checks run against ``contract_exporter``: a prometheus_client HTTP server in this process
that exposes the contract's metrics with made-up values. It validates the rules and the dashboard
queries on a real Prometheus while a server without metrics cannot (before the metrics work is
merged); it is no stand-in for the server, whose test is ``test_prometheus_counts_real_calls``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port
from tests.monitoring.monitoring_files import (
    PROMETHEUS_CONFIG,
    RULES,
    as_promql,
    dashboard_exprs,
    load_yaml,
    metric_names,
    panels,
    recorded_names,
    rule_exprs,
    variable_queries,
)
from tests.runtime.onnx_builders import tiny_models
from tests.server.drain_helpers import frame, killed_at_exit, start_serve, wait_serving
from visionrpc.settings import Settings
from visionrpc.v1 import inference_pb2_grpc

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (Debian: apt-get install prometheus; .ci/run does it)",
)

WAIT_S = 60.0
"""Bound on every wait for Prometheus (start, scrapes, rule evaluations); 1 s intervals."""

CALLS = 12
MODEL = "tiny"

DATA_NEEDS_A_FAILURE = {"Failures by reason", "Refused by limit"}
"""Panels that stay empty until a request fails or a limit refuses one (the tests make none)."""


# -- a Prometheus of our own -----------------------------------------------------------------------


class Prometheus:
    """A Prometheus process on a loopback port and its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def get(self, path: str, **params: str) -> Any:
        """GET an API path; the `data` of a success, an AssertionError with the error otherwise."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (a scalar comes back as one sample without labels)."""
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(
        self, expr: str, done: Callable[[list[dict[str, Any]]], bool]
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_S
        while not done(result := self.query(expr)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} is {result} after {WAIT_S} s")
            time.sleep(0.25)
        return result

    def wait_for_value(self, expr: str, value: float) -> None:
        self.wait_for(expr, lambda r: len(r) == 1 and float(r[0]["value"][1]) == value)


@contextlib.contextmanager
def running_prometheus(tmp: Path, target: str) -> Iterator[Prometheus]:
    """Prometheus with deploy/monitoring/prometheus.yml and rules.yml, scraping ``target`` (and
    evaluating the rules) every second; stopped at the end."""
    assert PROMETHEUS is not None
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert process.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as reply,
            ):
                if reply.status == 200:
                    break
            assert time.monotonic() < deadline, f"prometheus not ready: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


# -- what both targets must give -------------------------------------------------------------------


def check_monitoring_set(prometheus: Prometheus, make_calls: Callable[[int], None]) -> None:
    """N calls in two halves (so rates are not 0), counted exactly; rules and panels evaluate."""
    prometheus.wait_for_value('up{job="visionrpc"}', 1)
    make_calls(CALLS // 2)
    prometheus.wait_for_value("sum(visionrpc_inference_requests_total)", CALLS // 2)
    make_calls(CALLS - CALLS // 2)
    prometheus.wait_for_value("sum(visionrpc_inference_requests_total)", CALLS)
    by_model = prometheus.query("sum by (model) (visionrpc_inference_requests_total > 0)")
    assert [(s["metric"], s["value"][1]) for s in by_model] == [({"model": MODEL}, str(CALLS))]

    # a recording rule of rules.yml evaluates on the scraped series
    rate = prometheus.wait_for(
        f'model:visionrpc_inference_requests:rate5m{{model="{MODEL}"}}',
        lambda r: len(r) == 1 and float(r[0]["value"][1]) > 0,
    )
    assert rate[0]["metric"] == {"__name__": "model:visionrpc_inference_requests:rate5m"} | {
        "model": MODEL
    }
    p99 = prometheus.wait_for(
        f'model:visionrpc_inference_request_duration_seconds:p99_rate5m{{model="{MODEL}"}}',
        lambda r: len(r) == 1 and r[0]["value"][1] != "NaN",
    )
    assert 0 < float(p99[0]["value"][1]) <= 30  # within the histogram's buckets

    # every rule loaded, and evaluated without error on these series
    groups = prometheus.get("/api/v1/rules")["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in loaded if r["type"] == "recording"} == set(recorded_names())
    assert len(loaded) == len(rule_exprs())
    assert [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"] == []

    # every dashboard query runs (Grafana's variables at "All"), and every panel gets data
    empty = []
    for panel in panels():
        answers = [prometheus.query(as_promql(t["expr"])) for t in panel["targets"]]
        if not any(answers) and panel["title"] not in DATA_NEEDS_A_FAILURE:
            empty.append(panel["title"])
    assert empty == []
    for definition in variable_queries():
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", definition)
        assert match, definition
        selector, label = match.groups()
        assert {s["metric"].get(label) for s in prometheus.query(as_promql(selector))} != {None}


# -- the real server -------------------------------------------------------------------------------


def server_has_metrics() -> bool:
    return find_spec("visionrpc.server.metrics") is not None and "metrics" in Settings.model_fields


@pytest.fixture(scope="module")
def serve_with_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`visionrpc serve --metrics-port` with one tiny model: (gRPC address, metrics address)."""
    if not server_has_metrics():
        pytest.skip(
            "the server has no Prometheus metrics yet (no visionrpc.server.metrics module or "
            "no `metrics` settings group): issue 10 item 1"
        )
    root = tmp_path_factory.mktemp("serve")
    models = root / "models"
    models.mkdir()
    port, metrics_port = free_port(), free_port()
    process = start_serve(
        port, tiny_models(models), root / "serve.log", "--metrics-port", str(metrics_port)
    )
    with killed_at_exit(process):
        wait_serving(f"127.0.0.1:{port}", process)
        yield f"127.0.0.1:{port}", f"127.0.0.1:{metrics_port}"


def test_dashboard_and_rules_read_metrics_the_server_exposes(
    serve_with_metrics: tuple[str, str],
) -> None:
    """The names in the monitoring set against the real /metrics (families with no sample yet
    are listed too: prometheus-client writes their HELP and TYPE)."""
    _, metrics_address = serve_with_metrics
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    exposed = set()
    for family in text_string_to_metric_families(text):
        exposed.add(family.name + ("_total" if family.type == "counter" else ""))
    used = set().union(*map(metric_names, dashboard_exprs() + variable_queries() + rule_exprs()))
    assert used - exposed == set()


def test_prometheus_counts_real_calls(serve_with_metrics: tuple[str, str], tmp_path: Path) -> None:
    address, metrics_address = serve_with_metrics

    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)

        def infer(n: int) -> None:
            for i in range(n):
                reply = stub.Infer(frame(f"prom-{i}"), timeout=30)
                assert reply.request_id == f"prom-{i}"

        with running_prometheus(tmp_path, metrics_address) as prometheus:
            check_monitoring_set(prometheus, infer)


# -- the contract exporter: the monitoring set checked before the server has metrics ---------------


class ContractExporter:
    """The contract's metrics in a registry of their own, moved as ``n`` Infer calls to MODEL
    would move them; served over HTTP by prometheus-client."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        model = ("model", "version")
        self.grpc_requests = Counter(
            "visionrpc_grpc_requests_total", "", ["service", "method", "code"], registry=registry
        )
        self.grpc_duration = Histogram(
            "visionrpc_grpc_request_duration_seconds", "", ["service", "method"], registry=registry
        )
        self.streams = Gauge(
            "visionrpc_active_streams", "", ["service", "method"], registry=registry
        )
        self.clients = Gauge("visionrpc_active_clients", "", registry=registry)
        self.refused = Counter("visionrpc_refused_total", "", ["limit"], registry=registry)
        self.requests = Counter("visionrpc_inference_requests_total", "", model, registry=registry)
        self.failures = Counter(
            "visionrpc_inference_failures_total", "", [*model, "reason"], registry=registry
        )
        self.images = Counter("visionrpc_inference_images_total", "", model, registry=registry)
        self.executions = Counter(
            "visionrpc_inference_executions_total", "", model, registry=registry
        )
        self.duration = Histogram(
            "visionrpc_inference_request_duration_seconds", "", model, registry=registry
        )
        self.stages = Histogram(
            "visionrpc_inference_stage_duration_seconds", "", [*model, "stage"], registry=registry
        )
        self.queue_s = Counter(
            "visionrpc_inference_queue_seconds_total", "", model, registry=registry
        )
        self.compute_s = Counter(
            "visionrpc_inference_compute_seconds_total", "", model, registry=registry
        )
        self.depth = Gauge("visionrpc_inference_queue_depth", "", ["model"], registry=registry)
        self.in_flight = Gauge("visionrpc_inference_in_flight", "", ["model"], registry=registry)
        self.batch = Histogram(
            "visionrpc_inference_batch_size", "", ["model"], buckets=(1, 2, 4, 8), registry=registry
        )
        self.instances = Gauge("visionrpc_model_instances", "", ["model"], registry=registry)
        self.busy = Gauge("visionrpc_model_instances_busy", "", ["model"], registry=registry)
        info = Gauge(
            "visionrpc_model_info",
            "",
            [*model, "execution_provider", "task"],
            registry=registry,
        )
        info.labels(MODEL, "1", "CPUExecutionProvider", "detect").set(1)
        load = Gauge("visionrpc_model_load_duration_seconds", "", model, registry=registry)
        load.labels(MODEL, "1").set(0.05)
        self.instances.labels(MODEL).set(1)
        for gauge in (self.depth, self.in_flight, self.busy):
            gauge.labels(MODEL).set(0)

    def infer(self, n: int) -> None:
        for _ in range(n):
            self.grpc_requests.labels("visionrpc.v1.InferenceMethods", "Infer", "OK").inc()
            self.grpc_duration.labels("visionrpc.v1.InferenceMethods", "Infer").observe(0.004)
            self.requests.labels(MODEL, "1").inc()
            self.images.labels(MODEL, "1").inc()
            self.executions.labels(MODEL, "1").inc()
            self.duration.labels(MODEL, "1").observe(0.003)
            for stage in ("decode", "preprocess", "queue", "inference", "postprocess"):
                self.stages.labels(MODEL, "1", stage).observe(0.0005)
            self.queue_s.labels(MODEL, "1").inc(0.0005)
            self.compute_s.labels(MODEL, "1").inc(0.001)
            self.batch.labels(MODEL).observe(1)
        self.streams.labels("visionrpc.v1.InferenceMethods", "InferStream").set(0)
        self.clients.set(1)


@pytest.fixture
def contract_exporter() -> Iterator[tuple[ContractExporter, str]]:
    exporter = ContractExporter()
    port = free_port()
    server, thread = start_http_server(port, "127.0.0.1", registry=exporter.registry)
    yield exporter, f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_rules_and_dashboard_queries_evaluate_on_the_contract_metrics(
    contract_exporter: tuple[ContractExporter, str], tmp_path: Path
) -> None:
    exporter, address = contract_exporter
    with running_prometheus(tmp_path, address) as prometheus:
        check_monitoring_set(prometheus, exporter.infer)
