"""``inference.GRPCInferenceService``: the Open Inference Protocol's RPCs over visionrpc's models.

It shares the :class:`InferenceServicer`'s pipeline and repository (batching, limits and the
readiness of the typed API apply unchanged) and only converts tensors to and from the runtime's
types. Each model is offered in its vision view (see :mod:`visionrpc.server.oip.vision`). An RPC
of Triton's service that is not defined here answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio

import grpc

from visionrpc import __version__
from visionrpc.errors import ModelNotFoundError, NotReadyError
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import repository, vision
from visionrpc.server.oip.naming import parse_view
from visionrpc.server.status import Context, map_errors
from visionrpc.types import InferenceInput
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc

SERVICE_NAME: str = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

EXTENSIONS: tuple[str, ...] = ("model_repository",)
"""The protocol extensions (Triton's names) this server implements, for ServerMetadata."""


class OpenInferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol over the models of ``inference`` (registered beside it)."""

    name = SERVICE_NAME

    def __init__(self, inference: InferenceServicer) -> None:
        self._inference = inference

    # -- lifecycle (server.app.Service): the InferenceServicer loads and closes the models ------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    # -- health and metadata ---------------------------------------------------------------------

    @map_errors
    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: Context
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    @map_errors
    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: Context
    ) -> oip.ServerReadyResponse:
        try:
            _ = self._inference.repository  # raises until the models are loaded
        except NotReadyError:
            return oip.ServerReadyResponse(ready=False)
        return oip.ServerReadyResponse(ready=True)

    @map_errors
    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: Context
    ) -> oip.ModelReadyResponse:
        """False for a model (or version) this server does not hold, as Triton answers."""
        try:
            self._version(request.name, request.version)
        except (ModelNotFoundError, NotReadyError):
            return oip.ModelReadyResponse(ready=False)
        return oip.ModelReadyResponse(ready=True)

    @map_errors
    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Context
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name="visionrpc", version=__version__, extensions=list(EXTENSIONS)
        )

    @map_errors
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        name, version = self._version(request.name, request.version)
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=name,
            versions=[version],
            platform=vision.PLATFORM,
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in vision.INPUTS],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in vision.OUTPUTS],
        )

    # -- inference -------------------------------------------------------------------------------

    @map_errors
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        return await self._vision_infer(request, context)

    async def _vision_infer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        name, version = self._version(request.model_name, request.model_version)
        images = vision.images(request)
        wanted = vision.requested_outputs(request)
        options = vision.options(request, name)
        results = await self._inference.infer_all(
            [InferenceInput(options=options, image_bytes=image) for image in images], context
        )
        tensors = vision.output_tensors(results)
        response = oip.ModelInferResponse(model_name=name, model_version=version, id=request.id)
        for out_name, datatype, _ in vision.OUTPUTS:
            if wanted and out_name not in wanted:
                continue
            array = tensors[out_name]
            response.outputs.add(name=out_name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response

    # -- model repository (load and unload need the "models" scope) ----------------------------

    @map_errors
    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: Context
    ) -> oip.RepositoryIndexResponse:
        models = self._inference.repository
        repository.check_repository(request.repository_name, models.directory)
        statuses = await asyncio.to_thread(models.index)  # lists the directory
        return repository.index(statuses, ready_only=request.ready)

    @map_errors
    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: Context
    ) -> oip.RepositoryModelLoadResponse:
        """Load, or reload when loaded (zero-downtime): answers once the new version serves."""
        repository.check_repository(request.repository_name, self._inference.repository.directory)
        repository.check_load_parameters(request.parameters)
        await self._inference.control.load(repository.model_name(request.model_name))
        return oip.RepositoryModelLoadResponse()

    @map_errors
    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: Context
    ) -> oip.RepositoryModelUnloadResponse:
        repository.check_repository(request.repository_name, self._inference.repository.directory)
        repository.check_unload_parameters(request.parameters)
        await self._inference.control.unload(repository.model_name(request.model_name))
        return oip.RepositoryModelUnloadResponse()

    def _version(self, name: str, version: str) -> tuple[str, str]:
        """The model's (name, version); ModelNotFoundError when this server does not hold it."""
        view = parse_view(name)
        if view.raw:
            raise ModelNotFoundError(
                f"the raw view {name!r} is not served yet; ask the vision view {view.model!r}"
            )
        described = self._inference.repository.describe(view.model)
        if version and version != described.version:
            raise ModelNotFoundError(
                f"model {described.name} has version {described.version}, not {version}; "
                "leave the version empty or ask for that one"
            )
        return described.name, described.version
