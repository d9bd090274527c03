"""InferenceMethods: each method converts the request, calls the runtime pipeline, converts back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from google.rpc import status_pb2

from visionrpc.converters import (
    InferRequestConverter,
    InferResponseConverter,
    ModelInfoConverter,
)
from visionrpc.errors import NotReadyError, VisionRPCError
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.repository import ModelRepository
from visionrpc.server.status import map_errors, status_for
from visionrpc.settings import Settings
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "visionrpc.v1.InferenceMethods"


class InferenceServicer(inference_pb2_grpc.InferenceMethodsServicer):
    def __init__(self, service: InferenceService):
        self._service = service

    async def _infer(self, request: pb.InferRequest) -> pb.InferResponse:
        item = InferRequestConverter.to_types(request)
        result = await self._service.pipeline.infer(item)
        return InferResponseConverter.from_types(result)

    @map_errors
    async def Infer(
        self, request: pb.InferRequest, context: grpc.aio.ServicerContext
    ) -> pb.InferResponse:
        return await self._infer(request)

    async def _infer_frame(self, request: pb.InferRequest) -> pb.InferResponse:
        """One stream frame: a failure becomes this frame's ``error``, not the stream's."""
        try:
            return await self._infer(request)
        except Exception as exc:
            code, message = status_for(exc)
            if not isinstance(exc, VisionRPCError):
                log.exception("frame %r failed", request.request_id)
            return pb.InferResponse(
                request_id=request.request_id,
                error=status_pb2.Status(code=code.value[0], message=message),
            )

    async def InferStream(
        self, request_iterator: AsyncIterator[pb.InferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.InferResponse]:
        # At most `window` frames are in flight: when the queue is full the reader stops pulling
        # from the stream, and HTTP/2 flow control pushes back on a producer that is too fast.
        window = self._service.settings.stream_window
        pending: asyncio.Queue[asyncio.Task[pb.InferResponse] | None] = asyncio.Queue(window)

        async def read() -> None:
            async for request in request_iterator:
                await pending.put(asyncio.create_task(self._infer_frame(request)))
            await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                task = await pending.get()
                if task is None:
                    break
                yield await task
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    @map_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        repository = self._service.repository
        return pb.ListModelsResponse(
            models=[ModelInfoConverter.from_types(d) for d in repository.describe_all()],
            default_model=repository.default_name,
        )

    @map_errors
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return ModelInfoConverter.from_types(self._service.repository.describe(request.name))


class InferenceService:
    """Plugs InferenceMethods into the server app: loads the models at start, frees them at stop.

    The servicer is registered before start-up (gRPC needs its handlers up front); until the models
    are loaded its calls fail with UNAVAILABLE and health reports NOT_SERVING.
    """

    name = SERVICE_NAME

    def __init__(self, settings: Settings, repository: ModelRepository | None = None):
        self.settings = settings
        self._repository = repository
        self._pipeline: InferencePipeline | None = None

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
        inference_pb2_grpc.add_InferenceMethodsServicer_to_server(InferenceServicer(self), server)

    async def start(self) -> None:
        if self._repository is None:
            self._repository = await asyncio.to_thread(
                ModelRepository.load, self.settings.models_dir, settings=self.settings
            )
        self._pipeline = InferencePipeline(self._repository, self.settings)
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
