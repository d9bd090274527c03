"""InferenceMethods: each method converts the request, calls the runtime pipeline, converts back.

The servicer also owns the service's lifecycle for VisionServer (see ``server.app.Service``): it is
registered before start-up (gRPC needs its handlers up front), loads the models in ``start`` and
closes the pipeline in ``stop``; until the models are loaded its calls fail with UNAVAILABLE and
health reports NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from visionrpc.errors import InvalidInputError, NotReadyError, VisionRPCError
from visionrpc.runtime.fairness import ClientSlots
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.repository import ModelRepository
from visionrpc.server.fairness import client_key, in_flight_refusal
from visionrpc.server.status import Context, abort_with, log_unexpected, map_errors, status_for
from visionrpc.settings import Settings
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc
from visionrpc.wire.codes import code_value
from visionrpc.wire.converters import (
    InferRequestConverter,
    InferResponseConverter,
    ModelInfoConverter,
)

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["InferenceMethods"].full_name


@dataclass(frozen=True)
class _EndOfStream:
    """What the reader puts last: the exception that stopped reading, if any."""

    error: BaseException | None = None


class InferenceServicer(inference_pb2_grpc.InferenceMethodsServicer):
    """``visionrpc.v1.InferenceMethods`` over an :class:`InferencePipeline`."""

    name = SERVICE_NAME

    def __init__(self, settings: Settings, repository: ModelRepository | None = None) -> None:
        self.settings = settings
        self._repository = repository
        self._pipeline: InferencePipeline | None = None
        # Per client: Infer calls and InferStream frames in work (max_in_flight_per_client)
        self._in_flight = ClientSlots(settings.fairness.max_in_flight_per_client)

    # -- lifecycle (server.app.Service) --------------------------------------------------------

    @property
    def pipeline(self) -> InferencePipeline:
        if self._pipeline is None:
            raise NotReadyError("models are still loading; retry shortly")
        return self._pipeline

    @property
    def repository(self) -> ModelRepository:
        if self._pipeline is None or self._repository is None:
            raise NotReadyError("models are still loading; retry shortly")
        return self._repository

    def add_to_server(self, server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceMethodsServicer_to_server(self, server)

    async def start(self) -> None:
        if self._repository is None:
            pipeline = await asyncio.to_thread(InferencePipeline.from_settings, self.settings)
            self._repository = pipeline.repository
        else:
            pipeline = InferencePipeline(self._repository, self.settings)
        self._pipeline = pipeline
        for info in self._repository.describe_all():
            log.info(
                "model %s v%s (%s, %dx%d, %s) ready%s",
                info.name,
                info.version,
                info.task.value,
                info.input_width,
                info.input_height,
                info.execution_provider,
                " [default]" if info.name == self._repository.default_name else "",
            )

    async def stop(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.close()

    # -- methods -------------------------------------------------------------------------------

    async def _infer(self, request: pb.InferRequest, client: str) -> pb.InferResponse:
        item = InferRequestConverter.to_types(request)
        result = await self.pipeline.infer(item, client)
        return InferResponseConverter.from_types(result)

    @map_errors
    async def Infer(self, request: pb.InferRequest, context: Context) -> pb.InferResponse:
        client = client_key(context)
        if not self._in_flight.try_acquire(client):
            raise in_flight_refusal(self._in_flight.held(client), self._in_flight.limit)
        try:
            return await self._infer(request, client)
        finally:
            self._in_flight.release(client)

    async def _infer_frame(self, request: pb.InferRequest, client: str) -> pb.InferResponse:
        """One stream frame: a failure becomes this frame's ``error``, not the stream's."""
        try:
            return await self._infer(request, client)
        except Exception as exc:
            code, message = status_for(exc)
            if not isinstance(exc, VisionRPCError):
                log.exception("frame %r failed", request.request_id)
            return pb.InferResponse(
                request_id=request.request_id,
                error=status_pb2.Status(code=code_value(code), message=message),
            )

    async def InferStream(
        self, request_iterator: AsyncIterator[pb.InferRequest], context: Context
    ) -> AsyncIterator[pb.InferResponse]:
        """Frames in, results out in order, at most ``stream_window`` frames in flight.

        When the window is full, or the client already has ``fairness.max_in_flight_per_client``
        calls and frames in work across all its streams, the reader stops pulling from the stream
        and HTTP/2 flow control pushes back on a producer that is too fast: a client with many
        streams gets its frames served in turn, not refused, and never holds more than its share.
        When reading fails (a frame that does not parse, a client that gives up half-way), the
        frames already read are still answered, then the call ends with a status at once instead
        of waiting for its deadline.
        """
        window = self.settings.stream_window
        client = client_key(context)
        in_flight = self._in_flight
        pending: asyncio.Queue[asyncio.Task[pb.InferResponse] | _EndOfStream] = asyncio.Queue(
            window
        )

        def release(_: object) -> None:
            in_flight.release(client)

        async def read() -> None:
            error: BaseException | None = None
            count = 0
            requests = aiter(request_iterator)
            try:
                while True:
                    await in_flight.acquire(client)  # a slot before reading: nothing unbounded
                    try:
                        request = await anext(requests)
                    except BaseException:
                        in_flight.release(client)
                        raise
                    count += 1
                    task = asyncio.create_task(self._infer_frame(request, client))
                    task.add_done_callback(release)
                    try:
                        await pending.put(task)
                    except asyncio.CancelledError:
                        task.cancel()
                        raise
            except StopAsyncIteration:
                pass
            except DecodeError:
                error = InvalidInputError(
                    f"frame {count + 1} of the stream is not an InferRequest; the "
                    f"{count} frame(s) before it were answered"
                )
            except Exception as exc:  # the stream itself broke: end the call with a status
                error = exc
            await pending.put(_EndOfStream(error))

        reader = asyncio.create_task(read())
        try:
            while not isinstance(item := await pending.get(), _EndOfStream):
                yield await item
            if item.error is not None:
                log_unexpected(item.error)
                await abort_with(context, item.error)
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if isinstance(leftover, asyncio.Task):
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @map_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        repository = self.repository
        return pb.ListModelsResponse(
            models=[ModelInfoConverter.from_types(d) for d in repository.describe_all()],
            default_model=repository.default_name,
        )

    @map_errors
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.ModelInfo:
        return ModelInfoConverter.from_types(self.repository.describe(request.name))
