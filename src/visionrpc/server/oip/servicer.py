"""``inference.GRPCInferenceService``: the Open Inference Protocol's RPCs over visionrpc's models.

It shares the :class:`InferenceServicer`'s pipeline and repository (batching, limits and the
readiness of the typed API apply unchanged) and only converts tensors to and from the runtime's
types. Each model is offered in two views (see :mod:`visionrpc.server.oip.naming`): ``NAME``, the
vision view (:mod:`visionrpc.server.oip.vision`), and ``NAME.raw``, the ONNX graph's own tensors
(:mod:`visionrpc.server.oip.raw`). An RPC of Triton's service that is not defined here answers
UNIMPLEMENTED.
"""

from __future__ import annotations

import grpc

from visionrpc import __version__
from visionrpc.errors import ModelNotFoundError, NotReadyError
from visionrpc.runtime.repository import LoadedModel
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import config, raw, vision
from visionrpc.server.oip.naming import ViewName, parse_view
from visionrpc.server.status import Context, map_errors
from visionrpc.types import InferenceInput
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc

SERVICE_NAME: str = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

EXTENSIONS: tuple[str, ...] = ("model_configuration",)
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
        view, model = self._model(request.name, request.version)
        tensor = oip.ModelMetadataResponse.TensorMetadata
        if view.raw:
            platform, inputs, outputs = raw.PLATFORM, raw.inputs(model), raw.outputs(model)
        else:
            platform, inputs, outputs = vision.PLATFORM, list(vision.INPUTS), list(vision.OUTPUTS)
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
            return await self._raw_infer(request, context)
        return await self._vision_infer(request, context)

    async def _raw_infer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        view, model = self._model(request.model_name, request.model_version)
        batch = raw.input_batch(request, model)
        names = raw.requested_outputs(request, model)
        result = await self._inference.infer_raw(model.name, batch, context)
        return raw.response(view.protocol_name, request.id, result, names)

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

    def _version(self, name: str, version: str) -> tuple[str, str]:
        """The model's (name, version); ModelNotFoundError when this server does not hold it."""
        _, model = self._model(name, version)
        return model.name, model.config.version

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
