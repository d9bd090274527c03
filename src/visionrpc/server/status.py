"""The one map from domain errors (visionrpc.errors) to gRPC status codes.

Servicers and runtime code raise domain errors; only this module turns them into statuses, so a
given failure always reaches clients with the same code. Structured data on the error travels as
``google.rpc`` details (grpcio-status): the request field at fault as a ``BadRequest`` field
violation, the time to wait before retrying as ``RetryInfo``. Messages are capped
(:data:`MAX_MESSAGE_BYTES`) because they travel in the trailers, which clients refuse above a few
KiB: an echoed 1 MB input would otherwise turn into RESOURCE_EXHAUSTED on the client.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from visionrpc.errors import (
    DeadlineExpiredError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    NotReadyError,
    OutOfRangeError,
    ResourceLimitError,
    VisionRPCError,
)
from visionrpc.logs import ThrottledLog
from visionrpc.server.correlation import log_fields
from visionrpc.wire.codes import code_value, status_code

log = logging.getLogger(__name__)
UNEXPECTED = ThrottledLog(log)
"""Unexpected errors: logged with their traceback, rate-limited per exception class."""

Context = grpc.aio.ServicerContext[Any, Any]

STATUS_BY_ERROR: dict[type[BaseException], grpc.StatusCode] = {
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    ResourceLimitError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    OutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    NotReadyError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExpiredError: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""Domain error class → status code; subclasses inherit their base's code."""

INTERNAL_MESSAGE = "internal server error"
MAX_RETRY_AFTER_S = 3600.0
"""Longest RetryInfo delay sent; NaN or infinite ones are left out (better no advice than wrong)."""
MAX_MESSAGE_BYTES = 1024
"""Longest status message sent (UTF-8 bytes). The trailers carry it twice (percent-encoded, up
to 3 bytes per byte, and inside the details) and clients refuse trailers over 8-16 KiB."""


def cap_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes, saying that it was cut.

    A last resort: the sites that echo inputs shorten them (errors.shorten) so the message stays
    readable; this only guarantees the size whatever a message holds.
    """
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return message
    note = f"… (message cut from {len(data):,} bytes)"
    keep = limit - len(note.encode())
    if keep <= 0:  # no room to say so
        return data[:limit].decode("utf-8", "ignore")
    return data[:keep].decode("utf-8", "ignore") + note


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Code and caller-facing message for an exception.

    Domain errors keep their message (it is written for the caller), capped in size. Anything else
    is a bug: it becomes INTERNAL with a generic message so internals do not leak to clients.
    """
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code, cap_message(str(exc)) or code.name
    if isinstance(exc, VisionRPCError):
        return grpc.StatusCode.INTERNAL, cap_message(str(exc)) or INTERNAL_MESSAGE
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def rich_status(exc: BaseException) -> status_pb2.Status:
    """``google.rpc.Status`` for ``exc``: code, message and the details its data gives.

    InvalidInputError with a ``field`` → ``BadRequest`` (that field, the message as description);
    ResourceLimitError with ``retry_after_s`` → ``RetryInfo``. InferStream puts this in a frame's
    ``error``; :func:`abort_with` sends it as the call's status.
    """
    code, message = status_for(exc)
    status = status_pb2.Status(code=code_value(code), message=message)
    field = getattr(exc, "field", None)
    if isinstance(exc, InvalidInputError) and isinstance(field, str) and field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=cap_message(field, 128), description=message
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    retry_after_s = getattr(exc, "retry_after_s", None)
    if (
        isinstance(exc, ResourceLimitError)
        and isinstance(retry_after_s, int | float)
        and math.isfinite(retry_after_s)
    ):
        info = error_details_pb2.RetryInfo()
        delay = min(max(float(retry_after_s), 0.0), MAX_RETRY_AFTER_S)
        info.retry_delay.FromNanoseconds(round(delay * 1e9))
        status.details.add().Pack(info)
    return status


async def abort_with(context: Context, exc: BaseException) -> None:
    """End the call with the status for ``exc`` (raises grpc's AbortError, like context.abort).

    With details, the status travels as ``grpc-status-details-bin`` as well (grpcio-status), where
    ``grpc_status.rpc_status.from_call`` finds it on the client.
    """
    status = rich_status(exc)
    if status.details:
        await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]  # missing from grpc-stubs
    await context.abort(status_code(status.code) or grpc.StatusCode.INTERNAL, status.message)


F = TypeVar("F", bound=Callable[..., Any])


def log_unexpected(exc: BaseException, what: str = "unexpected error") -> None:
    """Domain errors are the caller's business; anything else is a bug worth a traceback.

    Rate-limited per exception class (a client that triggers the same bug in a loop must not fill
    the disk): past the limit the lines are counted and reported as "suppressed N". The line
    carries the call's request id and trace id when they are known.
    """
    if not isinstance(exc, VisionRPCError):
        UNEXPECTED.error(
            type(exc).__qualname__,
            "%s: %s",
            what,
            type(exc).__name__,
            exc_info=exc,
            fields=log_fields(),
        )


def map_errors(method: F) -> F:
    """Decorate an async servicer method so errors end the call with their status.

    Domain errors keep their message; any other exception is logged with its traceback and the
    caller gets INTERNAL with a generic message (never UNKNOWN with a Python repr).

    Works for coroutine methods (unary-unary, stream-unary) and async-generator methods
    (unary-stream, stream-stream). The context must be the method's last positional argument,
    which is how grpc calls servicer methods.
    """
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            context = args[-1]
            try:
                async for item in method(*args, **kwargs):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                log_unexpected(exc)
                await abort_with(context, exc)

        return cast(F, stream_wrapper)

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def unary_wrapper(*args: Any, **kwargs: Any) -> Any:
            context = args[-1]
            try:
                return await method(*args, **kwargs)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                log_unexpected(exc)
                await abort_with(context, exc)

        return cast(F, unary_wrapper)

    raise TypeError(f"map_errors needs an async method or async generator, got {method!r}")
