"""The server interceptor: token check, readiness gate (start-up, drain), an in-flight count,
request metrics and one access-log line per call.

The token check and the gate decide from the call's details alone and answer a refusal with a
handler of their own. An allowed application call runs its servicer wrapped once per method (cached)
to count it in flight, plus the access log and a tracing span when they are on; each wrapper sees
the call from start to end – for streaming calls the log line is written when the stream ends,
with the final status.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from visionrpc.server.auth import Authenticator, Refusal
from visionrpc.server.correlation import REQUEST_ID, REQUEST_ID_HEADER, log_fields
from visionrpc.server.drain import DRAINING_MESSAGE, InFlight
from visionrpc.server.identity import CALLER
from visionrpc.wire.codes import code_name

ACCESS_LOGGER = "visionrpc.access"

if TYPE_CHECKING:  # generic in grpc-stubs only; at run time these classes take no parameters
    from visionrpc.server.otel import Tracing

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


Context = grpc.aio.ServicerContext[Any, Any]
State = TypeVar("State")


def _observe(
    behavior: Behavior,
    streaming: bool,
    on_start: Callable[[Context], State],
    on_end: Callable[[Context, State, BaseException | None], None],
) -> Behavior:
    """Wrap an aio behaviour (coroutine or async generator) to call ``on_start(context)`` when the
    call starts and ``on_end(context, state, error)`` exactly once when it ends, with the state
    ``on_start`` returned and the exception that ended the call (None if it returned).

    What ``on_end`` needs of the call's peer or metadata, ``on_start`` reads: asking a cancelled
    call for its peer from a ``finally`` block crashes grpcio 1.85 (SIGSEGV in cygrpc).
    """
    if streaming and inspect.isasyncgenfunction(behavior):

        async def stream_behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            state = on_start(context)
            error: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                on_end(context, state, error)

        return stream_behavior

    async def unary_behavior(request: Any, context: Any) -> Any:
        state = on_start(context)
        error: BaseException | None = None
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            error = exc
            raise
        finally:
            on_end(context, state, error)

    return unary_behavior


class MethodMeter(Protocol):
    """What the metrics record of one method's calls (``server.metrics``), bound to its labels."""

    def start(self) -> None: ...

    def end(self, code: str, seconds: float) -> None: ...


class CallMeters(Protocol):
    """Hands out a :class:`MethodMeter` per method (``server.metrics.ServerMetrics``)."""

    def meter(self, service: str, method: str, streams: bool) -> MethodMeter: ...


def _metered(meter: MethodMeter) -> Callable[[Behavior, bool], Behavior]:
    """Wrap a behaviour so that ``meter`` sees the call start and end with its final code."""

    def on_start(_context: Context) -> float:
        started = time.perf_counter()
        meter.start()
        return started

    def on_end(context: Context, started: float, exc: BaseException | None) -> None:
        meter.end(_final_code(context, exc), time.perf_counter() - started)

    def wrap(behavior: Behavior, streaming: bool) -> Behavior:
        return _observe(behavior, streaming, on_start, on_end)

    return wrap


def _metered_handler(handler: Handler, meters: CallMeters | None, method: str) -> Handler:
    """``handler`` counted by ``meters`` (unchanged without metrics)."""
    if meters is None:
        return handler
    service, _, name = method.lstrip("/").rpartition("/")
    streams = bool(handler.request_streaming or handler.response_streaming)
    return _wrap_handler(handler, _metered(meters.meter(service, name, streams)))


def _call_start(context: Context) -> tuple[float, str]:
    """The call's start time and peer, for its access-log line, read when it starts (see
    :func:`_observe`); and its ``x-request-id`` metadata, the request id of calls whose messages
    carry none."""
    started, peer = time.perf_counter(), context.peer()
    _adopt_request_id_header(context)
    return started, peer


def _adopt_request_id_header(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Take the call's ``x-request-id`` metadata, if any, as its request id (an Infer call or
    stream frame replaces it with the id its message carries)."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            REQUEST_ID.set(value)
            return


