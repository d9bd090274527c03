"""The client sends the current OpenTelemetry context (W3C traceparent) without depending on
OpenTelemetry: nothing is imported for it, nothing is sent without a current span."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider

from tests.helpers import modules_imported_by
from visionrpc.client import Client
from visionrpc.client.tracing import trace_metadata


def test_no_current_span_sends_nothing() -> None:
    assert trace_metadata() == ()


def test_the_current_span_goes_into_the_metadata_of_each_call() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        context = span.get_span_context()
        sent = trace_metadata()
        with Client("127.0.0.1:9", metadata=[("x-request-id", "r1")], token="") as client:
            options = client._call_options(1.0)
    flags = int(context.trace_flags)
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    assert sent == (("traceparent", traceparent),)
    assert options["metadata"] == (("x-request-id", "r1"), ("traceparent", traceparent))


def test_the_client_imports_no_opentelemetry() -> None:
    assert modules_imported_by("visionrpc.client", ("opentelemetry",)) == []
