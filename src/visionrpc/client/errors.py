"""Clearer failures than gRPC's own for two cases users hit: message limits and bad iterators.

- gRPC says only "Received message larger than max (N vs. M)". :func:`explain_size_error` turns that
  into a :class:`MessageSizeError` naming the limit that was hit (the server's or this client's),
  the setting or channel option that raises it, and what else to change.
- An exception raised by the caller's request iterator (``upload_numbers``, ``infer_stream``,
  ``chat``) reaches gRPC, which cancels the call with ``UNKNOWN: Exception iterating requests!``.
  :class:`RequestSource` remembers the exception so the client re-raises it as it was.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Generic, TypeVar

import grpc

T = TypeVar("T")
R = TypeVar("R")

_SIZE = re.compile(r"(CLIENT|SERVER): (Sent|Received) message larger than max \((\d+) vs\. (\d+)\)")

_ADVICE = {
    ("SERVER", "Received"): (
        "the request is {size:,} bytes, over the server's limit of {limit:,} (server setting "
        "max_receive_message_bytes, env VISIONRPC_MAX_RECEIVE_MESSAGE_BYTES); send a smaller "
        "image or raise that limit on the server"
    ),
    ("SERVER", "Sent"): (
        "the response is {size:,} bytes, over the server's limit of {limit:,} (server setting "
        "max_send_message_bytes, env VISIONRPC_MAX_SEND_MESSAGE_BYTES); ask for fewer detections "
        "or a smaller mask format, or raise that limit on the server"
    ),
    ("CLIENT", "Sent"): (
        "the request is {size:,} bytes, over this client's send limit of {limit:,}; raise it with "
        'options=[("grpc.max_send_message_length", N)] (the server\'s max_receive_message_bytes '
        "must allow it too) or send a smaller image"
    ),
    ("CLIENT", "Received"): (
        "the response is {size:,} bytes, over this client's receive limit of {limit:,}; raise it "
        'with options=[("grpc.max_receive_message_length", N)] or ask for fewer detections or a '
        "smaller mask format"
    ),
}


class MessageSizeError(grpc.aio.AioRpcError):
    """RESOURCE_EXHAUSTED because a message was over a size limit; ``details()`` says which.

    A ``grpc.RpcError`` (and ``grpc.aio.AioRpcError``), so existing handlers still catch it.
    """

    def __init__(self, original: grpc.RpcError, details: str) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=details,
            debug_error_string=_text(original, "debug_error_string"),
        )


def _text(exc: grpc.RpcError, method: str) -> str:
    getter = getattr(exc, method, None)
    value = getter() if callable(getter) else None
    return value if isinstance(value, str) else ""


def explain_size_error(exc: grpc.RpcError) -> MessageSizeError | None:
    """A MessageSizeError for gRPC's message-limit failures, else None."""
    if getattr(exc, "code", lambda: None)() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    match = _SIZE.search(_text(exc, "details"))
    if match is None:
        return None
    side, direction, size, limit = match.groups()
    advice = _ADVICE[(side, direction)].format(size=int(size), limit=int(limit))
    return MessageSizeError(exc, advice)


class RequestSource(Generic[T, R]):
    """The caller's items converted to requests; remembers what the caller's iterator raised."""

    def __init__(self, items: Iterable[T] | AsyncIterable[T], convert: Callable[[T], R]) -> None:
        self._items = items
        self._convert = convert
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[R]:
        if isinstance(self._items, AsyncIterable):
            raise TypeError("the blocking client needs a plain iterable, not an async one")
        try:
            for item in self._items:
                yield self._convert(item)
        except Exception as exc:
            self.error = exc
            raise

    async def __aiter__(self) -> AsyncIterator[R]:
        try:
            if isinstance(self._items, AsyncIterable):
                async for item in self._items:
                    yield self._convert(item)
            else:
                for item in self._items:
                    yield self._convert(item)
        except Exception as exc:
            self.error = exc
            raise

    def reraise(self) -> None:
        """Raise the caller's own exception if the call failed because of it."""
        if self.error is not None:
            raise self.error


def raise_call_error(
    exc: BaseException, source: RequestSource[object, object] | None = None
) -> None:
    """Re-raise a failed call's exception in the form most useful to the caller.

    The caller's own iterator error first (it caused the failure), then an explained message-size
    error; anything else unchanged. Returns only when ``exc`` is not a call failure of ours (a real
    cancellation), so the caller's ``raise`` keeps it.
    """
    if source is not None and source.error is not None:
        raise source.error from None
    if isinstance(exc, grpc.RpcError):
        explained = explain_size_error(exc)
        if explained is not None:
            raise explained from exc
