"""Request messages that do not parse: INVALID_ARGUMENT with a readable message, never UNKNOWN.

grpc.aio runs a method's request deserializer before the servicer. When it raises, grpc logs a
traceback and answers ``UNKNOWN "Unexpected <class 'DecodeError'>…"``; in a request stream the
DecodeError reaches the servicer as if it were a bug. :class:`DecodeGuard` stands in for the
server while services register and wraps every method handler once (not per call in the
interceptor), so a call that parses pays one type check and one extra await:

- a unary request that does not parse becomes an :class:`Undecodable` marker, and a thin wrapper
  ends the call with INVALID_ARGUMENT before the servicer runs;
- a message of a request stream that does not parse raises :class:`UndecodableMessageError` (an
  ``InvalidInputError``) where the servicer reads it, so the servicer answers what it read before
  and the error map ends the call with INVALID_ARGUMENT. A request-streaming servicer therefore
  goes through ``server.status.map_errors`` (ours do, reflection included); one that does not
  would let the error reach grpc, which answers UNKNOWN.

Each failure is one warning line, rate-limited per method and server, never a traceback.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from visionrpc.errors import InvalidInputError, shorten
from visionrpc.logs import ThrottledLog

if TYPE_CHECKING:  # generic in grpc-stubs only; at run time it takes no parameters
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    GenericHandler = grpc.GenericRpcHandler
Handler = Any  # grpc.RpcMethodHandler, whose attributes grpc-stubs types loosely
Deserializer = Callable[[bytes], Any]

log = logging.getLogger(__name__)


class UndecodableMessageError(InvalidInputError):
    """A request message is not a valid protobuf of the method's request type."""


class Undecodable:
    """What a unary request that does not parse is handed on as (instead of raising in grpc)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _type_name(deserializer: Deserializer) -> str:
    """``visionrpc.v1.InferRequest`` for the generated ``InferRequest.FromString``."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else "request"


def _reason(exc: DecodeError) -> str:
    """protobuf's reason without its ``Error parsing message with type '…':`` prefix."""
    text = str(exc)
    head, sep, tail = text.partition("': ")
    reason = tail if sep and head.startswith("Error parsing message") else text
    return shorten(reason.strip().rstrip(".").lower() or "it does not parse", 200).strip("'")


def undecodable_message(type_name: str, exc: DecodeError, *, streamed: bool) -> str:
    """The caller-facing text: what did not parse, why, and what to check."""
    what = "a message of the request stream" if streamed else "the request"
    return (
        f"{what} is not a valid {type_name} message ({_reason(exc)}); check that the client "
        "and the server use the same .proto"
    )


def _guarded(
    method: str, deserializer: Deserializer, throttled: ThrottledLog, *, streamed: bool
) -> Deserializer:
    """``deserializer`` logging (throttled) a message that does not parse: as a unary request it
    becomes an :class:`Undecodable` marker, in a request stream it raises
    :class:`UndecodableMessageError`."""
    type_name = _type_name(deserializer)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            message = undecodable_message(type_name, exc, streamed=streamed)
            throttled.warning(method, "undecodable request on %s: %s", method, message)
            if streamed:
                raise UndecodableMessageError(message) from None
            return Undecodable(message)

    return deserialize


def _refusing(behavior: Callable[..., Any]) -> Callable[..., Any] | None:
    """``behavior`` behind a check for :class:`Undecodable`; None if it is not async."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if type(request) is Undecodable:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for item in behavior(request, context):
                yield item

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def unary(request: Any, context: Any) -> Any:
            if type(request) is Undecodable:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await behavior(request, context)

        return unary
    return None


def guard_handler(method: str, handler: Handler, throttled: ThrottledLog) -> Handler:
    """A copy of ``handler`` whose undecodable requests end as INVALID_ARGUMENT (see module)."""
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler
    serializer = handler.response_serializer
    if handler.request_streaming:
        kwargs = {
            "request_deserializer": _guarded(method, deserializer, throttled, streamed=True),
            "response_serializer": serializer,
        }
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(handler.stream_stream, **kwargs)
        return grpc.stream_unary_rpc_method_handler(handler.stream_unary, **kwargs)
    behavior = handler.unary_stream or handler.unary_unary
    refusing = _refusing(behavior)
    if refusing is None:  # a sync behaviour (not used by this server): leave it as grpc has it
        return handler
    kwargs = {
        "request_deserializer": _guarded(method, deserializer, throttled, streamed=False),
        "response_serializer": serializer,
    }
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refusing, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refusing, **kwargs)


class _GuardedGenericHandler(GenericHandler):
    """A generic handler whose handlers are guarded (each built once, on first use)."""

    def __init__(self, inner: GenericHandler, guard: DecodeGuard) -> None:
        self._inner = inner
        self._guard = guard

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._guard.guarded(handler_call_details.method, handler)


class DecodeGuard:
    """Hand this to ``add_*_to_server`` instead of the server: it registers guarded handlers.

    The generated ``add_*_to_server`` functions register each method twice (a generic handler and
    the registered-method table); both paths get the same guarded handler.
    """

    def __init__(self, server: grpc.aio.Server, throttled: ThrottledLog | None = None) -> None:
        self._server = server
        self.log = throttled or ThrottledLog(log)
        """Where undecodable requests are logged (its own rate limits, per method)."""
        # (method, id of the original) → (original, guarded); the original is kept so its id stays
        self._guarded: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    def guarded(self, method: str, handler: Handler) -> Handler:
        key = (method, id(handler))
        entry = self._guarded.get(key)
        if entry is None:
            entry = self._guarded[key] = (handler, guard_handler(method, handler, self.log))
        return entry[1]

    def add_generic_rpc_handlers(self, handlers: Iterable[GenericHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GuardedGenericHandler(h, self) for h in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Handler]) -> None:
        guarded = {name: self.guarded(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, guarded)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