class CallInterceptor(ServerInterceptor):
    """The server's one interceptor: tokens, a readiness gate, then one access-log line per call.

    One interceptor rather than three because every interceptor layer costs throughput on each call.

    - With an ``auth`` :class:`~visionrpc.server.auth.Authenticator`, calls to services outside
      its open ones need a known token with the method's scope (UNAUTHENTICATED or
      PERMISSION_DENIED otherwise); the token's name is set in
      :data:`~visionrpc.server.identity.CALLER` for the servicer.

    - Until ``ready`` is set, and once ``draining`` is, application calls get UNAVAILABLE
      (clients retry it through their service config); the always-open services (health,
      reflection) answer meanwhile, so probes can say NOT_SERVING while models load or the
      server drains.
    - ``in_flight`` counts the application calls in progress (a drain waits for them). Counting
      wraps each handler once (cached), a coroutine frame per call.
    - With ``metrics`` (set before the server starts), each call, refused ones and health and
      reflection included, is counted by method and final code, timed, and streams are counted
      while open.
    - With ``access_log``, each call logs ``method``, final ``code``, ``duration_ms``,
      ``peer``, and the ``request_id`` and ``trace_id`` when known (``server.correlation``).
      The wrapped handler of each method is built once and reused.
    - With ``tracing`` (set before the first call), each call runs in a server span
      (``server.otel``); without it there is no tracing wrapper at all.
    """

    def __init__(
        self,
        always_open: Iterable[str],
        *,
        access_log: bool = True,
        logger: logging.Logger | None = None,
        auth: Authenticator | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._always_open = frozenset(always_open)
        self.auth = auth
        self.tracing = tracing
        self.ready = False
        self.draining = False
        self.in_flight = InFlight()
        self.metrics: CallMeters | None = None
        self._access_log = access_log
        self._log = logger or logging.getLogger(ACCESS_LOGGER)
        self._wrapped: dict[str, tuple[Handler, Handler, bool, str]] = {}
        """method -> (the handler gRPC gave, the handler to run when the gate is open, whether
        the method's service is always open, the service's name); one entry per method."""

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
        _, wrapped, always_open, service = prepared
        auth = self.auth
        if auth is not None and service not in auth.open_services:
            verdict = auth.check(method, handler_call_details.invocation_metadata)
            if isinstance(verdict, Refusal):
                return self._refusal(handler, method, verdict)
            # set in the task that goes on to run the servicer, which therefore sees it
            CALLER.set(verdict)
        if always_open or (self.ready and not self.draining):
            return wrapped
        return self._refusal(handler, method, DRAINING if self.draining else STARTING)

    def _prepare(self, method: str, handler: Handler) -> tuple[Handler, bool, str]:
        """The handler to run when the gate is open (counted, logged), whether the method's
        service is always open, and that service's name."""
        service = method.lstrip("/").rpartition("/")[0]
        always_open = service in self._always_open
        if not always_open:
            handler = _wrap_handler(handler, _counting(self.in_flight))
        handler = _metered_handler(handler, self.metrics, method)
        if self._access_log:
            handler = _wrap_handler(handler, self._wrapper(method))
        if self.tracing is not None:  # outermost: the access log line sees the trace id
            handler = _wrap_handler(handler, self.tracing.wrapper(method))
        return handler, always_open, service

    def _refusal(self, handler: Handler, method: str, refusal: Refusal) -> Handler:
        """A handler of ``handler``'s streaming kind that answers ``refusal`` (access-logged)."""
        refused = _metered_handler(_wrap_handler(handler, _refuse(refusal)), self.metrics, method)
        if self._access_log:
            refused = _wrap_handler(refused, self._wrapper(method))
        if self.tracing is not None:
            refused = _wrap_handler(refused, self.tracing.wrapper(method))
        return refused

    def _wrapper(self, method: str) -> Callable[[Behavior, bool], Behavior]:
        log = self._log

        def on_end(
            context: Context, started_peer: tuple[float, str], exc: BaseException | None
        ) -> None:
            if not log.isEnabledFor(logging.INFO):
                return
            started, peer = started_peer
            code = _final_code(context, exc)
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            fields: dict[str, Any] = {
                "grpc_method": method,
                "grpc_code": code,
                "duration_ms": duration_ms,
                "peer": peer,
            }
            identity = CALLER.get()
            if identity is not None:
                fields["identity"] = identity
            fields.update(log_fields())
            log.info("%s %s %.1fms", method, code, duration_ms, extra={"fields": fields})

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            return _observe(behavior, streaming, _call_start, on_end)

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


STARTING = Refusal(grpc.StatusCode.UNAVAILABLE, "server is starting; retry shortly")
DRAINING = Refusal(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)


def _refuse(refusal: Refusal) -> Callable[[Behavior, bool], Behavior]:
    """A handler wrapper whose behaviour answers ``refusal`` without running the servicer."""

    def wrap(_behavior: Behavior, _streaming: bool) -> Behavior:
        async def refuse(_request: Any, context: Any) -> None:
            await context.abort(refusal.code, refusal.message)

        return refuse

    return wrap
