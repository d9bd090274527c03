"""What ties a call's log lines together: its request id and, with tracing on, its trace id.

Both live in context variables of the task that runs the call (gRPC runs each call in a task of
its own, and an InferStream frame is answered in a task of its own), so the access log and the
error lines read them without a parameter, and setting them costs a context-variable write.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("visionrpc_request_id", default=None)
"""The request id of the current Infer call or InferStream frame (the client's or generated)."""

TRACE_ID: ContextVar[int | None] = ContextVar("visionrpc_trace_id", default=None)
"""The trace id of the current call's server span; set only while tracing is on."""

REQUEST_ID_HEADER = "x-request-id"
"""Metadata key whose value the access log shows as the request id of methods without one."""


def new_request_id() -> str:
    """A request id for a request that came without one: 32 hex digits (a random UUID)."""
    return uuid.uuid4().hex


def log_fields() -> dict[str, Any]:
    """``request_id`` and ``trace_id`` of the current call, as far as they are known."""
    fields: dict[str, Any] = {}
    request_id = REQUEST_ID.get()
    if request_id:
        fields["request_id"] = request_id
    trace_id = TRACE_ID.get()
    if trace_id:
        fields["trace_id"] = f"{trace_id:032x}"
    return fields
