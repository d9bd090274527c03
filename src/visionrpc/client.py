"""Client library: ``Client`` (blocking) and ``AsyncClient`` (asyncio) with typed results.

Both use the same channel options as the server (64 MiB messages by default) and let gRPC itself
retry UNAVAILABLE through the service config, so a restarting or still-loading server is
retried with backoff without hand-written loops. Failed calls raise ``grpc.RpcError`` (for the
async client ``grpc.aio.AioRpcError``) with the server's status code and message.

Deadlines: unary and client-streaming calls default to ``timeout_s`` from Settings; the
long-lived streams (``stream_numbers``, ``chat``) default to none. Pass ``timeout=`` to override,
``timeout=None`` for no deadline.
"""

from __future__ import annotations

import enum
import json
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visionrpc.settings import Settings
from visionrpc.v1 import core_pb2, core_pb2_grpc

T = TypeVar("T")
R = TypeVar("R")

RETRIED_SERVICES: tuple[str, ...] = (
    "visionrpc.v1.CoreServices",
    "visionrpc.v1.InferenceMethods",
    "grpc.health.v1.Health",
)
"""Services whose calls gRPC retries on UNAVAILABLE (before any response has arrived)."""


class _Default(enum.Enum):
    TIMEOUT = enum.auto()


DEFAULT_TIMEOUT = _Default.TIMEOUT
"""Sentinel: use the client's default timeout."""
Timeout = float | None | _Default
Metadata = Sequence[tuple[str, str]]


def service_config(max_attempts: int = 5) -> str:
    """gRPC service config JSON with a retry policy for UNAVAILABLE."""
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": name} for name in RETRIED_SERVICES],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def channel_options(settings: Settings, max_attempts: int = 5) -> list[tuple[str, Any]]:
    """Channel arguments matching the server's message limits, with retries enabled."""
    return [
        ("grpc.max_receive_message_length", settings.max_send_message_bytes),
        ("grpc.max_send_message_length", settings.max_receive_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(max_attempts)),
    ]


# -- typed results ---------------------------------------------------------------------------------


def _datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PingResult:
    message: str
    server_time: datetime
    server_version: str
    instance_id: str

    @classmethod
    def from_proto(cls, reply: core_pb2.PingReply) -> PingResult:
        return cls(
            reply.message, _datetime(reply.server_time), reply.server_version, reply.instance_id
        )


@dataclass(frozen=True, slots=True)
class NumberResult:
    index: int
    value: int

    @classmethod
    def from_proto(cls, reply: core_pb2.NumberReply) -> NumberResult:
        return cls(reply.index, reply.value)


@dataclass(frozen=True, slots=True)
class UploadResult:
    count: int
    sum: int
    min: int
    max: int
    mean: float

    @classmethod
    def from_proto(cls, reply: core_pb2.UploadSummary) -> UploadResult:
        return cls(reply.count, reply.sum, reply.min, reply.max, reply.mean)


@dataclass(frozen=True, slots=True)
class ChatMessageResult:
    room: str
    sender: str
    text: str
    seq: int
    sent_at: datetime

    @classmethod
    def from_proto(cls, message: core_pb2.ChatMessage) -> ChatMessageResult:
        return cls(
            message.room, message.sender, message.text, message.seq, _datetime(message.sent_at)
        )


