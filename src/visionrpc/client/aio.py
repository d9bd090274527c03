"""``AsyncClient``: the asyncio client. ``async with AsyncClient("host:port") as c: ...``."""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
)
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visionrpc.client.base import (
    USE_CLIENT_DEFAULT,
    ChannelOptions,
    ClientBase,
    Metadata,
    PathLike,
    Timeout,
)
from visionrpc.client.errors import RequestSource, raise_call_error
from visionrpc.client.requests import ImageLike, infer_request
from visionrpc.client.results import (
    ChatMessageResult,
    HealthResult,
    NumberResult,
    PingResult,
    StreamResult,
    UploadResult,
)
from visionrpc.client.settings import ClientSettings
from visionrpc.types import InferenceResult, ModelDescription
from visionrpc.v1 import core_pb2, core_pb2_grpc, inference_pb2, inference_pb2_grpc
from visionrpc.wire.converters import InferResponseConverter, ModelInfoConverter

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M")


async def _stream(
    call: AsyncIterable[M],
    convert: Callable[[M], R],
    source: RequestSource[Any, Any] | None = None,
) -> AsyncGenerator[R, None]:
    """Iterate a response stream; leaving the loop early cancels the call on the server."""
    try:
        async for reply in call:
            if source is not None:
                source.answer()
            yield convert(reply)
    except (grpc.RpcError, asyncio.CancelledError) as exc:
        # grpc.aio ends the call with CancelledError when the request iterator raises
        raise_call_error(exc, source)
        raise
    finally:
        cancel = getattr(call, "cancel", None)
        if cancel is not None:
            cancel()


class AsyncClient(ClientBase):
    """asyncio client over one channel; the same options and results as :class:`Client`.

    Failed calls raise ``grpc.aio.AioRpcError`` (a ``grpc.RpcError``).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: Timeout = USE_CLIENT_DEFAULT,
        metadata: Metadata = (),
        wait_for_ready: bool = False,
        options: ChannelOptions = (),
        settings: ClientSettings | None = None,
        tls: bool | None = None,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            metadata=metadata,
            wait_for_ready=wait_for_ready,
            options=options,
            settings=settings,
            tls=tls,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            server_name=server_name,
            token=token,
        )
        self.channel: grpc.aio.Channel = (
            grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            if self._credentials is not None
            else grpc.aio.insecure_channel(self.target, options=self._options)
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

    async def _call(
        self,
        method: Callable[..., Awaitable[M]],
        request: Any,
        timeout: Timeout,
        source: RequestSource[Any, Any] | None = None,
    ) -> M:
        """One unary or client-streaming call, its failure re-raised by ``raise_call_error``."""
        try:
            return await method(request, **self._call_options(timeout))
        except (grpc.RpcError, asyncio.CancelledError) as exc:
            raise_call_error(exc, source)
            raise

    async def ping(self, message: str = "", *, timeout: Timeout = USE_CLIENT_DEFAULT) -> PingResult:
        reply = await self._call(self._core.Ping, core_pb2.PingRequest(message=message), timeout)
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
        return _stream(call, NumberResult.from_proto)

    async def upload_numbers(
        self, values: Iterable[int] | AsyncIterable[int], *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> UploadResult:
        """Count, sum, min, max and mean of ``values``; an exception raised while iterating
        ``values`` is re-raised as it was."""
        source = RequestSource(values, lambda v: core_pb2.NumberRequest(value=v))
        reply = await self._call(self._core.UploadNumbers, aiter(source), timeout, source)
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
        source = RequestSource(
            outgoing, lambda text: core_pb2.ChatMessage(room=room, sender=sender, text=text)
        )
        call = self._core.Chat(aiter(source), **self._call_options(timeout))
        return _stream(call, ChatMessageResult.from_proto, source)

    async def infer(
        self, image: ImageLike, *, timeout: Timeout = USE_CLIENT_DEFAULT, **options: Any
    ) -> InferenceResult:
        """Run one image; ``options`` are :func:`infer_request`'s keywords (model, thresholds)."""
        reply = await self._call(self._inference.Infer, infer_request(image, **options), timeout)
        return InferResponseConverter.to_types(reply)

    def infer_stream(
        self,
        images: Iterable[ImageLike] | AsyncIterable[ImageLike],
        *,
        timeout: Timeout = None,
        **options: Any,
    ) -> AsyncGenerator[StreamResult, None]:
        """Stream frames; yields one :class:`StreamResult` per frame, in order. A stream that fails
        raises :class:`~visionrpc.client.errors.StreamInterruptedError` (the images sent but not
        answered, to resend), like :meth:`Client.infer_stream`."""
        explicit_id = options.pop("request_id", None)
        counter = iter(range(1 << 62))

        def build(image: ImageLike) -> inference_pb2.InferRequest:
            return infer_request(image, request_id=explicit_id or str(next(counter)), **options)

        source = RequestSource(images, build, track=True)
        call = self._inference.InferStream(aiter(source), **self._call_options(timeout))
        return _stream(call, StreamResult.from_proto, source)

    async def list_models(
        self, *, include_unavailable: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> tuple[list[ModelDescription], str]:
        """(every model the server serves, the default model's name or "" when there is none).

        ``include_unavailable`` adds the models of its directory that do not serve (unloaded,
        loading, failed): of those only name, version, state and state_reason are meaningful.
        """
        request = inference_pb2.ListModelsRequest(include_unavailable=include_unavailable)
        reply = await self._call(self._inference.ListModels, request, timeout)
        return [ModelInfoConverter.to_types(m) for m in reply.models], reply.default_model

    async def get_model_info(
        self, name: str = "", *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> ModelDescription:
        request = inference_pb2.GetModelInfoRequest(name=name)
        reply = await self._call(self._inference.GetModelInfo, request, timeout)
        return ModelInfoConverter.to_types(reply)

    async def load_model(
        self, name: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> ModelDescription:
        """Load a model of the server's directory, or reload it when loaded (zero-downtime);
        the version now serving. Needs a token with the ``models`` scope when auth is on."""
        request = inference_pb2.LoadModelRequest(name=name)
        reply = await self._call(self._inference.LoadModel, request, timeout)
        return ModelInfoConverter.to_types(reply)

    async def reload_model(
        self, name: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> ModelDescription:
        """Reload a loaded model from its files (zero-downtime); ModelNotFound when it is not
        loaded. The version now serving."""
        request = inference_pb2.ReloadModelRequest(name=name)
        reply = await self._call(self._inference.ReloadModel, request, timeout)
        return ModelInfoConverter.to_types(reply)

    async def unload_model(
        self, name: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> ModelDescription:
        """Stop serving a model (requests already running finish); its entry afterwards, with
        only name, version, state and state_reason set."""
        request = inference_pb2.UnloadModelRequest(name=name)
        reply = await self._call(self._inference.UnloadModel, request, timeout)
        return ModelInfoConverter.to_types(reply)

    async def health(
        self, service: str = "", *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> HealthResult:
        """grpc.health.v1 Check; NOT_FOUND (an AioRpcError) for an unknown service."""
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await self._call(self._health.Check, request, timeout)
        return HealthResult.from_proto(service, reply)
