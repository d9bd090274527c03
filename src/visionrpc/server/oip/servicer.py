"""``inference.GRPCInferenceService``: the Open Inference Protocol's RPCs over visionrpc's models.

It shares the :class:`InferenceServicer`'s pipeline and repository (batching, limits and the
readiness of the typed API apply unchanged) and only converts tensors to and from the runtime's
types. Each model is offered in two views (see :mod:`visionrpc.server.oip.naming`): ``NAME``, the
vision view (:mod:`visionrpc.server.oip.vision`), and ``NAME.raw``, the ONNX graph's own tensors
(:mod:`visionrpc.server.oip.raw`). An RPC of Triton's service that is not defined here answers
UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import numpy as np

from visionrpc import __version__
from visionrpc.errors import InvalidInputError, ModelNotFoundError, NotReadyError
from visionrpc.runtime.budget import Deadline
from visionrpc.runtime.raw import RawResult
from visionrpc.runtime.repository import LoadedModel
from visionrpc.server.correlation import REQUEST_ID
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import config, raw, statistics, vision
from visionrpc.server.oip import repository as model_repository
from visionrpc.server.oip.naming import ViewName, parse_view
from visionrpc.server.status import Context, map_errors, status_for
from visionrpc.server.streams import FrameHandler
from visionrpc.types import InferenceInput, InferenceResult
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc

RunInputs = Callable[[Sequence[InferenceInput]], Awaitable[list[InferenceResult]]]
"""How a request's images run: a ModelInfer call takes an in-flight slot for them, a stream
request already holds one."""

RunRaw = Callable[[str, np.ndarray], Awaitable[RawResult]]
"""How a raw-view request's batch runs, with or without taking an in-flight slot (as RunInputs)."""

SERVICE_NAME: str = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

EXTENSIONS: tuple[str, ...] = (
    "model_configuration",
    "parameters",
    "statistics",
    "model_repository",
)
"""The protocol extensions (Triton's names) this server implements, for ServerMetadata."""


class OpenInferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol over the models of ``inference`` (registered beside it)."""

    name = SERVICE_NAME

    def __init__(self, inference: InferenceServicer) -> None:
        self._inference = inference
        self._frames: FrameHandler[oip.ModelInferRequest, oip.ModelStreamInferResponse] = (
            FrameHandler(
                request_type="ModelInferRequest",
                span_name="ModelStreamInfer frame",
                answer=self._stream_frame,
                failed=_failed_frame,
                request_id=lambda response: response.infer_response.id,
            )
        )

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
            self._model(request.name, request.version)
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
        view, model = self._model(request.name, request.version)
        tensor = oip.ModelMetadataResponse.TensorMetadata
        if view.raw:
            platform, inputs, outputs = raw.PLATFORM, raw.inputs(model), raw.outputs(model)
        else:
            platform, inputs = vision.PLATFORM, list(vision.INPUTS)
            outputs = list(vision.outputs(model.onnx.task))
        return oip.ModelMetadataResponse(
            name=view.protocol_name,
            versions=[model.config.version],
            platform=platform,
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in inputs],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in outputs],
        )

    @map_errors
    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: Context
    ) -> oip.ModelConfigResponse:
        view, model = self._model(request.name, request.version)
        make = config.raw_config if view.raw else config.vision_config
        return oip.ModelConfigResponse(config=make(model, view.protocol_name))

    # -- inference -------------------------------------------------------------------------------

    @map_errors
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        if parse_view(request.model_name).raw:
            return await self._raw_infer(
                request, lambda model, batch: self._inference.infer_raw(model, batch, context)
            )
        return await self._vision_infer(
            request, lambda items: self._inference.infer_all(items, context)
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[oip.ModelInferRequest], context: Context
    ) -> AsyncIterator[oip.ModelStreamInferResponse]:
        """Requests in, answers out in request order, under the typed InferStream's limits and
        drain (``server.streams``). A request that fails is answered with ``error_message`` and
        only its id in ``infer_response``, as Triton does, and the stream goes on."""
        async for response in self._inference.serve_stream(request_iterator, context, self._frames):
            yield response

    async def _stream_frame(
        self, request: oip.ModelInferRequest, deadline: Deadline, client: str
    ) -> oip.ModelStreamInferResponse:
        """One stream request; the stream already holds the client's in-flight slot for it."""
        if request.id:
            REQUEST_ID.set(request.id)  # for the log lines of this frame's task
        if parse_view(request.model_name).raw:
            response = await self._raw_infer(
                request,
                lambda model, batch: self._inference.run_raw(model, batch, deadline, client),
            )
        else:
            response = await self._vision_infer(
                request, lambda items: self._inference.run_all(items, deadline, client)
            )
        return oip.ModelStreamInferResponse(infer_response=response)

    async def _raw_infer(
        self, request: oip.ModelInferRequest, run: RunRaw
    ) -> oip.ModelInferResponse:
        view, model = self._model(request.model_name, request.model_version)
        batch = raw.input_batch(request, model)
        names = raw.requested_outputs(request, model)
        result = await run(model.name, batch)
        return raw.response(view.protocol_name, request.id, result, names)

    async def _vision_infer(
        self, request: oip.ModelInferRequest, run: RunInputs
    ) -> oip.ModelInferResponse:
        _, model = self._model(request.model_name, request.model_version)
        name, version = model.name, model.config.version
        wanted = vision.read(request, model)
        results = await run(wanted.inputs())
        if results:  # the version that answered, should a reload have swapped it meanwhile
            version = results[0].model_version
        response = oip.ModelInferResponse(model_name=name, model_version=version, id=request.id)
        for out_name, datatype, shape, content in vision.output_tensors(results, wanted.outputs):
            response.outputs.add(name=out_name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(content)
        return response

    # -- statistics ------------------------------------------------------------------------------

    @map_errors
    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: Context
    ) -> oip.ModelStatisticsResponse:
        """Per model version, what the pipeline counted for every request (both APIs)."""
        repository = self._inference.repository
        if request.name:
            view, model = self._model(request.name, request.version)
            # a model's views share its loaded model, so NAME.raw reports NAME's figures
            models = [(view.protocol_name, model.name, model.config.version)]
        elif request.version:
            raise InvalidInputError(
                f"version {request.version!r} given without a model name; name the model, or "
                "leave both empty for every model",
                field="version",
            )
        else:
            models = [(d.name, d.name, d.version) for d in repository.describe_all()]
        counted = self._inference.pipeline.statistics
        response = oip.ModelStatisticsResponse()
        for shown, name, version in models:
            message = statistics.to_message(counted.snapshot(name, version))
            message.name = shown  # the name asked for
            response.model_stats.append(message)
        return response

    # -- model repository (load and unload need the "models" scope) ----------------------------

    @map_errors
    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: Context
    ) -> oip.RepositoryIndexResponse:
        models = self._inference.repository
        model_repository.check_repository(request.repository_name, models.directory)
        statuses = await asyncio.to_thread(models.index)  # lists the directory
        return model_repository.index(statuses, ready_only=request.ready)

    @map_errors
    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: Context
    ) -> oip.RepositoryModelLoadResponse:
        """Load, or reload when loaded (zero-downtime): answers once the new version serves."""
        model_repository.check_repository(
            request.repository_name, self._inference.repository.directory
        )
        model_repository.check_load_parameters(request.parameters)
        await self._inference.control.load(model_repository.model_name(request.model_name))
        return oip.RepositoryModelLoadResponse()

    @map_errors
    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: Context
    ) -> oip.RepositoryModelUnloadResponse:
        model_repository.check_repository(
            request.repository_name, self._inference.repository.directory
        )
        model_repository.check_unload_parameters(request.parameters)
        await self._inference.control.unload(model_repository.model_name(request.model_name))
        return oip.RepositoryModelUnloadResponse()

    def _model(self, name: str, version: str) -> tuple[ViewName, LoadedModel]:
        """The view a protocol name asks for (with the model's own name when it named none) and
        its loaded model; ModelNotFoundError when this server does not hold it (or not in that
        version)."""
        asked = parse_view(name)
        model = self._inference.repository.get(asked.model)
        view = ViewName(model.name, asked.raw)
        if version and version != model.config.version:
            raise ModelNotFoundError(
                f"model {view.protocol_name} has version {model.config.version}, not {version}; "
                "leave the version empty or ask for that one"
            )
        return view, model


def _failed_frame(request: oip.ModelInferRequest, error: Exception) -> oip.ModelStreamInferResponse:
    """A failed stream request's answer: the message a ModelInfer call would get as its status,
    and the request's id so the client can tell which one failed."""
    return oip.ModelStreamInferResponse(
        error_message=status_for(error)[1], infer_response=oip.ModelInferResponse(id=request.id)
    )
