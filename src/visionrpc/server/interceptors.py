"""The server interceptor: a readiness gate (start-up, drain), an in-flight count, and one
access-log line per call.

All three wrap the method handler's behaviour, so they see the call from start to end – for
streaming calls the log line is written when the stream ends, with the final status.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from visionrpc.server.drain import DRAINING_MESSAGE, InFlight
from visionrpc.wire.codes import code_name

ACCESS_LOGGER = "visionrpc.access"

if TYPE_CHECKING:  # generic in grpc-stubs only; at run time these classes take no parameters
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.aio.ServerInterceptor
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
Behavior = Callable[..., Any]


def _final_code(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    """The status the client will see, as far as the server can tell."""
    # grpc.aio closes a streaming handler (GeneratorExit) when a write fails because the client
    # has gone away; the call itself was cancelled.
    if isinstance(exc, asyncio.CancelledError | GeneratorExit) or (
        exc is not None and context.cancelled()
    ):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return "DEADLINE_EXCEEDED" if expired else "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode | int):  # some grpc versions report the raw integer
        return code_name(code)
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        return "UNKNOWN"
    return "OK"


def _wrap_handler(handler: Handler, wrap: Callable[[Behavior, bool], Behavior]) -> Handler:
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


OnEnd = Callable[[grpc.aio.ServicerContext[Any, Any], float, str, BaseException | None], None]


def _observe(behavior: Behavior, streaming: bool, on_end: OnEnd) -> Behavior:
    """Wrap an aio behaviour (coroutine or async generator) to call ``on_end`` exactly once.

    ``on_end(context, started, peer, error)``. The peer is read when the call starts: asking a
    cancelled call for its peer from a ``finally`` block crashes grpcio 1.85 (SIGSEGV in cygrpc).
    """
    if streaming and inspect.isasyncgenfunction(behavior):

        async def stream_behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            started, peer = time.perf_counter(), context.peer()
            error: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                on_end(context, started, peer, error)

        return stream_behavior

    async def unary_behavior(request: Any, context: Any) -> Any:
        started, peer = time.perf_counter(), context.peer()
        error: BaseException | None = None
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            error = exc
            raise
        finally:
            on_end(context, started, peer, error)

    return unary_behavior


class CallInterceptor(ServerInterceptor):
    """The server's one interceptor: a readiness gate, then one access-log line per call.

    One interceptor rather than two because every interceptor layer costs throughput on each call.

    - Until ``ready`` is set, and once ``draining`` is, application calls get UNAVAILABLE
      (clients retry it through their service config); the always-open services (health,
      reflection) answer meanwhile, so probes can say NOT_SERVING while models load or the
      server drains.
    - ``in_flight`` counts the application calls in progress (a drain waits for them). Counting
      wraps each handler once (cached), a coroutine frame per call.
    - With ``access_log``, each call logs ``method``, final ``code``, ``duration_ms`` and
      ``peer``. The wrapped handler of each method is built once and reused.
    """

    def __init__(
        self,
        always_open: Iterable[str],
        *,
        access_log: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        self._always_open = frozenset(always_open)
        self.ready = False
        self.draining = False
        self.in_flight = InFlight()
        self._access_log = access_log
        self._log = logger or logging.getLogger(ACCESS_LOGGER)
        self._wrapped: dict[str, tuple[Handler, Handler, bool]] = {}
        """method -> (the handler gRPC gave, the handler to run when the gate is open, whether
        the method's service is always open); one entry per method."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]  # unknown method: grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        prepared = self._wrapped.get(method)
        if prepared is None or prepared[0] is not handler:
            prepared = self._wrapped[method] = (handler, *self._prepare(method, handler))
        _, wrapped, always_open = prepared
        if always_open or (self.ready and not self.draining):
            return wrapped
        message = DRAINING_MESSAGE if self.draining else "server is starting; retry shortly"
        refused = _wrap_handler(handler, _refusing(message))
        return _wrap_handler(refused, self._wrapper(method)) if self._access_log else refused

    def _prepare(self, method: str, handler: Handler) -> tuple[Handler, bool]:
        """The handler to run when the gate is open (counted, logged) and whether it always is."""
        always_open = method.lstrip("/").rpartition("/")[0] in self._always_open
        if not always_open:
            handler = _wrap_handler(handler, _counting(self.in_flight))
        if self._access_log:
            handler = _wrap_handler(handler, self._wrapper(method))
        return handler, always_open

    def _wrapper(self, method: str) -> Callable[[Behavior, bool], Behavior]:
        log = self._log

        def on_end(
            context: grpc.aio.ServicerContext[Any, Any],
            started: float,
            peer: str,
            exc: BaseException | None,
        ) -> None:
            if not log.isEnabledFor(logging.INFO):
                return
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
                        "peer": peer,
                    }
                },
            )

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            return _observe(behavior, streaming, on_end)

        return wrap


def _counting(in_flight: InFlight) -> Callable[[Behavior, bool], Behavior]:
    """Wrap a behaviour so that ``in_flight`` counts the call from its start to its end."""

    def wrap(behavior: Behavior, streaming: bool) -> Behavior:
        if streaming and inspect.isasyncgenfunction(behavior):

            async def stream_behavior(request: Any, context: Any) -> AsyncIterator[Any]:
                in_flight.enter()
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    in_flight.exit()

            return stream_behavior

        async def unary_behavior(request: Any, context: Any) -> Any:
            in_flight.enter()
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                in_flight.exit()

        return unary_behavior

    return wrap


def _refusing(message: str) -> Callable[[Behavior, bool], Behavior]:
    """Wrap a behaviour into one that answers UNAVAILABLE with ``message`` (starting, draining)."""

    def wrap(_behavior: Behavior, _streaming: bool) -> Behavior:
        async def unavailable(_request: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)

        return unavailable

    return wrap
