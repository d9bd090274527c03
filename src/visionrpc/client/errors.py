"""Clearer failures than gRPC's own: message limits, bad iterators, cut streams, statuses with
details.

- A status that carries ``google.rpc`` details (the server sends a ``BadRequest`` naming the
  request field at fault, ``RetryInfo`` when it sheds load) is raised as :class:`CallError`, with
  ``field_violations`` and ``retry_after`` read from them (grpcio-status).
- gRPC says only "Received message larger than max (N vs. M)". :func:`explain_size_error` turns that
  into a :class:`MessageSizeError` naming the limit that was hit (the server's or this client's),
  the setting or channel option that raises it, and what else to change.
- An exception raised by the caller's request iterator (``upload_numbers``, ``infer_stream``,
  ``chat``) reaches gRPC, which cancels the call with ``UNKNOWN: Exception iterating requests!``.
  :class:`RequestSource` remembers the exception so the client re-raises it as it was.
- An ``infer_stream`` that ends with an error (the server drains, restarts, the deadline passes)
  leaves the caller asking which frames were answered. :class:`StreamInterruptedError` says it and
  holds the frames that were taken from the caller's iterable but not answered, to resend.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

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


@dataclass(frozen=True)
class FieldViolation:
    """A request field the server refused, and why (from a ``google.rpc.BadRequest``)."""

    field: str
    description: str


@dataclass(frozen=True)
class StatusDetails:
    """What a status's ``google.rpc`` details say, in plain Python."""

    field_violations: tuple[FieldViolation, ...] = ()
    retry_after: float | None = None
    """Seconds the server asks to wait before retrying (``RetryInfo``); None when it said none."""

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> StatusDetails:
        violations: list[FieldViolation] = []
        retry_after: float | None = None
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += (FieldViolation(v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry_after = info.retry_delay.ToNanoseconds() / 1e9
        return cls(tuple(violations), retry_after)

    @classmethod
    def from_error(cls, exc: grpc.RpcError) -> StatusDetails | None:
        """The details of a failed call's status; None when it carries none (or they do not
        match the call's code and message)."""
        try:
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]  # an RpcError is a Call
        except (ValueError, AttributeError, TypeError):
            return None
        return None if status is None or not status.details else cls.from_status(status)


class CallError(grpc.aio.AioRpcError):
    """A failed call whose status carried details: ``code()`` and ``details()`` as gRPC's, plus
    ``field_violations`` (which request field, why) and ``retry_after`` (seconds, or None).

    A ``grpc.RpcError`` (and ``grpc.aio.AioRpcError``), so existing handlers still catch it.
    """

    def __init__(self, original: grpc.RpcError, details: StatusDetails) -> None:
        code = getattr(original, "code", lambda: None)()
        super().__init__(
            code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
            grpc.aio.Metadata(*_metadata(original, "initial_metadata")),
            grpc.aio.Metadata(*_metadata(original, "trailing_metadata")),
            details=_text(original, "details"),
            debug_error_string=_text(original, "debug_error_string"),
        )
        self.field_violations = details.field_violations
        self.retry_after = details.retry_after


def _metadata(exc: grpc.RpcError, method: str) -> list[tuple[str, str | bytes]]:
    getter = getattr(exc, method, None)
    value = getter() if callable(getter) else None
    return [(key, val) for key, val in value or ()]


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


_CORE_WRITE_ERROR = "Internal error from Core"


class StreamInterruptedError(grpc.aio.AioRpcError):
    """An ``infer_stream`` ended with an error; the frames it had not answered are listed.

    ``code()`` is the server's (UNAVAILABLE "server is draining..." when the server shuts down:
    reconnect, to another server if there is one) and ``details()`` adds how many frames were not
    answered. Results arrive in order, so the first ``answered`` frames of the stream were
    answered; ``unanswered`` are the caller's images taken from the iterable after them, in order
    (sent, or about to be), to resend. Images the iterable has not produced yet are still in it.
    A ``grpc.RpcError`` like any failed call. When gRPC's asyncio client loses the server's status
    because a write raced the end of the call (it says INTERNAL "Internal error from Core"), the
    code is UNAVAILABLE and the details say so.
    """

    def __init__(self, original: grpc.RpcError, source: RequestSource[Any, Any]) -> None:
        self.answered = source.answered
        self._source = source
        unanswered = len(self.unanswered)
        details = _text(original, "details")
        explained = explain_size_error(original)
        if explained is not None:
            details = _text(explained, "details")
        if unanswered:
            first = self.answered
            details += (
                f"; {unanswered} frame(s) sent were not answered (frames {first} to "
                f"{first + unanswered - 1} of the stream, 0-based): resend them (error.unanswered)"
            )
        code = getattr(original, "code", lambda: None)()
        if code == grpc.StatusCode.INTERNAL and details.startswith(_CORE_WRITE_ERROR):
            # grpc.aio's own status when a write races the server's end of the call
            # (grpc/grpc#36066): the server's status is lost; the call is over, reconnect.
            code = grpc.StatusCode.UNAVAILABLE
            details = (
                "the server ended the stream while frames were being sent (gRPC's asyncio "
                "client reports INTERNAL 'Internal error from Core'); reconnect"
                + details[len(_CORE_WRITE_ERROR) :]
            )
        super().__init__(
            code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=details,
            debug_error_string=_text(original, "debug_error_string"),
        )

    @property
    def unanswered(self) -> list[Any]:
        """The images taken from the caller's iterable and not answered, oldest first (an image the
        iterable was producing when the call failed is added once it is produced)."""
        return list(self._source.unanswered)


class RequestSource(Generic[T, R]):
    """The caller's items converted to requests; remembers what the caller's iterator raised.

    With ``track``, it also keeps the items taken but not yet answered (the stream's results come
    in order, one per item: ``answer()`` is called for each), for :class:`StreamInterruptedError`.
    ``close()`` stops taking items from the caller once the call is over.
    """

    def __init__(
        self,
        items: Iterable[T] | AsyncIterable[T],
        convert: Callable[[T], R],
        *,
        track: bool = False,
    ) -> None:
        self._items = items
        self._convert = convert
        self.error: BaseException | None = None
        self.tracked = track
        self.answered = 0
        self.unanswered: deque[T] = deque()
        self._closed = False

    def _taken(self, item: T) -> R:
        request = self._convert(item)
        if self.tracked:
            self.unanswered.append(item)
        return request

    def answer(self) -> None:
        """One more result arrived: the oldest unanswered item is done."""
        if self.tracked and self.unanswered:
            self.unanswered.popleft()
            self.answered += 1

    def close(self) -> None:
        self._closed = True

    def __iter__(self) -> Iterator[R]:
        if isinstance(self._items, AsyncIterable):
            raise TypeError("the blocking client needs a plain iterable, not an async one")
        items = iter(self._items)
        try:
            while not self._closed:
                try:
                    item = next(items)
                except StopIteration:
                    return
                yield self._taken(item)
        except Exception as exc:
            self.error = exc
            raise

    async def __aiter__(self) -> AsyncIterator[R]:
        try:
            if isinstance(self._items, AsyncIterable):
                items = aiter(self._items)
                while not self._closed:
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        return
                    yield self._taken(item)
            else:
                for item in self._items:
                    if self._closed:
                        return
                    yield self._taken(item)
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

    The caller's own iterator error first (it caused the failure), then, for a tracked stream, a
    :class:`StreamInterruptedError`, then an explained message-size error, then a
    :class:`CallError` when the status carries details; anything else unchanged. Returns only
    when ``exc`` is not a call failure of ours (a real cancellation), so the caller's ``raise``
    keeps it.
    """
    if source is not None and source.error is not None:
        raise source.error from None
    if isinstance(exc, grpc.RpcError):
        if source is not None and source.tracked:
            source.close()
            raise StreamInterruptedError(exc, source) from exc
        explained = explain_size_error(exc)
        if explained is not None:
            raise explained from exc
        details = StatusDetails.from_error(exc)
        if details is not None:
            raise CallError(exc, details) from exc
