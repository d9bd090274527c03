"""``visionrpc serve`` with OTEL_* variables it cannot follow: one line saying what to set."""

from __future__ import annotations

from tests.cli.test_serve_cli import serve


def test_an_exporter_that_is_not_installed_is_one_line() -> None:
    result = serve("--port", "0", OTEL_TRACES_EXPORTER="zipkin")
    assert (result.returncode, result.stderr) == (
        1,
        "error: OTEL_TRACES_EXPORTER names 'zipkin', which is not installed; use otlp (OTLP over "
        "gRPC, installed with visionrpc[tracing]), console, or none\n",
    )
