"""OpenTelemetry spans of the server (loaded only when tracing is on; see ``server.tracing``).

- One SERVER span per call, named after the method (``visionrpc.v1.InferenceMethods/Infer``),
  with the ``rpc.*`` attributes of the semantic conventions and the final status: ERROR, with
  the code name and message, for every code other than OK (as OpenTelemetry's own gRPC
  instrumentation does). It continues the caller's trace from ``traceparent`` metadata.
- One ``InferStream frame`` (or ``ModelStreamInfer frame``) span per stream frame, a child of the
  stream's span.
- Under the call's (or frame's) span, one span per inference stage: decode, preprocess, queue,
  inference, postprocess, with the model's name and version.

The stage spans are made after the fact from the result's ``Timings``, so the runtime stays free of
tracing. Their durations are the runtime's measurements; their placement is reconstructed: laid
end to end in the order a queued request goes through them, the last ending when post-processing
ended. Waits between stages that no stage measures (for a decode slot, hand-offs between threads,
the post-processing of the other requests of a batch) therefore show up as a gap before
``decode``; and a request that ran alone on an idle instance waited its (short) queue time before
decode rather than after preprocess.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from visionrpc import __version__
from visionrpc.server.correlation import REQUEST_ID, TRACE_ID
from visionrpc.server.interceptors import Behavior, _final_code, _observe
from visionrpc.server.status import status_for
from visionrpc.server.tracing import TracingConfigError
from visionrpc.types import InferenceResult

STAGES = ("decode", "preprocess", "queue", "inference", "postprocess")
"""Stage spans, in the order they are laid out (that of a request that waited in the queue)."""

MODEL_NAME = "visionrpc.model.name"
MODEL_VERSION = "visionrpc.model.version"
REQUEST_ID_ATTRIBUTE = "visionrpc.request_id"
FRAME_SPAN = "InferStream frame"
DEFAULT_SERVICE_NAME = "visionrpc"
"""``service.name`` of the traces unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES set one."""

_NOT_ERRORS = (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)
"""Ways a call ends that its status code already describes (no exception event on the span)."""


class Tracing:
    """Makes the server's spans with a tracer of ``provider``.

    ``owns_provider``: the provider was made for this server (from the OTEL_* variables) and is
    shut down, which sends the spans still buffered, when the server stops.
    """

    def __init__(self, provider: TracerProvider, *, owns_provider: bool = False) -> None:
        self.provider = provider
        self._owns_provider = owns_provider
        self._tracer = provider.get_tracer("visionrpc", __version__)

    def shutdown(self) -> None:
        """Send the spans still buffered (blocks up to the exporter's timeout)."""
        if self._owns_provider and isinstance(self.provider, SdkTracerProvider):
            self.provider.shutdown()

    # -- the call's span (wraps the handler, in the server interceptor) ------------------------

    def wrapper(self, method: str) -> Callable[[Behavior, bool], Behavior]:
        """A handler wrapper that runs each call of ``method`` in a SERVER span."""
        name = method.lstrip("/")
        service, _, short = name.rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": short}
        tracer = self._tracer

        def start(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[Span, object]:
            parent = propagate.extract(dict(context.invocation_metadata() or ()))
            span = tracer.start_span(name, parent, SpanKind.SERVER, attributes)
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            TRACE_ID.set(span.get_span_context().trace_id)
            return span, token

        def end(
            context: grpc.aio.ServicerContext[Any, Any],
            span_token: tuple[Span, object],
            error: BaseException | None,
        ) -> None:
            span, token = span_token
            try:
                code = _final_code(context, error)
                status = grpc.StatusCode.__members__.get(code)
                if status is not None:
                    span.set_attribute("rpc.grpc.status_code", status.value[0])
                request_id = REQUEST_ID.get()
                if request_id:
                    span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
                if code != "OK":
                    details = context.details() if hasattr(context, "details") else None
                    span.set_status(
                        Status(StatusCode.ERROR, f"{code}: {details}" if details else code)
                    )
                if error is not None and not isinstance(error, _NOT_ERRORS):
                    span.record_exception(error)
            finally:
                span.end()
                otel_context.detach(token)  # type: ignore[arg-type]  # the token attach gave

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            return _observe(behavior, streaming, start, end)

        return wrap

    # -- spans inside a call (made by the inference servicer) ----------------------------------

    def add_stages(self, result: InferenceResult, started_ns: int) -> None:
        """Spans for the stages of ``result``, whose pipeline call began at ``started_ns``
        (``time.time_ns()``), under the current span; the model goes on that span too."""
        parent = trace.get_current_span()
        if not parent.is_recording():  # not sampled: nothing would be kept
            return
        attributes = {MODEL_NAME: result.model, MODEL_VERSION: result.model_version}
        parent.set_attributes(attributes)
        t = result.timings
        durations = (t.decode_ms, t.preprocess_ms, t.queue_ms, t.inference_ms, t.postprocess_ms)
        end = started_ns + round(t.total_ms * 1e6)
        for name, ms in zip(reversed(STAGES), reversed(durations), strict=True):
            begin = max(started_ns, end - round(ms * 1e6))
            span = self._tracer.start_span(name, attributes=attributes, start_time=begin)
            span.end(end_time=end)
            end = begin

    def frame_span(self, name: str) -> _FrameSpan:
        """A span of its own for one stream frame (``server.streams``), current while the frame
        is answered; a frame answered with an error gets ERROR status, like a failed call."""
        return _FrameSpan(self._tracer, name)


class _FrameSpan:
    """One stream frame's span (a ``server.streams.FrameSpan``)."""

    def __init__(self, tracer: trace.Tracer, name: str) -> None:
        self._manager = tracer.start_as_current_span(name)
        self._span: Span = trace.INVALID_SPAN

    def __enter__(self) -> _FrameSpan:
        self._span = self._manager.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._manager.__exit__(kind, error, traceback)

    def answered(self, request_id: str) -> None:
        if request_id:
            self._span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)

    def failed(self, request_id: str, error: Exception) -> None:
        self.answered(request_id)
        code, message = status_for(error)
        self._span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))


