"""Tracing end to end: a real server and our client in one process, the spans kept by the SDK's
in-memory exporter; the access and error log lines carry the request id and the trace id."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from PIL import Image

from tests.helpers import make_settings, wait_until
from tests.runtime.onnx_builders import tiny_models
from visionrpc.client import AsyncClient, Client
from visionrpc.logs import JsonFormatter
from visionrpc.server.app import VisionServer
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.otel import MODEL_NAME, MODEL_VERSION, REQUEST_ID_ATTRIBUTE, STAGES
from visionrpc.settings import Settings
from visionrpc.types import InferenceResult
from visionrpc.v1 import inference_pb2 as pb

INFER = "visionrpc.v1.InferenceMethods/Infer"
STREAM = "visionrpc.v1.InferenceMethods/InferStream"


def png(width: int = 96, height: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(out, format="PNG")
    return out.getvalue()


IMAGE = png()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """The JSON log lines of the server's loggers (access log and errors)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("visionrpc")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def log_lines(stream: io.StringIO, logger: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == logger]


class BrokenOnBoom(InferenceServicer):
    """Fails with a bug (not a domain error) after the work, for the request id ``boom``."""

    async def _infer(self, request: pb.InferRequest, *args: Any) -> pb.InferResponse:
        response = await super()._infer(request, *args)
        if request.request_id == "boom":
            raise RuntimeError("a bug")
        return response


async def start(
    models: Path, provider: TracerProvider | None, **overrides: Any
) -> AsyncIterator[VisionServer]:
    settings: Settings = make_settings(models_dir=models, access_log=True, **overrides)
    server = VisionServer(settings, [BrokenOnBoom(settings)], tracer_provider=provider)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
async def traced(models: Path, provider: TracerProvider) -> AsyncIterator[VisionServer]:
    async for server in start(models, provider):
        yield server