@dataclass(frozen=True, slots=True)
class HealthResult:
    service: str
    status: str  # SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"

    @classmethod
    def from_proto(cls, service: str, reply: health_pb2.HealthCheckResponse) -> HealthResult:
        return cls(service, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


# -- shared plumbing -------------------------------------------------------------------------------


class _ClientBase:
    """Settings, defaults and per-call options shared by the sync and async clients."""

    def __init__(
        self,
        target: str | None,
        *,
        timeout: float | None,
        settings: Settings | None,
        metadata: Metadata,
        wait_for_ready: bool,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self.settings = settings or Settings.model_validate({})  # env + defaults
        self.target = target or self.settings.target
        self.timeout = self.settings.timeout_s if timeout is None else timeout
        self._metadata = tuple(metadata)
        self._wait_for_ready = wait_for_ready
        self._options = [*channel_options(self.settings), *options]

    def _call_options(
        self, timeout: Timeout = DEFAULT_TIMEOUT, metadata: Metadata = ()
    ) -> dict[str, Any]:
        """Keyword arguments for a stub call: deadline, metadata and wait_for_ready."""
        return {
            "timeout": self.timeout if timeout is DEFAULT_TIMEOUT else timeout,
            "metadata": (*self._metadata, *metadata) or None,
            "wait_for_ready": self._wait_for_ready or None,
        }

    @staticmethod
    def _chat_requests(
        room: str, sender: str, texts: Iterable[str]
    ) -> Iterator[core_pb2.ChatMessage]:
        for text in texts:
            yield core_pb2.ChatMessage(room=room, sender=sender, text=text)


class Client(_ClientBase):
    """Blocking client. ``with Client("host:port") as c: c.ping("hi")``."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = None,
        settings: Settings | None = None,
        metadata: Metadata = (),
        wait_for_ready: bool = False,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            settings=settings,
            metadata=metadata,
            wait_for_ready=wait_for_ready,
            options=options,
        )
        self.channel: grpc.Channel = grpc.insecure_channel(self.target, options=self._options)
        self._core = core_pb2_grpc.CoreServicesStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _stream(call: Any, convert: Callable[[Any], R]) -> Generator[R, None, None]:
        """Iterate a response stream; leaving the loop early cancels the call on the server."""
        try:
            for reply in call:
                yield convert(reply)
        finally:
            call.cancel()

    def ping(self, message: str = "", *, timeout: Timeout = DEFAULT_TIMEOUT) -> PingResult:
        reply = self._core.Ping(
            core_pb2.PingRequest(message=message), **self._call_options(timeout)
        )
        return PingResult.from_proto(reply)

    def stream_numbers(
        self,
        start: int = 0,
        count: int = 10,
        step: int = 1,
        interval_ms: int = 0,
        *,
        timeout: Timeout = None,
    ) -> Generator[NumberResult, None, None]:
        request = core_pb2.StreamNumbersRequest(
            start=start, count=count, step=step, interval_ms=interval_ms
        )
        call = self._core.StreamNumbers(request, **self._call_options(timeout))
        return self._stream(call, NumberResult.from_proto)

    def upload_numbers(
        self, values: Iterable[int], *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> UploadResult:
        requests = (core_pb2.NumberRequest(value=v) for v in values)
        reply = self._core.UploadNumbers(requests, **self._call_options(timeout))
        return UploadResult.from_proto(reply)

    def chat(
        self, room: str, sender: str, outgoing: Iterable[str], *, timeout: Timeout = None
    ) -> Generator[ChatMessageResult, None, None]:
        """Join ``room`` with the first outgoing text; yields every message posted to the room.

        ``outgoing`` is consumed on a gRPC thread, so it may block (e.g. read stdin). When it
        ends, the server ends the stream after delivering what was already posted.
        """
        call = self._core.Chat(
            self._chat_requests(room, sender, outgoing), **self._call_options(timeout)
        )
        return self._stream(call, ChatMessageResult.from_proto)

    def health(self, service: str = "", *, timeout: Timeout = DEFAULT_TIMEOUT) -> HealthResult:
        """grpc.health.v1 Check; NOT_FOUND (an RpcError) for a service the server does not know."""
        reply = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), **self._call_options(timeout)
        )
        return HealthResult.from_proto(service, reply)


class AsyncClient(_ClientBase):
    """asyncio client. ``async with AsyncClient("host:port") as c: await c.ping("hi")``."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = None,
        settings: Settings | None = None,
        metadata: Metadata = (),
        wait_for_ready: bool = False,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            settings=settings,
            metadata=metadata,
            wait_for_ready=wait_for_ready,
            options=options,
        )
        self.channel: grpc.aio.Channel = grpc.aio.insecure_channel(
            self.target, options=self._options
        )
        self._core = core_pb2_grpc.CoreServicesStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)

    @staticmethod
    async def _stream(call: Any, convert: Callable[[Any], R]) -> AsyncGenerator[R, None]:
        """Iterate a response stream; leaving the loop early cancels the call on the server."""
        try:
            async for reply in call:
                yield convert(reply)
        finally:
            call.cancel()

    async def ping(self, message: str = "", *, timeout: Timeout = DEFAULT_TIMEOUT) -> PingResult:
        reply = await self._core.Ping(
            core_pb2.PingRequest(message=message), **self._call_options(timeout)
        )
        return PingResult.from_proto(reply)

    def stream_numbers(
        self,
        start: int = 0,
        count: int = 10,
        step: int = 1,
        interval_ms: int = 0,
        *,
        timeout: Timeout = None,
    ) -> AsyncGenerator[NumberResult, None]:
        """``async for n in client.stream_numbers(...)``; ``aclose()`` or break cancels the call."""
        request = core_pb2.StreamNumbersRequest(
            start=start, count=count, step=step, interval_ms=interval_ms
        )
        call = self._core.StreamNumbers(request, **self._call_options(timeout))
        return self._stream(call, NumberResult.from_proto)

    async def upload_numbers(
        self, values: Iterable[int] | AsyncIterable[int], *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> UploadResult:
        requests = _amap(values, lambda v: core_pb2.NumberRequest(value=v))
        reply = await self._core.UploadNumbers(requests, **self._call_options(timeout))
        return UploadResult.from_proto(reply)

    def chat(
        self,
        room: str,
        sender: str,
        outgoing: Iterable[str] | AsyncIterable[str],
        *,
        timeout: Timeout = None,
    ) -> AsyncGenerator[ChatMessageResult, None]:
        """Join ``room`` with the first outgoing text; yields every message posted to the room."""
        requests = _amap(
            outgoing, lambda text: core_pb2.ChatMessage(room=room, sender=sender, text=text)
        )
        call = self._core.Chat(requests, **self._call_options(timeout))
        return self._stream(call, ChatMessageResult.from_proto)

    async def health(
        self, service: str = "", *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> HealthResult:
        """grpc.health.v1 Check; NOT_FOUND (an AioRpcError) for an unknown service."""
        reply = await self._health.Check(
            health_pb2.HealthCheckRequest(service=service), **self._call_options(timeout)
        )
        return HealthResult.from_proto(service, reply)


async def _amap(
    items: Iterable[T] | AsyncIterable[T], convert: Callable[[T], R]
) -> AsyncIterator[R]:
    """Convert a sync or async iterable into an async iterator of requests."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield convert(item)
    else:
        for item in items:
            yield convert(item)
