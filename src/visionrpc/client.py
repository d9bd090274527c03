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
import os
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
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visionrpc.converters import InferResponseConverter, ModelInfoConverter
from visionrpc.runtime.types import InferenceResult, MaskFormat, ModelDescription
from visionrpc.settings import Settings
from visionrpc.v1 import core_pb2, core_pb2_grpc, inference_pb2, inference_pb2_grpc

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


# -- inference inputs and results ------------------------------------------------------------------

ImageLike = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Any
"""A path, encoded bytes (JPEG/PNG/BMP/WebP/TIFF), an RGB/gray/RGBA uint8 array or a PIL image."""

_MASK_FORMATS = {
    MaskFormat.RLE: inference_pb2.MASK_FORMAT_RLE,
    MaskFormat.PNG: inference_pb2.MASK_FORMAT_PNG,
    MaskFormat.POLYGON: inference_pb2.MASK_FORMAT_POLYGON,
}
_ARRAY_FORMATS = {
    1: inference_pb2.PIXEL_FORMAT_GRAY,
    3: inference_pb2.PIXEL_FORMAT_RGB,
    4: inference_pb2.PIXEL_FORMAT_RGBA,
}


def _array_image(array: np.ndarray) -> inference_pb2.RawImage:
    if array.dtype != np.uint8:
        raise TypeError(f"arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _ARRAY_FORMATS:
        raise TypeError(f"arrays must be HxW, HxWx3 (RGB) or HxWx4 (RGBA), got {array.shape}")
    height, width, channels = array.shape
    return inference_pb2.RawImage(
        width=width,
        height=height,
        channels=channels,
        pixel_format=_ARRAY_FORMATS[channels],
        data=np.ascontiguousarray(array).tobytes(),
    )


def infer_request(
    image: ImageLike,
    *,
    model: str = "",
    confidence_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    classes: Iterable[str] = (),
    return_masks: bool = False,
    mask_format: MaskFormat | str = MaskFormat.RLE,
    request_id: str = "",
) -> inference_pb2.InferRequest:
    """Build an ``InferRequest`` from any supported image type (arrays and PIL images go raw)."""
    request = inference_pb2.InferRequest(
        model=model,
        confidence_threshold=confidence_threshold or 0.0,
        iou_threshold=iou_threshold or 0.0,
        max_detections=max_detections or 0,
        classes=list(classes),
        return_masks=return_masks,
        mask_format=_MASK_FORMATS[MaskFormat(mask_format)],
        request_id=request_id,
    )
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as f:
            request.image_bytes = f.read()
    elif isinstance(image, bytes | bytearray | memoryview):
        request.image_bytes = bytes(image)
    elif isinstance(image, np.ndarray):
        request.raw.CopyFrom(_array_image(image))
    elif hasattr(image, "mode") and hasattr(image, "convert"):  # PIL.Image, without importing PIL
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGB")
        request.raw.CopyFrom(_array_image(np.asarray(image)))
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}")
    return request


@dataclass(frozen=True)
class StreamResult:
    """One frame's outcome in ``infer_stream``: a result, or the error of that frame alone."""

    request_id: str
    result: InferenceResult | None
    error_code: str = ""  # gRPC status code name, e.g. "INVALID_ARGUMENT"
    error_message: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None

    @classmethod
    def from_proto(cls, response: inference_pb2.InferResponse) -> StreamResult:
        if response.HasField("error") and response.error.code != 0:
            code = next(
                (c.name for c in grpc.StatusCode if c.value[0] == response.error.code),
                str(response.error.code),
            )
            return cls(response.request_id, None, code, response.error.message)
        return cls(response.request_id, InferResponseConverter.to_types(response))


def _models(reply: inference_pb2.ListModelsResponse) -> tuple[list[ModelDescription], str]:
    return [ModelInfoConverter.to_types(m) for m in reply.models], reply.default_model


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
        self._inference = inference_pb2_grpc.InferenceMethodsStub(self.channel)
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

    def infer(
        self, image: ImageLike, *, timeout: Timeout = DEFAULT_TIMEOUT, **options: Any
    ) -> InferenceResult:
        """Run one image; ``options`` are :func:`infer_request`'s keywords (model, thresholds)."""
        reply = self._inference.Infer(
            infer_request(image, **options), **self._call_options(timeout)
        )
        return InferResponseConverter.to_types(reply)

    def infer_stream(
        self, images: Iterable[ImageLike], *, timeout: Timeout = None, **options: Any
    ) -> Generator[StreamResult, None, None]:
        """Stream frames; yields one :class:`StreamResult` per frame, in order.

        A frame's request_id is its index unless ``options`` names one. ``images`` is consumed on a
        gRPC thread as the server's flow control allows.
        """
        explicit_id = options.pop("request_id", None)
        requests = (
            infer_request(image, request_id=explicit_id or str(i), **options)
            for i, image in enumerate(images)
        )
        call = self._inference.InferStream(requests, **self._call_options(timeout))
        return self._stream(call, StreamResult.from_proto)

    def list_models(
        self, *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> tuple[list[ModelDescription], str]:
        """(every model the server holds, the default model's name)."""
        reply = self._inference.ListModels(
            inference_pb2.ListModelsRequest(), **self._call_options(timeout)
        )
        return _models(reply)

    def get_model_info(
        self, name: str = "", *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> ModelDescription:
        reply = self._inference.GetModelInfo(
            inference_pb2.GetModelInfoRequest(name=name), **self._call_options(timeout)
        )
        return ModelInfoConverter.to_types(reply)

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
        self._inference = inference_pb2_grpc.InferenceMethodsStub(self.channel)
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

    async def infer(
        self, image: ImageLike, *, timeout: Timeout = DEFAULT_TIMEOUT, **options: Any
    ) -> InferenceResult:
        """Run one image; ``options`` are :func:`infer_request`'s keywords (model, thresholds)."""
        reply = await self._inference.Infer(
            infer_request(image, **options), **self._call_options(timeout)
        )
        return InferResponseConverter.to_types(reply)

    def infer_stream(
        self,
        images: Iterable[ImageLike] | AsyncIterable[ImageLike],
        *,
        timeout: Timeout = None,
        **options: Any,
    ) -> AsyncGenerator[StreamResult, None]:
        """Stream frames; yields one :class:`StreamResult` per frame, in order."""
        explicit_id = options.pop("request_id", None)
        counter = iter(range(1 << 62))

        def build(image: ImageLike) -> inference_pb2.InferRequest:
            return infer_request(image, request_id=explicit_id or str(next(counter)), **options)

        call = self._inference.InferStream(_amap(images, build), **self._call_options(timeout))
        return self._stream(call, StreamResult.from_proto)

    async def list_models(
        self, *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> tuple[list[ModelDescription], str]:
        """(every model the server holds, the default model's name)."""
        reply = await self._inference.ListModels(
            inference_pb2.ListModelsRequest(), **self._call_options(timeout)
        )
        return _models(reply)

    async def get_model_info(
        self, name: str = "", *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> ModelDescription:
        reply = await self._inference.GetModelInfo(
            inference_pb2.GetModelInfoRequest(name=name), **self._call_options(timeout)
        )
        return ModelInfoConverter.to_types(reply)

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
