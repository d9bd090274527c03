"""Prometheus metrics of one server, served on an HTTP port of their own (``settings.metrics``).

Every server has its own ``CollectorRegistry`` (tests run several servers in one process), with
prometheus-client's process, platform and GC collectors. What is counted, and where:

- gRPC calls by service, method and final code, their durations, and streams open: the server's
  interceptor asks :meth:`ServerMetrics.meter` for one :class:`MethodMeter` per method.
- Inference per model: the InferenceMethods servicer calls :meth:`InferenceMeter.begin` and then
  ``answered`` or ``failed`` around each Infer call and InferStream frame; the stage histograms
  are observed from the result's ``Timings``. The pipeline reports each model run's batch size.
- Queue depth, busy instances, requests in flight and active clients are read when Prometheus
  scrapes (a collector asks the pipeline), so they cost nothing per request.
- Refusals by limit: a domain error's ``limit`` (``ResourceLimitError``), counted as it passes
  the servicer, plus the chat participants dropped by the chat hub.

The metric names, labels and buckets are the contract of the monitoring files under
``deploy/monitoring``; the README's Observability section lists them with their Triton
equivalents. Labels are bounded: no request ids and no peer addresses.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from visionrpc.errors import ResourceLimitError
from visionrpc.runtime.pipeline import ModelLoad
from visionrpc.runtime.repository import LoadedModel
from visionrpc.server.status import status_for
from visionrpc.types import InferenceResult

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""Seconds: from a tiny model on a GPU (1 ms) to a large image that hits the time budget."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
STAGES = ("decode", "preprocess", "queue", "inference", "postprocess")
UNKNOWN_MODEL = "_unknown"
"""The model label of requests for a model the server does not hold (a repository ignores names
that start with "_", so no real model has it); one series for all of them keeps labels bounded."""
REFUSAL_LIMITS = (
    "fairness.max_in_flight_per_client",
    "fairness.max_queue_per_client",
    "batching.max_queue_size",
    "max_image_pixels",
    "limits.max_mask_pixels",
    "limits.max_mask_detections",
    "limits.max_request_seconds",
    "fairness.chat_post_wait_s",
)
"""Limits whose refusals are counted; each has a series from the start (0), so rate() works."""
METRICS_PATH = "/metrics"


class MethodMeter:
    """One gRPC method's series: calls by code, duration, open streams (a MethodMeter)."""

    def __init__(self, metrics: ServerMetrics, service: str, method: str, streams: bool) -> None:
        self._requests = metrics.grpc_requests
        self._labels = (service, method)
        self._by_code: dict[str, Counter] = {}
        self._duration = metrics.grpc_duration.labels(service, method)
        self._streams = metrics.active_streams.labels(service, method) if streams else None

    def start(self) -> None:
        if self._streams is not None:
            self._streams.inc()

    def end(self, code: str, seconds: float) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._requests.labels(*self._labels, code)
        counter.inc()
        self._duration.observe(seconds)
        if self._streams is not None:
            self._streams.dec()


@dataclass(frozen=True)
class _ModelSeries:
    """One model's children of the per-model metrics, looked up once."""

    name: str
    version: str
    requests: Counter
    images: Counter
    duration: Histogram
    stages: tuple[Histogram, ...]  # in STAGES order
    queue_seconds: Counter
    compute_seconds: Counter
    executions: Counter
    batch_size: Histogram


Started = tuple[_ModelSeries, float]
"""What :meth:`InferenceMeter.begin` hands out: the request's model series and its start time."""


