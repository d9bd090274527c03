"""The vision view of a model: encoded images in as one BYTES tensor, detections out as tensors.

Requests name the model itself (``defects``); see :mod:`visionrpc.server.oip.naming` for the raw
view. Outputs hold one row per detection of all the request's images together; ``IMAGE_INDEX``
says which image each row belongs to.
"""

from __future__ import annotations

import numpy as np

from visionrpc.errors import InvalidInputError
from visionrpc.server.oip.tensors import number, parameter, unframe
from visionrpc.types import InferenceOptions, InferenceResult
from visionrpc.v1 import grpc_service_pb2 as oip

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


def images(request: oip.ModelInferRequest) -> list[bytes]:
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
        found = unframe(request.raw_input_contents[0], IMAGE)
    else:
        found = list(tensor.contents.bytes_contents)
    if len(found) != count:
        raise InvalidInputError(
            f"input {IMAGE!r} has shape {list(tensor.shape)} ({count} element(s)) but "
            f"{len(found)} image(s) were sent",
            field="inputs.shape",
        )
    if not found:
        raise InvalidInputError(f"input {IMAGE!r} holds no image", field="inputs")
    return found


def requested_outputs(request: oip.ModelInferRequest) -> set[str]:
    """The outputs the request names (empty: all of them); an unknown name is refused."""
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


def options(request: oip.ModelInferRequest, model: str) -> InferenceOptions:
    """The request's parameters as the runtime's options; unknown or mistyped ones are refused."""
    params = request.parameters
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise InvalidInputError(
            f"unknown parameter(s) {', '.join(unknown)}; ModelInfer takes {', '.join(PARAMETERS)}",
            field="parameters",
        )
    max_detections = number(params, "max_detections")
    if max_detections is not None and not max_detections.is_integer():
        raise InvalidInputError("parameter 'max_detections' must be an integer", field="parameters")
    classes = parameter(params, "classes")
    if classes is not None and not isinstance(classes, str):
        raise InvalidInputError(
            "parameter 'classes' must be a string of comma-separated class names",
            field="parameters",
        )
    masks = parameter(params, "masks")
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
        confidence_threshold=number(params, "confidence"),
        iou_threshold=number(params, "iou"),
        max_detections=None if max_detections is None else int(max_detections),
        classes=tuple(c.strip() for c in (classes or "").split(",") if c.strip()),
    )


def output_tensors(results: list[InferenceResult]) -> dict[str, np.ndarray]:
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
