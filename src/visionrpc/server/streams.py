"""Bidirectional inference streams: frames in, one answer each, in order, with bounded work.

Both streaming RPCs (the typed ``InferStream`` and the protocol's ``ModelStreamInfer``) run on
:func:`serve_frames`; a :class:`FrameHandler` says how one kind of stream answers a frame and how a
failed frame is answered. The machinery:

- At most ``window`` frames are read ahead of the answer being sent, and each frame read holds one
  of its client's in-flight slots (shared with the client's unary calls) until it is answered: when
  either is used up the reader stops pulling from the stream and HTTP/2 flow control pushes back
  on a producer that is too fast, so a client with many streams is served in turn, not refused.
- A frame that fails is answered with its error (``FrameHandler.failed``) and the stream goes on.
- When reading fails (a frame that does not parse, a client that gives up half-way), the frames
  already read are still answered, then the call ends with a status at once.
- When the server drains, reading stops once the frames already sent are read (see
  :class:`_FrameReader`), every frame read is answered, and the call ends UNAVAILABLE saying how
  many were answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from google.protobuf.message import DecodeError

from visionrpc.errors import InvalidInputError
from visionrpc.runtime.budget import Deadline
from visionrpc.runtime.fairness import ClientSlots
from visionrpc.server.decoding import UndecodableMessageError
from visionrpc.server.drain import DrainingError
from visionrpc.server.status import Context, abort_with, log_unexpected
from visionrpc.settings import DrainSettings

if TYPE_CHECKING:  # OpenTelemetry is imported only when tracing is on
    from visionrpc.server.otel import Tracing

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class FrameHandler(Generic[Req, Resp]):
    """How one kind of stream answers its frames."""

    request_type: str
    """The request message's name, for the error that ends a stream on an unreadable frame."""
    span_name: str
    """Name of the trace span of each frame (when tracing is on)."""
    answer: Callable[[Req, Deadline, str], Awaitable[Resp]]
    """One frame's answer, given the frame's deadline and the client's key; raises on failure."""
    failed: Callable[[Req, Exception], Resp]
    """The answer to a frame whose ``answer`` raised: the stream goes on."""
    request_id: Callable[[Resp], str]
    """The request id an answer carries (for the frame's span)."""


class FrameSpan(Protocol):
    """A frame's trace span (``server.otel``), told how the frame ended."""

    def __enter__(self) -> FrameSpan: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def answered(self, request_id: str) -> None: ...

    def failed(self, request_id: str, error: Exception) -> None: ...


