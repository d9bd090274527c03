"""``inference.GRPCInferenceService`` (the Open Inference Protocol, Triton's flavour), first slice.

It is a second door to the same models: it shares the :class:`InferenceServicer`'s pipeline and
repository (batching, limits and the readiness of the typed API apply unchanged) and only converts
tensors to and from the runtime's types. Each model is offered in its *vision view*: one BYTES
input of encoded images, detections out as tensors (see :data:`INPUTS`, :data:`OUTPUTS`).
Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer; every other
RPC of Triton's service answers UNIMPLEMENTED.
"""

from __future__ import annotations

import struct

import grpc
import numpy as np

from visionrpc import __version__
from visionrpc.errors import InvalidInputError, ModelNotFoundError, NotReadyError
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.status import Context, map_errors
from visionrpc.types import InferenceInput, InferenceOptions, InferenceResult
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc

SERVICE_NAME: str = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

IMAGE = "IMAGE"
"""The vision view's one input: encoded images (JPEG, PNG, ...) as a BYTES tensor of shape [n]."""

INPUTS: tuple[tuple[str, str, tuple[int, ...]], ...] = ((IMAGE, "BYTES", (-1,)),)
OUTPUTS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("BOXES", "FP32", (-1, 4)),  # x_min, y_min, x_max, y_max in the original image's pixels
    ("SCORES", "FP32", (-1,)),
    ("CLASS_IDS", "INT64", (-1,)),
    ("IMAGE_INDEX", "INT64", (-1,)),  # which element of IMAGE each detection was found in
)
"""The vision view's outputs, one row per detection of all images of the request together."""

PLATFORM = "visionrpc_vision"

