"""Tracing configured by the standard OTEL_* variables: when it is on, and spans sent with the
OTLP exporter to a throwaway OTLP/gRPC receiver (the collector's TraceService) on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.helpers import make_settings, modules_imported_by
from tests.runtime.onnx_builders import tiny_models
from tests.server.test_tracing import IMAGE, INFER
from visionrpc.client import AsyncClient
from visionrpc.server.app import StartupError, VisionServer
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.otel import STAGES
from visionrpc.server.tracing import configured

OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "line-3"}, False),  # naming the service asks for no exporter
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ],
)
def test_when_tracing_is_configured(environ: dict[str, str], on: bool) -> None:
    assert configured(environ) is on


def test_the_server_imports_no_opentelemetry() -> None:
    """Not configured costs nothing: not even the import."""
    assert modules_imported_by("visionrpc.server.app", ("opentelemetry",)) == []


def test_configured_without_opentelemetry_warns_and_runs_without_traces() -> None:
    """As on an install without the tracing extra (OpenTelemetry made unimportable)."""
    code = (
        "import logging, sys; sys.modules['opentelemetry'] = None; logging.basicConfig(); "
        "from visionrpc.server.tracing import load; print(load())"
    )
    environ = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    assert (
        "WARNING:visionrpc.server.tracing:the OTEL_* variables ask for traces but OpenTelemetry "
        "is not installed (no module 'opentelemetry'): tracing is off; install "
        "visionrpc[tracing], or unset them"
    ) in done.stderr


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    kept = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(kept, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield kept, port
    await server.stop(0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("models"))


async def test_spans_go_to_the_otlp_endpoint_of_the_environment(
    receiver: tuple[Receiver, int], models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, port = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "inspection-line-3")
    settings = make_settings(models_dir=models, access_log=False)
    server = VisionServer(settings, [InferenceServicer(settings)])
    await server.start()
    try:
        async with AsyncClient(server.address) as client:
            result = await client.infer(IMAGE, request_id="otlp-1")
    finally:
        await server.stop(0)  # sends the spans still buffered
    assert result.model == "tiny"
    spans: list[Any] = []
    for request in kept.requests:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert attributes["service.name"] == "inspection-line-3"
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "visionrpc"
                spans.extend(scope_spans.spans)
    (call,) = [s for s in spans if s.name == INFER]
    stages = [s for s in spans if s.parent_span_id == call.span_id]
    assert sorted(s.name for s in stages) == sorted(STAGES)
    assert all(s.trace_id == call.trace_id for s in stages)
    call_attributes = {a.key: a.value for a in call.attributes}
    assert call_attributes["visionrpc.request_id"].string_value == "otlp-1"
    assert call_attributes["rpc.method"].string_value == "Infer"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "OTEL_TRACES_EXPORTER",
            "zipkin",
            "OTEL_TRACES_EXPORTER names 'zipkin', which is not installed; use otlp",
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "carrier-pigeon",
            "the OTLP protocol is 'carrier-pigeon' (OTEL_EXPORTER_OTLP_PROTOCOL); use grpc or",
        ),
    ],
)
async def test_an_exporter_it_cannot_make_stops_start_up_saying_what_to_change(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv(variable, value)
    server = VisionServer(make_settings())
    with pytest.raises(StartupError) as err:
        await server.start()
    assert str(err.value).startswith(message)