class _NoSpan:
    """The frame span when tracing is off."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def answered(self, request_id: str) -> None:
        return None

    def failed(self, request_id: str, error: Exception) -> None:
        return None


@dataclass(frozen=True)
class _EndOfStream:
    """What the reader puts last: the exception that stopped reading, if any."""

    error: BaseException | None = None


class _FrameReader(Generic[Req, Resp]):
    """Reads a stream's frames into a bounded queue of answer tasks, then puts the end.

    Reading stops at the end of the stream, when the stream breaks, or, once the server drains,
    when no frame arrives for ``drain.stream_frame_wait_ms`` (frames the client sent before the
    signal are in transport buffers and arrive at once) or ``drain.stream_read_s`` has passed.
    """

    def __init__(
        self,
        frames: AsyncIterator[Req],
        answer: Callable[[Req], Coroutine[Any, Any, Resp]],
        request_type: str,
        window: int,
        slots: ClientSlots,
        client: str,
    ) -> None:
        self.pending: asyncio.Queue[asyncio.Task[Resp] | _EndOfStream] = asyncio.Queue(window)
        self.count = 0
        self._frames = frames
        self._answer = answer
        self._request_type = request_type
        self._slots = slots  # the client's in-flight slots, shared by all its calls and streams
        self._client = client
        self._waiting_since: float | None = None
        """Loop time the reader began waiting for the next frame; None while it is not waiting
        (answering, or held back by the window)."""
        self._stop_at: float | None = None
        """Loop time after which the reader reads no further frame (set when the drain starts)."""

    async def run(self, draining: asyncio.Event, settings: DrainSettings) -> None:
        reading = asyncio.create_task(self._read())
        drain = asyncio.create_task(draining.wait())
        try:
            await asyncio.wait((reading, drain), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                await self._read_until_quiet(reading, settings)
        finally:
            drain.cancel()
            reading.cancel()
        if reading.cancelled():  # stopped by the drain
            end = _EndOfStream(DrainingError(self._drained_message()))
        else:
            end = _EndOfStream(reading.result())
        await self.pending.put(end)

    async def _read(self) -> BaseException | None:
        """Read until the stream ends; the error that ended reading early, if any.

        Each frame takes one of its client's in-flight slots before it is read, so nothing is read
        that could not be worked on; the slot is freed when the frame's answer is done.
        """
        loop = asyncio.get_running_loop()
        frames = aiter(self._frames)
        slots, client = self._slots, self._client

        def release(_: object) -> None:
            slots.release(client)

        try:
            while True:
                await slots.acquire(client)
                self._waiting_since = loop.time()
                try:
                    request = await anext(frames)
                except BaseException:
                    slots.release(client)
                    raise
                finally:
                    self._waiting_since = None
                self.count += 1
                task = asyncio.create_task(self._answer(request))
                task.add_done_callback(release)
                try:
                    await self.pending.put(task)
                except asyncio.CancelledError:
                    task.cancel()
                    raise
                if self._stop_at is not None and loop.time() >= self._stop_at:
                    return DrainingError(self._drained_message())
        except StopAsyncIteration:
            return None
        except (DecodeError, UndecodableMessageError):
            kind = self._request_type
            article = "an" if kind[:1] in "AEIOU" else "a"
            return InvalidInputError(
                f"frame {self.count + 1} of the stream is not {article} {kind}; the "
                f"{self.count} frame(s) before it were answered"
            )
        except Exception as exc:  # the stream itself broke: end the call with a status
            return exc

    async def _read_until_quiet(self, reading: asyncio.Task[Any], settings: DrainSettings) -> None:
        """While draining: stop ``reading`` once it has waited ``stream_frame_wait_ms`` for a
        frame, or once ``stream_read_s`` has passed and it would read the next one."""
        loop = asyncio.get_running_loop()
        quiet_s = settings.stream_frame_wait_ms / 1000
        deadline = self._stop_at = loop.time() + settings.stream_read_s
        while not reading.done():
            since, now = self._waiting_since, loop.time()
            if since is not None and (now - since >= quiet_s or now >= deadline):
                reading.cancel()
                await asyncio.wait((reading,))
                return
            next_check = quiet_s if since is None else min(since + quiet_s, deadline) - now
            await asyncio.wait((reading,), timeout=max(next_check, 0.001))

    def _drained_message(self) -> str:
        return (
            f"server is draining (shutting down): the {self.count} frame(s) it read from this "
            "stream were answered; send the frames after them to another server"
        )


def frame_deadline(stream: Deadline) -> Deadline:
    """A frame's own deadline: the stream's time limit, cancelled when the stream is."""
    deadline = Deadline(stream.caller_at)
    if stream.cancelled:
        deadline.cancel()
    return deadline


@dataclass(frozen=True)
class StreamLimits:
    """What bounds every stream of a server: read-ahead, per-client slots and the drain."""

    window: int
    slots: ClientSlots
    draining: asyncio.Event
    drain: DrainSettings


async def serve_frames(
    frames: AsyncIterator[Req],
    handler: FrameHandler[Req, Resp],
    *,
    context: Context,
    stream_deadline: Deadline,
    client: str,
    limits: StreamLimits,
    tracing: Tracing | None,
) -> AsyncIterator[Resp]:
    """Answer ``frames`` in order with ``handler`` (see the module's docstring)."""

    async def answer(request: Req) -> Resp:
        """One frame, in a span of its own when tracing is on: a failure is the frame's answer."""
        span = _NoSpan() if tracing is None else tracing.frame_span(handler.span_name)
        with span:
            try:
                response = await handler.answer(request, frame_deadline(stream_deadline), client)
            except Exception as exc:
                log_unexpected(exc, f"{handler.span_name} failed")
                response = handler.failed(request, exc)
                span.failed(handler.request_id(response), exc)
            else:
                span.answered(handler.request_id(response))
            return response

    reader = _FrameReader(
        frames,
        answer,
        handler.request_type,
        limits.window,
        limits.slots,
        client,
    )
    pending = reader.pending
    reading = asyncio.create_task(reader.run(limits.draining, limits.drain))
    try:
        while not isinstance(item := await pending.get(), _EndOfStream):
            yield await item
        if item.error is not None:
            log_unexpected(item.error)
            await abort_with(context, item.error)
    finally:
        reading.cancel()
        while not pending.empty():
            leftover = pending.get_nowait()
            if isinstance(leftover, asyncio.Task):
                leftover.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