class InferenceMeter:
    """Per-model inference metrics, fed by the InferenceMethods servicer and its pipeline.

    ``begin``, ``answered`` and ``failed`` run on the server's event loop, ``batch`` in the model
    instances' threads (prometheus-client's metrics are thread-safe); the scrape only reads.
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics
        self._series: dict[str, _ModelSeries] = {}
        self._default = ""
        self.in_flight: collections.Counter[str] = collections.Counter()
        """Requests per model accepted and not yet answered (read at scrape time)."""
        self.refusals: collections.Counter[str] = collections.Counter()
        """Requests refused per limit (the setting's name)."""
        self._unknown = self._make_series(UNKNOWN_MODEL, "")

    def _make_series(self, name: str, version: str) -> _ModelSeries:
        m = self._m
        return _ModelSeries(
            name,
            version,
            m.inference_requests.labels(name, version),
            m.inference_images.labels(name, version),
            m.inference_duration.labels(name, version),
            tuple(m.stage_duration.labels(name, version, stage) for stage in STAGES),
            m.queue_seconds.labels(name, version),
            m.compute_seconds.labels(name, version),
            m.executions.labels(name, version),
            m.batch_size.labels(name),
        )

    def models_loaded(self, models: Iterable[LoadedModel], default: str) -> None:
        """Record each model's info, load time and instances, and create its series (at 0)."""
        m = self._m
        self._default = default
        for model in models:
            version = model.config.version
            self._series[model.name] = self._make_series(model.name, version)
            m.model_info.labels(
                model.name, version, model.onnx.provider, model.onnx.task.value
            ).set(1)
            m.load_duration.labels(model.name, version).set(model.load_seconds)
            m.instances.labels(model.name).set(model.instances)

    def model_unloaded(self, model: LoadedModel) -> None:
        """A version stopped serving (unloaded, or replaced by a reload): its info series go, so
        ``visionrpc_model_info`` lists what serves now; request counters stay, as counters do."""
        m, version = self._m, model.config.version
        with contextlib.suppress(KeyError):  # never recorded
            m.model_info.remove(model.name, version, model.onnx.provider, model.onnx.task.value)
            m.load_duration.remove(model.name, version)
            m.instances.remove(model.name)

    def begin(self, model: str) -> Started:
        """A request for ``model`` ("" = the default) starts."""
        series = self._series.get(model or self._default, self._unknown)
        self.in_flight[series.name] += 1
        return series, time.perf_counter()

    def answered(self, started: Started, result: InferenceResult) -> None:
        series, at = started
        self.in_flight[series.name] -= 1
        series.requests.inc()
        series.images.inc()
        series.duration.observe(time.perf_counter() - at)
        t = result.timings
        stage_ms = (t.decode_ms, t.preprocess_ms, t.queue_ms, t.inference_ms, t.postprocess_ms)
        for histogram, ms in zip(series.stages, stage_ms, strict=True):
            histogram.observe(ms / 1000)
        series.queue_seconds.inc(t.queue_ms / 1000)
        series.compute_seconds.inc(t.inference_ms / 1000)

    def answered_tensors(self, started: Started, samples: int) -> None:
        """A raw-view request of ``samples`` ready tensors was answered (no stages to time:
        its queue and model time are in the batch metrics)."""
        series, at = started
        self.in_flight[series.name] -= 1
        series.requests.inc()
        series.images.inc(samples)
        series.duration.observe(time.perf_counter() - at)

    def failed(self, started: Started, error: BaseException) -> None:
        """The request ended with ``error``; its reason is the gRPC code the caller gets."""
        series, at = started
        self.in_flight[series.name] -= 1
        series.requests.inc()
        series.duration.observe(time.perf_counter() - at)
        if isinstance(error, ResourceLimitError) and error.limit:
            self.refusals[error.limit] += 1
        # not an Exception: the caller went away (asyncio.CancelledError)
        reason = status_for(error)[0].name if isinstance(error, Exception) else "CANCELLED"
        self._m.inference_failures.labels(series.name, series.version, reason).inc()

    def batch(self, model: str, size: int) -> None:
        """A run of ``size`` requests of ``model`` starts (the pipeline's ``on_batch``)."""
        series = self._series.get(model)
        if series is not None:
            series.executions.inc()
            series.batch_size.observe(size)


class _LiveCollector(Collector):
    """The gauges read when Prometheus scrapes, and the refusal counts."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        depth = GaugeMetricFamily(
            "visionrpc_inference_queue_depth",
            "Requests admitted or queued for the model, not yet running.",
            labels=["model"],
        )
        busy = GaugeMetricFamily(
            "visionrpc_model_instances_busy",
            "Instances of the model running a batch or a lone request now.",
            labels=["model"],
        )
        in_flight = GaugeMetricFamily(
            "visionrpc_inference_in_flight",
            "Requests for the model accepted by the server and not yet answered.",
            labels=["model"],
        )
        loads: dict[str, ModelLoad] = {}
        for source in list(m.load_sources):
            loads.update(source())
        for name, load in loads.items():
            depth.add_metric([name], load.queue_depth)
            busy.add_metric([name], load.instances_busy)
        meter = m.inference
        if meter is not None:
            for name, count in list(meter.in_flight.items()):
                in_flight.add_metric([name], count)
        clients = GaugeMetricFamily(
            "visionrpc_active_clients",
            "Clients (connections, or tokens when tokens are on) with Infer calls or "
            "InferStream streams in work.",
            value=sum(source() for source in list(m.client_sources)),
        )
        refused = CounterMetricFamily(
            "visionrpc_refused",
            "Requests or messages refused by a limit, by the setting that refused them.",
            labels=["limit"],
        )
        counts: collections.Counter[str] = collections.Counter(dict.fromkeys(REFUSAL_LIMITS, 0))
        if meter is not None:
            counts.update(dict(meter.refusals))
        for counted in list(m.refusal_sources):
            counts.update(dict(counted()))
        for limit, count in counts.items():
            refused.add_metric([limit], count)
        yield from (depth, busy, in_flight, clients, refused)


class ServerMetrics:
    """The metrics of one server: its registry, the metric families, and the HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        duration = DURATION_BUCKETS
        self.grpc_requests = Counter(
            "visionrpc_grpc_requests_total",
            "gRPC calls by service, method and final status code (refused calls included).",
            ["service", "method", "code"],
            registry=registry,
        )
        self.grpc_duration = Histogram(
            "visionrpc_grpc_request_duration_seconds",
            "gRPC call duration, from the handler's start to its end (streams: while open).",
            ["service", "method"],
            buckets=duration,
            registry=registry,
        )
        self.active_streams = Gauge(
            "visionrpc_active_streams",
            "Streaming calls open now.",
            ["service", "method"],
            registry=registry,
        )
        per_model = ["model", "version"]
        self.inference_requests = Counter(
            "visionrpc_inference_requests_total",
            "Inference requests (Infer calls and InferStream frames), answered or failed.",
            per_model,
            registry=registry,
        )
        self.inference_failures = Counter(
            "visionrpc_inference_failures_total",
            "Inference requests that failed, by reason (the gRPC status code name).",
            [*per_model, "reason"],
            registry=registry,
        )
        self.inference_images = Counter(
            "visionrpc_inference_images_total",
            "Images (or video frames) answered.",
            per_model,
            registry=registry,
        )
        self.executions = Counter(
            "visionrpc_inference_executions_total",
            "Model runs (a batch or a lone request each).",
            per_model,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "visionrpc_inference_request_duration_seconds",
            "Inference request duration in the server, from the request's arrival to its answer.",
            per_model,
            buckets=duration,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "visionrpc_inference_stage_duration_seconds",
            "Time of each answered request in each stage (decode, preprocess, queue, inference, "
            "postprocess); a batch's model time counts for each of its requests.",
            [*per_model, "stage"],
            buckets=duration,
            registry=registry,
        )
        self.queue_seconds = Counter(
            "visionrpc_inference_queue_seconds_total",
            "Seconds answered requests waited for a model instance.",
            per_model,
            registry=registry,
        )
        self.compute_seconds = Counter(
            "visionrpc_inference_compute_seconds_total",
            "Seconds of model runs of answered requests (a batch's for each of its requests).",
            per_model,
            registry=registry,
        )
        self.batch_size = Histogram(
            "visionrpc_inference_batch_size",
            "Requests per model run.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.instances = Gauge(
            "visionrpc_model_instances",
            "Instances of the model (runs that may happen at once).",
            ["model"],
            registry=registry,
        )
        self.model_info = Gauge(
            "visionrpc_model_info",
            "1 for each loaded model, with its version, execution provider and task.",
            ["model", "version", "execution_provider", "task"],
            registry=registry,
        )
        self.load_duration = Gauge(
            "visionrpc_model_load_duration_seconds",
            "How long loading the model took at start-up.",
            per_model,
            registry=registry,
        )
        self.inference: InferenceMeter | None = None
        self.load_sources: list[Callable[[], Mapping[str, ModelLoad]]] = []
        self.client_sources: list[Callable[[], int]] = []
        self.refusal_sources: list[Callable[[], Mapping[str, int]]] = []
        registry.register(_LiveCollector(self))
        self._meters: dict[tuple[str, str], MethodMeter] = {}
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def meter(self, service: str, method: str, streams: bool) -> MethodMeter:
        """The series of one gRPC method (interceptors.CallMeters)."""
        key = (service, method)
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = MethodMeter(self, service, method, streams)
        return meter

    def inference_meter(self) -> InferenceMeter:
        """The per-model inference metrics (one InferenceMethods service per server)."""
        if self.inference is None:
            self.inference = InferenceMeter(self)
        return self.inference

    # -- HTTP ------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` from a thread; the bound port. OSError when the
        address cannot be listened on."""
        self._http, self._thread = start_http_server(port, host, self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop serving (blocks up to the HTTP server's poll interval)."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