def provider_from_environment() -> SdkTracerProvider:
    """A TracerProvider as the OTEL_* variables describe it.

    The SDK reads the resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), the sampler
    (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG), span limits and batching (OTEL_BSP_*); the
    exporters read their endpoint, headers, TLS files and timeout (OTEL_EXPORTER_OTLP_*).
    """
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = SdkTracerProvider(resource=resource)
    for exporter in exporters_from_environment():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def exporters_from_environment() -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (default ``otlp``), found by the entry points
    exporter packages register, as the SDK's own auto-configuration finds them."""
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip() or "otlp"
    exporters: list[SpanExporter] = []
    for name in (n.strip().lower() for n in names.split(",")):
        if name in ("", "none"):
            continue
        entry = _otlp_entry_point() if name == "otlp" else name
        found = entry_points(group="opentelemetry_traces_exporter", name=entry)
        if not found:
            if entry == "otlp_proto_http":
                raise TracingConfigError(
                    "the OTLP protocol http/protobuf needs the package "
                    "opentelemetry-exporter-otlp-proto-http; install it, or set "
                    "OTEL_EXPORTER_OTLP_PROTOCOL=grpc (the tracing extra's exporter)"
                )
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed; use otlp (OTLP "
                "over gRPC, installed with visionrpc[tracing]), console, or none"
            )
        exporters.append(next(iter(found)).load()())
    return exporters


def _otlp_entry_point() -> str:
    """The exporter entry point ``otlp`` means for the OTLP protocol set (gRPC by default)."""
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    entry = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}.get(protocol)
    if entry is None:
        raise TracingConfigError(
            f"the OTLP protocol is {protocol!r} (OTEL_EXPORTER_OTLP_PROTOCOL); use grpc or "
            "http/protobuf"
        )
    return entry
