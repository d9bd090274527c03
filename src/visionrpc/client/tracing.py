"""Trace context for outgoing calls, when the application traces with OpenTelemetry.

The client does not depend on OpenTelemetry. A span can only be current if the application has
imported ``opentelemetry.trace``, so the client looks for that module among those already
imported instead of importing it: an application that does not trace pays a dictionary lookup
per call, and one that does gets its current context injected (W3C ``traceparent``, and whatever
else the global propagator sends, e.g. ``baggage``) into the call's metadata.
"""

from __future__ import annotations

import sys


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata that carries the current trace context; empty when there is none."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return ()
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