PARAMETERS = ("confidence", "iou", "max_detections", "classes", "masks")
"""Request parameters of ModelInfer: ``classes`` is a comma-separated string of class names;
``masks`` (bool) is refused when true, as masks are not in this slice."""


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

    # -- methods -------------------------------------------------------------------------------

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
        # No protocol extension (model_repository, statistics, ...) is implemented yet.
        return oip.ServerMetadataResponse(name="visionrpc", version=__version__, extensions=[])

    @map_errors
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        name, version = self._version(request.name, request.version)
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=name,
            versions=[version],
            platform=PLATFORM,
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in INPUTS],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in OUTPUTS],
        )

    @map_errors
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        name, version = self._version(request.model_name, request.model_version)
        images = _images(request)
        wanted = _requested_outputs(request)
        options = _options(request, name)
        results = await self._inference.infer_all(
            [InferenceInput(options=options, image_bytes=image) for image in images], context
        )
        tensors = _output_tensors(results)
        response = oip.ModelInferResponse(model_name=name, model_version=version, id=request.id)
        for out_name, datatype, _ in OUTPUTS:
            if wanted and out_name not in wanted:
                continue
            array = tensors[out_name]
            response.outputs.add(name=out_name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response

    def _version(self, name: str, version: str) -> tuple[str, str]:
        """The model's (name, version); ModelNotFoundError when this server does not hold it."""
        described = self._inference.repository.describe(name)
        if version and version != described.version:
            raise ModelNotFoundError(
                f"model {described.name} has version {described.version}, not {version}; "
                "leave the version empty or ask for that one"
            )
        return described.name, described.version


def _images(request: oip.ModelInferRequest) -> list[bytes]:
    """The encoded images of the request's one BYTES input, from raw contents or bytes_contents."""
    if len(request.inputs) != 1 or request.inputs[0].name != IMAGE:
        names = ", ".join(repr(t.name) for t in request.inputs) or "none"
        raise InvalidInputError(
            f"the vision view takes exactly one input named {IMAGE!r} (got {names})",
            field="inputs",
        )
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInputError(
            f"input {IMAGE!r} must have datatype BYTES (encoded images), not {tensor.datatype!r}",
            field="inputs.datatype",
        )
    if any(d < 0 for d in tensor.shape):
        raise InvalidInputError(
            f"input {IMAGE!r} has a negative dimension in shape {list(tensor.shape)}",
            field="inputs.shape",
        )
    count = int(np.prod(tensor.shape)) if tensor.shape else 0
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInputError(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input",
                field="raw_input_contents",
            )
        if tensor.contents.bytes_contents:
            raise InvalidInputError(
                f"input {IMAGE!r} is sent both in raw_input_contents and in contents; use one",
                field="inputs.contents",
            )
        images = _unframe(request.raw_input_contents[0])
    else:
        images = list(tensor.contents.bytes_contents)
    if len(images) != count:
        raise InvalidInputError(
            f"input {IMAGE!r} has shape {list(tensor.shape)} ({count} element(s)) but "
            f"{len(images)} image(s) were sent",
            field="inputs.shape",
        )
    if not images:
        raise InvalidInputError(f"input {IMAGE!r} holds no image", field="inputs")
    return images


def _unframe(raw: bytes) -> list[bytes]:
    """Triton's BYTES framing: each element a 4-byte little-endian length, then its bytes."""
    elements: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInputError(
                f"input {IMAGE!r}: raw_input_contents ends in the middle of element "
                f"{len(elements)}'s 4-byte length prefix (at byte {at} of {len(raw)})",
                field="raw_input_contents",
            )
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidInputError(
                f"input {IMAGE!r}: element {len(elements)} of raw_input_contents announces "
                f"{size} bytes but only {len(raw) - at} follow; each element is a 4-byte "
                "little-endian length followed by that many bytes",
                field="raw_input_contents",
            )
        elements.append(raw[at : at + size])
        at += size
    return elements


def _requested_outputs(request: oip.ModelInferRequest) -> set[str]:
    known = {name for name, _, _ in OUTPUTS}
    wanted = {o.name for o in request.outputs}
    unknown = sorted(wanted - known)
    if unknown:
        raise InvalidInputError(
            f"unknown output(s) {', '.join(unknown)}; the vision view has "
            f"{', '.join(n for n, _, _ in OUTPUTS)}",
            field="outputs",
        )
    return wanted


def _param(request: oip.ModelInferRequest, key: str) -> bool | int | float | str | None:
    if key not in request.parameters:
        return None
    value = request.parameters[key]
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def _number(request: oip.ModelInferRequest, key: str) -> float | None:
    value = _param(request, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(
            f"parameter {key!r} must be a number (double_param or int64_param)", field="parameters"
        )
    return float(value)


def _options(request: oip.ModelInferRequest, model: str) -> InferenceOptions:
    unknown = sorted(set(request.parameters) - set(PARAMETERS))
    if unknown:
        raise InvalidInputError(
            f"unknown parameter(s) {', '.join(unknown)}; ModelInfer takes {', '.join(PARAMETERS)}",
            field="parameters",
        )
    max_detections = _number(request, "max_detections")
    if max_detections is not None and not max_detections.is_integer():
        raise InvalidInputError("parameter 'max_detections' must be an integer", field="parameters")
    classes = _param(request, "classes")
    if classes is not None and not isinstance(classes, str):
        raise InvalidInputError(
            "parameter 'classes' must be a string of comma-separated class names",
            field="parameters",
        )
    masks = _param(request, "masks")
    if masks is not None and not isinstance(masks, bool):
        raise InvalidInputError("parameter 'masks' must be a bool_param", field="parameters")
    if masks:
        raise InvalidInputError(
            "masks are not served over the Open Inference Protocol yet; ask the typed "
            "visionrpc.v1.InferenceMethods/Infer with return_masks",
            field="parameters",
        )
    return InferenceOptions(
        model=model,
        confidence_threshold=_number(request, "confidence"),
        iou_threshold=_number(request, "iou"),
        max_detections=None if max_detections is None else int(max_detections),
        classes=tuple(c.strip() for c in (classes or "").split(",") if c.strip()),
    )


def _output_tensors(results: list[InferenceResult]) -> dict[str, np.ndarray]:
    """The detections of all images as the vision view's output arrays (little-endian)."""
    boxes: list[tuple[float, float, float, float]] = []
    scores: list[float] = []
    class_ids: list[int] = []
    index: list[int] = []
    for i, result in enumerate(results):
        for d in result.detections:
            boxes.append((d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max))
            scores.append(d.score)
            class_ids.append(d.class_id)
            index.append(i)
    return {
        "BOXES": np.asarray(boxes, dtype="<f4").reshape(-1, 4),
        "SCORES": np.asarray(scores, dtype="<f4"),
        "CLASS_IDS": np.asarray(class_ids, dtype="<i8"),
        "IMAGE_INDEX": np.asarray(index, dtype="<i8"),
    }
