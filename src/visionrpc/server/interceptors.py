"""Server interceptors: one access-log line per call, and a readiness gate for start-up.

Both wrap the method handler's behaviour, so they see the call from start to end – for streaming
calls the log line is written when the stream ends, with the final status.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc

ACCESS_LOGGER = "visionrpc.access"

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Behavior = Callable[..., Any]


def _final_code(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    """The status the client will see, as far as the server can tell."""
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return "DEADLINE_EXCEEDED" if expired else "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions report the raw integer
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        return "UNKNOWN"
    return "OK"


def _wrap_handler(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior, bool], Behavior]
) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` whose behaviour is ``wrap(behaviour, response_streaming)``."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **kwargs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **kwargs)
    return handler


def _observe(
    behavior: Behavior,
    streaming: bool,
    on_end: Callable[[grpc.aio.ServicerContext[Any, Any], BaseException | None], None],
) -> Behavior:
    """Wrap an aio behaviour (coroutine or async generator) to call ``on_end`` exactly once."""
    if streaming and inspect.isasyncgenfunction(behavior):

        async def stream_behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                on_end(context, error)

        return stream_behavior

    async def unary_behavior(request: Any, context: Any) -> Any:
        error: BaseException | None = None
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            error = exc
            raise
        finally:
            on_end(context, error)

    return unary_behavior


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    """Logs ``method``, final ``code``, ``duration_ms`` and ``peer`` once per call."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(ACCESS_LOGGER)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]  # unknown method: grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        log = self._log

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            started = time.perf_counter()  # intercept_service runs once per call

            def on_end(
                context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None
            ) -> None:
                code = _final_code(context, exc)
                duration_ms = round((time.perf_counter() - started) * 1000, 3)
                log.info(
                    "%s %s %.1fms",
                    method,
                    code,
                    duration_ms,
                    extra={
                        "fields": {
                            "grpc_method": method,
                            "grpc_code": code,
                            "duration_ms": duration_ms,
                            "peer": context.peer(),
                        }
                    },
                )

            return _observe(behavior, streaming, on_end)

        return _wrap_handler(handler, wrap)


class ReadinessGate(grpc.aio.ServerInterceptor):
    """Answers UNAVAILABLE until the server is ready, except for always-open services.

    The server listens while services start (so health checks can say NOT_SERVING during model
    loading); the gate keeps application calls away from half-started services meanwhile.
    Clients retry UNAVAILABLE through their service config.
    """

    def __init__(self, always_open: Iterable[str]) -> None:
        self._always_open = frozenset(always_open)
        self.ready = False

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").rpartition("/")[0]
        if handler is None or self.ready or service in self._always_open:
            return handler  # type: ignore[return-value]

        def refuse(_behavior: Behavior, _streaming: bool) -> Behavior:
            async def unavailable(_request: Any, context: Any) -> None:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "server is starting; retry shortly"
                )

            return unavailable

        return _wrap_handler(handler, refuse)