@pytest.fixture
async def untraced(models: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[VisionServer]:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    async for server in start(models, None):
        yield server


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    found = [
        s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    return sorted(found, key=lambda s: (s.start_time or 0, s.end_time or 0))


def assert_stages(
    spans: tuple[ReadableSpan, ...], parent: ReadableSpan, result: InferenceResult
) -> None:
    """The five stage spans under ``parent``: in order, end to end, inside it, with the model
    and with the durations the response reports."""
    stages = [s for s in children(spans, parent) if s.name in STAGES]
    assert [s.name for s in stages] == list(STAGES)
    t = result.timings
    reported = {
        "decode": t.decode_ms,
        "preprocess": t.preprocess_ms,
        "queue": t.queue_ms,
        "inference": t.inference_ms,
        "postprocess": t.postprocess_ms,
    }
    assert parent.start_time is not None and parent.end_time is not None
    for before, after in itertools.pairwise(stages):
        assert before.end_time == after.start_time
    for span in stages:
        assert span.start_time is not None and span.end_time is not None
        assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time
        assert (span.end_time - span.start_time) / 1e6 == pytest.approx(
            reported[span.name], abs=0.001
        )
        assert span.attributes is not None
        assert span.attributes[MODEL_NAME] == result.model == "tiny"
        assert span.attributes[MODEL_VERSION] == result.model_version
        assert span.context.trace_id == parent.context.trace_id


# -- spans -----------------------------------------------------------------------------------------


async def test_client_and_server_spans_share_one_trace_with_stage_spans(
    traced: VisionServer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("test")
    async with AsyncClient(traced.address) as client:
        with tracer.start_as_current_span("inspect part") as client_span:
            result = await client.infer(IMAGE, request_id="part-17")
    spans = exporter.get_finished_spans()
    (server_span,) = named(spans, INFER)
    assert server_span.kind is SpanKind.SERVER
    assert server_span.context.trace_id == client_span.get_span_context().trace_id
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.get_span_context().span_id
    assert server_span.parent.is_remote  # continued from the traceparent metadata
    assert dict(server_span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "visionrpc.v1.InferenceMethods",
        "rpc.method": "Infer",
        "rpc.grpc.status_code": 0,
        MODEL_NAME: "tiny",
        MODEL_VERSION: result.model_version,
        REQUEST_ID_ATTRIBUTE: "part-17",
    }
    assert server_span.status.status_code is StatusCode.UNSET
    assert_stages(spans, server_span, result)


async def test_a_call_without_a_trace_starts_one(
    traced: VisionServer, exporter: InMemorySpanExporter
) -> None:
    async with AsyncClient(traced.address) as client:
        await client.ping()
    (span,) = named(exporter.get_finished_spans(), "visionrpc.v1.CoreServices/Ping")
    assert span.parent is None
    assert span.context.trace_id != 0


async def test_the_blocking_client_propagates_the_context_too(
    traced: VisionServer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("test")

    def call() -> tuple[int, int]:
        with Client(traced.address) as client, tracer.start_as_current_span("sync") as span:
            client.ping()
            return span.get_span_context().trace_id, span.get_span_context().span_id

    trace_id, span_id = await asyncio.to_thread(call)
    (server_span,) = named(exporter.get_finished_spans(), "visionrpc.v1.CoreServices/Ping")
    assert server_span.context.trace_id == trace_id
    assert server_span.parent is not None and server_span.parent.span_id == span_id


async def test_stream_frames_get_spans_with_their_stages(
    traced: VisionServer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("test")
    async with AsyncClient(traced.address) as client:
        with tracer.start_as_current_span("inspect line") as client_span:
            frames = [r async for r in client.infer_stream([IMAGE, b"not an image", IMAGE])]
    assert [f.ok for f in frames] == [True, False, True]
    await wait_until(lambda: bool(named(exporter.get_finished_spans(), STREAM)))
    spans = exporter.get_finished_spans()
    (stream_span,) = named(spans, STREAM)
    assert stream_span.context.trace_id == client_span.get_span_context().trace_id
    frame_spans = [s for s in children(spans, stream_span) if s.name == "InferStream frame"]
    assert [(s.attributes or {})[REQUEST_ID_ATTRIBUTE] for s in frame_spans] == ["0", "1", "2"]
    good = [frames[0].result, frames[2].result]
    for span, result in zip((frame_spans[0], frame_spans[2]), good, strict=True):
        assert result is not None
        assert span.status.status_code is StatusCode.UNSET
        assert_stages(spans, span, result)
    bad = frame_spans[1]
    assert bad.status.status_code is StatusCode.ERROR
    assert (bad.status.description or "").startswith("INVALID_ARGUMENT: ")
    assert children(spans, bad) == []  # it failed before any stage finished
    assert stream_span.status.status_code is StatusCode.UNSET  # one bad frame is not the call's


async def test_a_failed_call_has_an_error_span_and_the_server_goes_on(
    traced: VisionServer, exporter: InMemorySpanExporter
) -> None:
    async with AsyncClient(traced.address) as client:
        with pytest.raises(grpc.RpcError) as err:
            await client.infer(b"not an image")
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (await client.infer(IMAGE)).model == "tiny"
    failed, served = named(exporter.get_finished_spans(), INFER)
    assert failed.status.status_code is StatusCode.ERROR
    description = failed.status.description or ""
    assert description.startswith("INVALID_ARGUMENT: ")
    assert (err.value.details() or "") in description
    assert (failed.attributes or {})["rpc.grpc.status_code"] == 3
    assert served.status.status_code is StatusCode.UNSET


async def test_with_tracing_off_there_is_no_span_and_no_wrapper(
    untraced: VisionServer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("test")
    async with AsyncClient(untraced.address) as client:
        with tracer.start_as_current_span("client"):
            await client.infer(IMAGE)
            await client.ping()
    assert [s.name for s in exporter.get_finished_spans()] == ["client"]
    gate = untraced._gate
    assert gate.tracing is None
    handlers = [entry[1] for entry in gate._wrapped.values()]
    assert handlers, "the calls went through the interceptor"
    for handler in handlers:
        behavior = handler.unary_unary or handler.unary_stream
        assert behavior is not None and behavior.__module__ != "visionrpc.server.otel"


async def test_a_call_refused_before_it_runs_has_an_error_span(
    models: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tokens = '[{"name": "station", "token": "right-token", "scopes": ["core"]}]'
    async for server in start(models, provider, auth={"tokens": tokens}):
        async with AsyncClient(server.address, token="wrong-token") as client:
            with pytest.raises(grpc.RpcError) as err:
                await client.ping()
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        async with AsyncClient(server.address, token="right-token") as client:
            await client.ping()  # the server goes on
    refused, served = named(exporter.get_finished_spans(), "visionrpc.v1.CoreServices/Ping")
    assert refused.status.status_code is StatusCode.ERROR
    assert (refused.status.description or "").startswith("UNAUTHENTICATED: ")
    assert served.status.status_code is StatusCode.UNSET


# -- logs ------------------------------------------------------------------------------------------


async def test_access_lines_carry_the_request_id_and_the_trace_id(
    traced: VisionServer, exporter: InMemorySpanExporter, logs: io.StringIO
) -> None:
    async with AsyncClient(traced.address) as client:
        await client.infer(IMAGE, request_id="part-9")
        generated = await client.infer(IMAGE)
    async with AsyncClient(traced.address, metadata=[("x-request-id", "ping-3")]) as client:
        await client.ping()
    spans = exporter.get_finished_spans()
    trace_ids = [f"{s.context.trace_id:032x}" for s in named(spans, INFER)]
    (ping_span,) = named(spans, "visionrpc.v1.CoreServices/Ping")
    assert len(generated.request_id) == 32 and int(generated.request_id, 16) >= 0
    lines = log_lines(logs, "visionrpc.access")
    assert [(x["grpc_method"], x["request_id"], x["trace_id"]) for x in lines] == [
        ("/" + INFER, "part-9", trace_ids[0]),
        ("/" + INFER, generated.request_id, trace_ids[1]),
        ("/visionrpc.v1.CoreServices/Ping", "ping-3", f"{ping_span.context.trace_id:032x}"),
    ]


async def test_error_lines_carry_the_request_id_and_the_trace_id(
    traced: VisionServer, exporter: InMemorySpanExporter, logs: io.StringIO
) -> None:
    async with AsyncClient(traced.address) as client:
        with pytest.raises(grpc.RpcError) as err:
            await client.infer(IMAGE, request_id="boom")
        assert err.value.code() is grpc.StatusCode.INTERNAL
        assert (await client.infer(IMAGE)).model == "tiny"  # the server goes on
    (failed, _) = named(exporter.get_finished_spans(), INFER)
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == []  # the bug's traceback is in the log only
    (error,) = log_lines(logs, "visionrpc.server.status")
    assert error["level"] == "ERROR"
    assert "RuntimeError: a bug" in error["exc_info"]
    assert error["request_id"] == "boom"
    assert error["trace_id"] == f"{failed.context.trace_id:032x}"


async def test_without_tracing_the_lines_carry_the_request_id_only(
    untraced: VisionServer, logs: io.StringIO
) -> None:
    async with AsyncClient(untraced.address) as client:
        result = await client.infer(IMAGE)
        with pytest.raises(grpc.RpcError):
            await client.infer(IMAGE, request_id="boom")
    access = log_lines(logs, "visionrpc.access")
    assert [x["request_id"] for x in access] == [result.request_id, "boom"]
    assert all("trace_id" not in x for x in access)
    (error,) = log_lines(logs, "visionrpc.server.status")
    assert error["request_id"] == "boom" and "trace_id" not in error
