"""``Client``: the blocking client. ``with Client("host:port") as c: c.infer("part.jpg")``."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
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

R = TypeVar("R")
M = TypeVar("M")


def _stream(
    call: Iterable[M],
    convert: Callable[[M], R],
    source: RequestSource[Any, Any] | None = None,
) -> Generator[R, None, None]:
    """Iterate a response stream; leaving the loop early cancels the call on the server."""
    try:
        for reply in call:
            if source is not None:
                source.answer()
            yield convert(reply)
    except grpc.RpcError as exc:
        raise_call_error(exc, source)
        raise
    finally:
        cancel = getattr(call, "cancel", None)
        if cancel is not None:
            cancel()


class Client(ClientBase):
    """Blocking client over one channel. Failed calls raise ``grpc.RpcError`` with the server's
    status code and message (:class:`~visionrpc.client.errors.MessageSizeError` for size limits).

    ``timeout``: seconds, ``None`` for no deadline, or ``USE_CLIENT_DEFAULT`` for
    ``VISIONRPC_TIMEOUT_S`` (30 s). ``options`` are gRPC channel arguments; they replace the
    client's own (64 MiB message limits, retries on UNAVAILABLE).

    ``tls``, ``ca_file``, ``cert_file``/``key_file`` (mTLS), ``server_name`` (the name the
    server's certificate carries, when it differs from the target's host) and ``token`` (sent as
    ``authorization: Bearer``) default to ``VISIONRPC_USE_TLS``, ``VISIONRPC_CA_FILE``,
    ``VISIONRPC_CLIENT_CERT_FILE``/``VISIONRPC_CLIENT_KEY_FILE``, ``VISIONRPC_SERVER_NAME`` and
    ``VISIONRPC_TOKEN``; see :class:`~visionrpc.client.base.ClientBase`.
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
        self.channel: grpc.Channel = (
            grpc.secure_channel(self.target, self._credentials, options=self._options)
            if self._credentials is not None
            else grpc.insecure_channel(self.target, options=self._options)
        )
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

    def _call(
        self,
        method: Callable[..., M],
        request: Any,
        timeout: Timeout,
        source: RequestSource[Any, Any] | None = None,
    ) -> M:
        """One unary or client-streaming call, its failure re-raised by ``raise_call_error``."""
        try:
            return method(request, **self._call_options(timeout))
        except grpc.RpcError as exc:
            raise_call_error(exc, source)
            raise

    def ping(self, message: str = "", *, timeout: Timeout = USE_CLIENT_DEFAULT) -> PingResult:
        reply = self._call(self._core.Ping, core_pb2.PingRequest(message=message), timeout)
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
        """Numbers as the server produces them; no deadline unless ``timeout`` sets one."""
        request = core_pb2.StreamNumbersRequest(
            start=start, count=count, step=step, interval_ms=interval_ms
        )
        call = self._core.StreamNumbers(request, **self._call_options(timeout))
        return _stream(call, NumberResult.from_proto)

    def upload_numbers(
        self, values: Iterable[int], *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> UploadResult:
        """Count, sum, min, max and mean of ``values``; an exception raised while iterating
        ``values`` is re-raised as it was."""
        source = RequestSource(values, lambda v: core_pb2.NumberRequest(value=v))
        reply = self._call(self._core.UploadNumbers, iter(source), timeout, source)
        return UploadResult.from_proto(reply)

    def chat(
        self, room: str, sender: str, outgoing: Iterable[str], *, timeout: Timeout = None
    ) -> Generator[ChatMessageResult, None, None]:
        """Join ``room`` with the first outgoing text; yields every message posted to the room.

        ``outgoing`` is consumed on a gRPC thread, so it may block (e.g. read stdin). When it
        ends, the server ends the stream after delivering what was already posted.
        """
        source = RequestSource(
            outgoing, lambda text: core_pb2.ChatMessage(room=room, sender=sender, text=text)
        )
        call = self._core.Chat(iter(source), **self._call_options(timeout))
        return _stream(call, ChatMessageResult.from_proto, source)

    def infer(
        self, image: ImageLike, *, timeout: Timeout = USE_CLIENT_DEFAULT, **options: Any
    ) -> InferenceResult:
        """Run one image; ``options`` are :func:`infer_request`'s keywords (model, thresholds)."""
        reply = self._call(self._inference.Infer, infer_request(image, **options), timeout)
        return InferResponseConverter.to_types(reply)

    def infer_stream(
        self, images: Iterable[ImageLike], *, timeout: Timeout = None, **options: Any
    ) -> Generator[StreamResult, None, None]:
        """Stream frames; yields one :class:`StreamResult` per frame, in order.

        A frame's request_id is its index unless ``options`` names one. ``images`` is consumed on a
        gRPC thread as the server's flow control allows; an exception it raises ends the stream
        and is re-raised here. A stream that fails (the server drains or dies) raises
        :class:`~visionrpc.client.errors.StreamInterruptedError`, which holds the images sent but
        not answered, to resend.
        """
        explicit_id = options.pop("request_id", None)
        counter = iter(range(1 << 62))

        def build(image: ImageLike) -> inference_pb2.InferRequest:
            return infer_request(image, request_id=explicit_id or str(next(counter)), **options)

        source = RequestSource(images, build, track=True)
        call = self._inference.InferStream(iter(source), **self._call_options(timeout))
        return _stream(call, StreamResult.from_proto, source)

    def list_models(
        self, *, include_unavailable: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> tuple[list[ModelDescription], str]:
        """(every model the server serves, the default model's name or "" when there is none).

        ``include_unavailable`` adds the models of its directory that do not serve (unloaded,
        loading, failed): of those only name, version, state and state_reason are meaningful.
        """
        request = inference_pb2.ListModelsRequest(include_unavailable=include_unavailable)
        reply = self._call(self._inference.ListModels, request, timeout)
        return [ModelInfoConverter.to_types(m) for m in reply.models], reply.default_model

    def get_model_info(
        self, name: str = "", *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> ModelDescription:
        request = inference_pb2.GetModelInfoRequest(name=name)
        reply = self._call(self._inference.GetModelInfo, request, timeout)
        return ModelInfoConverter.to_types(reply)

    def load_model(self, name: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> ModelDescription:
        """Load a model of the server's directory, or reload it when loaded (zero-downtime);
        the version now serving. Needs a token with the ``models`` scope when auth is on."""
        request = inference_pb2.LoadModelRequest(name=name)
        reply = self._call(self._inference.LoadModel, request, timeout)
        return ModelInfoConverter.to_types(reply)

    def reload_model(self, name: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> ModelDescription:
        """Reload a loaded model from its files (zero-downtime); ModelNotFound when it is not
        loaded. The version now serving."""
        request = inference_pb2.ReloadModelRequest(name=name)
        reply = self._call(self._inference.ReloadModel, request, timeout)
        return ModelInfoConverter.to_types(reply)

    def unload_model(self, name: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> ModelDescription:
        """Stop serving a model (requests already running finish); its entry afterwards, with
        only name, version, state and state_reason set."""
        request = inference_pb2.UnloadModelRequest(name=name)
        reply = self._call(self._inference.UnloadModel, request, timeout)
        return ModelInfoConverter.to_types(reply)

    def health(self, service: str = "", *, timeout: Timeout = USE_CLIENT_DEFAULT) -> HealthResult:
        """grpc.health.v1 Check; NOT_FOUND (an RpcError) for a service the server does not know."""
        request = health_pb2.HealthCheckRequest(service=service)
        reply = self._call(self._health.Check, request, timeout)
        return HealthResult.from_proto(service, reply)
