"""The one map from domain errors (visionrpc.errors) to gRPC status codes.

Servicers and runtime code raise domain errors; only this module turns them into statuses, so a
given failure always reaches clients with the same code.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc

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

log = logging.getLogger(__name__)

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


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Code and caller-facing message for an exception.

    Domain errors keep their message (it is written for the caller). Anything else is a bug: it
    becomes INTERNAL with a generic message so internals do not leak to clients.
    """
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code, str(exc) or code.name
    if isinstance(exc, VisionRPCError):
        return grpc.StatusCode.INTERNAL, str(exc) or INTERNAL_MESSAGE
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


async def abort_with(context: Context, exc: BaseException) -> None:
    """End the call with the status for ``exc`` (raises grpc's AbortError, like context.abort)."""
    code, message = status_for(exc)
    await context.abort(code, message)


F = TypeVar("F", bound=Callable[..., Any])


def log_unexpected(exc: BaseException) -> None:
    """Domain errors are the caller's business; anything else is a bug worth a traceback."""
    if not isinstance(exc, VisionRPCError):
        log.error("unexpected error", exc_info=exc)


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
