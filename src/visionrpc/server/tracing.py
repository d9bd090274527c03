"""Whether the server traces, decided from the standard ``OTEL_*`` variables alone.

Tracing is an optional extra (``pip install 'visionrpc[tracing]'``). This module imports no
OpenTelemetry: a server whose environment does not ask for traces never loads it, and its calls
run without any tracing wrapper. :mod:`visionrpc.server.otel` holds what runs when tracing is on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from visionrpc.errors import VisionRPCError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from visionrpc.server.otel import Tracing

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TracingConfigError(VisionRPCError):
    """The OTEL_* variables ask for something the server cannot do; the message says what."""


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``environ`` asks for traces.

    Yes when ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none``, or, with it unset,
    when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT``). ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set.
    The SDK's own default (export to localhost:4317 when nothing is set) is not used: a server
    that nobody told about a collector does not try to reach one.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if exporters:
        return any(name.strip().lower() not in ("", "none") for name in exporters.split(","))
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def load(provider: TracerProvider | None = None) -> Tracing | None:
    """Tracing for a server: with the given ``provider`` (tests, or an application that has set
    up OpenTelemetry itself), else from the OTEL_* variables; None when they do not ask for it.

    Configured but not installed is a warning, not a failure: the server is useful without traces.
    """
    if provider is None and not configured():
        return None
    try:
        from visionrpc.server.otel import Tracing, provider_from_environment
    except ImportError as exc:
        log.warning(
            "the OTEL_* variables ask for traces but OpenTelemetry is not installed (no module "
            "%r): tracing is off; install visionrpc[tracing], or unset them",
            exc.name,
        )
        return None
    if provider is not None:
        return Tracing(provider)
    return Tracing(provider_from_environment(), owns_provider=True)


@runtime_checkable
class Traced(Protocol):
    """A service that adds spans of its own (stages of a call) once the server traces."""

    def trace_with(self, tracing: Tracing) -> None: ...
