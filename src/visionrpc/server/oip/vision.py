"""The vision view of a model: encoded images in as one BYTES tensor, detections out as tensors.

Requests name the model itself (``defects``); see :mod:`visionrpc.server.oip.naming` for the raw
view. Outputs hold one row per detection of all the request's images together; ``IMAGE_INDEX``
says which image each row belongs to. Two kinds of output are opt-in, so the default answer pays
for neither:

- ``MASKS`` and ``MASK_ORIGINS`` (segmentation models, with the request parameter ``masks``): each
  detection's mask as an 8-bit PNG of its box region (0 or 255), the same bytes as the typed API's
  ``MASK_FORMAT_PNG``, placed in the image at ``MASK_ORIGINS`` (x, y of its top-left pixel). Any
  image library decodes it and its size follows the box, where COCO RLE would need pycocotools
  and an image size per image.
- ``MEASUREMENTS``, ``VERDICT`` and ``VERDICT_HITS`` (see :data:`INSPECTION_OUTPUTS`): sent when
  the request measures (parameters ``measure``, ``pixels_per_mm``, or a model that measures) or
  is judged by rules (parameter ``rules``, else the model's), or when named in ``outputs``.
  Per-request rules travel as one string parameter holding the same YAML (or JSON) document as
  ``visionrpc infer --rules`` reads: the protocol's parameters are flat scalars, and a rule set is
  a nested structure that already has one checked, documented text form.
- ``RESULT`` (only when the request names it in ``outputs``): per image, the serialized
  ``visionrpc.v1.InferResponse`` that the typed Infer returns (defect summaries, timings, masks
  in PNG when ``masks`` is set), for a client that wants the typed result over this protocol.

The other Ultralytics tasks (issue 13 item 4) add their own outputs, always sent:

- pose models: ``KEYPOINTS`` FP32 [n, K, 3], per detection its K keypoints as x, y (original
  pixels) and visibility (1 where the model has none);
- oriented-box models: ``ROTATED_BOXES`` FP32 [n, 5] (cx, cy, width, height, angle in degrees in
  [0, 90), clockwise on screen) and ``CORNERS`` FP32 [n, 4, 2]; ``BOXES`` holds the axis-aligned
  box around each;
- classification models answer per image, not per detection: ``CLASS_IDS`` INT64 [images, k] and
  ``SCORES`` FP32 [images, k], the k best classes best first (k: the parameter ``top_k``, default
  5 or every class when fewer), and no BOXES or IMAGE_INDEX.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionrpc.errors import InvalidInputError
from visionrpc.runtime.repository import LoadedModel
from visionrpc.runtime.rules import plan_inspection, rules_document
from visionrpc.server.oip.tensors import frame, number, parameter, unframe
from visionrpc.types import (
    InferenceInput,
    InferenceOptions,
    InferenceResult,
    MaskFormat,
    RuleSet,
    Task,
    TilingMode,
    TilingOptions,
)
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.wire.converters import InferResponseConverter

TensorSpec = tuple[str, str, tuple[int, ...]]
"""A tensor's name, datatype and shape (-1: variable), as ModelMetadata lists it."""

IMAGE = "IMAGE"
"""The vision view's one input: encoded images (JPEG, PNG, ...) as a BYTES tensor of shape [n]."""

INPUTS: tuple[TensorSpec, ...] = ((IMAGE, "BYTES", (-1,)),)
DETECTIONS: tuple[TensorSpec, ...] = (
    ("BOXES", "FP32", (-1, 4)),  # x_min, y_min, x_max, y_max in the original image's pixels
    ("SCORES", "FP32", (-1,)),
    ("CLASS_IDS", "INT64", (-1,)),
    ("IMAGE_INDEX", "INT64", (-1,)),  # which element of IMAGE each detection was found in
)
"""The outputs every answer has, one row per detection of all images of the request together."""
MASKS = "MASKS"
MASK_ORIGINS = "MASK_ORIGINS"
MASK_OUTPUTS: tuple[TensorSpec, ...] = (
    (MASKS, "BYTES", (-1,)),  # per detection: PNG of its box region, 0 or 255
    (MASK_ORIGINS, "INT64", (-1, 2)),  # per detection: x, y of that PNG's top-left pixel
)
"""With the parameter ``masks`` (segmentation models only)."""
MEASUREMENTS = "MEASUREMENTS"
VERDICT = "VERDICT"
VERDICT_HITS = "VERDICT_HITS"
MEASUREMENT_COLUMNS = ("area_px", "length_px", "width_px", "area_mm2", "length_mm", "width_mm")
"""The columns of MEASUREMENTS, in order; NaN where a size is unknown (not measured, no scale)."""
INSPECTION_OUTPUTS: tuple[TensorSpec, ...] = (
    (MEASUREMENTS, "FP32", (-1, len(MEASUREMENT_COLUMNS))),  # per detection, MEASUREMENT_COLUMNS
    (VERDICT, "BYTES", (-1,)),  # per image: PASS, REVIEW or FAIL; empty when no rules applied
    (VERDICT_HITS, "BYTES", (-1,)),  # per image: a JSON list of the rules that fired
)
"""Measurements and verdicts. Each element of VERDICT_HITS is a UTF-8 JSON list of objects
``{"rule", "verdict", "metric", "value", "class_name", "min", "max", "row", "zone"}``: ``row`` is
the detection's row in BOXES (the whole request's rows), null for a count rule; ``min``/``max``
are the rule's bounds, null where open."""
RESULT = "RESULT"
RESULT_OUTPUT: TensorSpec = (RESULT, "BYTES", (-1,))
"""Per image, a serialized visionrpc.v1.InferResponse; only when the request names it."""

KEYPOINTS = "KEYPOINTS"
ROTATED_BOXES = "ROTATED_BOXES"
CORNERS = "CORNERS"
TASK_OUTPUTS: dict[Task, tuple[TensorSpec, ...]] = {
    Task.POSE: ((KEYPOINTS, "FP32", (-1, -1, 3)),),  # per detection: K keypoints x, y, visibility
    Task.OBB: (
        (ROTATED_BOXES, "FP32", (-1, 5)),  # per detection: cx, cy, width, height, angle_deg
        (CORNERS, "FP32", (-1, 4, 2)),  # per detection: its four corners
    ),
}
"""Sent with the detections by pose and oriented-box models."""
CLASSIFICATIONS: tuple[TensorSpec, ...] = (
    ("CLASS_IDS", "INT64", (-1, -1)),  # per image: the top_k best class ids, best first
    ("SCORES", "FP32", (-1, -1)),  # per image: their scores
)
"""What a classification model answers instead of detections, one row per image."""

PLATFORM = "visionrpc_vision"

PARAMETERS = (
    "confidence",
    "iou",
    "max_detections",
    "classes",
    "masks",
    "top_k",
    "measure",
    "pixels_per_mm",
    "rules",
    "tiling",
    "tile_size",
    "tile_overlap",
)
"""Request parameters of ModelInfer: ``classes`` is a comma-separated string of class names;
``masks`` (bool) adds MASKS and MASK_ORIGINS (segmentation models); ``measure`` (bool) measures
length and width; ``pixels_per_mm`` (number; 0: the model's) is the scale for mm; ``rules`` (string)
is a rules document replacing the model's rules (no rules in it: no verdict); ``tiling`` (string
off, on or auto), ``tile_size`` (integer, pixels) and ``tile_overlap`` (number, 0 to 0.5) cut a
large frame into tiles; ``top_k`` (classification models) is how many of the best classes each
image answers with. Numbers may also be sent as strings, as KServe's clients do."""


def outputs(task: Task) -> tuple[TensorSpec, ...]:
    """Every output a model of ``task`` can answer with (what ModelMetadata lists)."""
    if task is Task.CLASSIFY:
        return (*CLASSIFICATIONS, RESULT_OUTPUT)
    masks = MASK_OUTPUTS if task is Task.SEGMENT else ()
    return (*DETECTIONS, *masks, *TASK_OUTPUTS.get(task, ()), *INSPECTION_OUTPUTS, RESULT_OUTPUT)


def default_outputs(task: Task) -> set[str]:
    """What an answer holds when the request names no outputs (masks aside)."""
    if task is Task.CLASSIFY:
        return {name for name, _, _ in CLASSIFICATIONS}
    return {name for name, _, _ in (*DETECTIONS, *TASK_OUTPUTS.get(task, ()))}


@dataclass(frozen=True)
class VisionRequest:
    """A ModelInferRequest read for the runtime: its images, options and the outputs to send."""

    images: list[bytes]
    options: InferenceOptions
    outputs: tuple[TensorSpec, ...]
    request_id: str

    def inputs(self) -> list[InferenceInput]:
        return [
            InferenceInput(options=self.options, image_bytes=image, request_id=self.request_id)
            for image in self.images
        ]


def read(request: oip.ModelInferRequest, model: LoadedModel) -> VisionRequest:
    """Check and read ``request`` for ``model``."""
    task = model.onnx.task
    images_ = images(request)
    options_ = options(request, model.name, task)
    plan = plan_inspection(options_, model)  # what the pipeline will measure and judge
    extra = () if plan is None else (MEASUREMENTS,) if plan.rules is None else _INSPECTION_NAMES
    return VisionRequest(
        images_,
        options_,
        requested_outputs(request, task, options_.return_masks, extra),
        request.id,
    )


_INSPECTION_NAMES = tuple(name for name, _, _ in INSPECTION_OUTPUTS)


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


def requested_outputs(
    request: oip.ModelInferRequest, task: Task, masks: bool, inspection: tuple[str, ...] = ()
) -> tuple[TensorSpec, ...]:
    """The outputs to send, in ModelMetadata's order. None named: the detections, the masks
    when ``masks`` is set, and the ``inspection`` outputs the request's measuring and rules
    fill. A name the model does not have, or a mask output without ``masks``, is refused."""
    available = outputs(task)
    known = {name for name, _, _ in available}
    wanted = {o.name for o in request.outputs}
    unknown = sorted(wanted - known)
    if unknown:
        no_masks = " (it only detects: no masks)" if task is Task.DETECT else ""
        raise InvalidInputError(
            f"unknown output(s) {', '.join(unknown)}; the vision view of model "
            f"{request.model_name!r}{no_masks} has {', '.join(n for n, _, _ in available)}",
            field="outputs",
        )
    mask_names = {name for name, _, _ in MASK_OUTPUTS}
    if not masks and wanted & mask_names:
        raise InvalidInputError(
            f"output(s) {', '.join(sorted(wanted & mask_names))} need the parameter 'masks' "
            "set to true (bool_param)",
            field="outputs",
        )
    if not wanted:
        wanted = default_outputs(task) | (mask_names if masks else set())
        wanted |= set(inspection)
    return tuple(spec for spec in available if spec[0] in wanted)


def options(request: oip.ModelInferRequest, model: str, task: Task) -> InferenceOptions:
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
    top_k = number(params, "top_k")
    if top_k is not None and (not top_k.is_integer() or top_k < 0):
        raise InvalidInputError(
            "parameter 'top_k' must be a non-negative integer", field="parameters"
        )
    masks = parameter(params, "masks")
    if masks is not None and not isinstance(masks, bool):
        raise InvalidInputError("parameter 'masks' must be a bool_param", field="parameters")
    if masks and task is not Task.SEGMENT:
        raise InvalidInputError(
            f"parameter 'masks' is true but model {model!r} only detects (no masks); "
            "leave masks unset or ask a segmentation model",
            field="parameters",
        )
    measure = parameter(params, "measure")
    if measure is not None and not isinstance(measure, bool):
        raise InvalidInputError("parameter 'measure' must be a bool_param", field="parameters")
    rules, document_scale = _rules(params)
    scale = number(params, "pixels_per_mm")
    if scale is None:
        scale = document_scale
    return InferenceOptions(
        model=model,
        confidence_threshold=number(params, "confidence"),
        iou_threshold=number(params, "iou"),
        max_detections=None if max_detections is None else int(max_detections),
        classes=tuple(c.strip() for c in (classes or "").split(",") if c.strip()),
        return_masks=bool(masks),
        mask_format=MaskFormat.PNG,
        top_k=None if top_k is None else int(top_k),
        tiling=_tiling(params),
        measure=bool(measure),
        pixels_per_mm=scale or None,  # 0: the model's scale, as in the typed API
        rules=rules,
    )


def _rules(params: Any) -> tuple[RuleSet | None, float | None]:
    """The ``rules`` parameter: its rule set (empty: no verdict) and the document's scale."""
    text = parameter(params, "rules")
    if text is None:
        return None, None
    if not isinstance(text, str):
        raise InvalidInputError(
            "parameter 'rules' must be a string_param holding a rules document (YAML or JSON "
            "with model.yaml's keys rules, zones, ignore_zones, pixels_per_mm)",
            field="parameters",
        )
    try:
        document = rules_document(text, "parameter 'rules'")
    except ValueError as exc:
        raise InvalidInputError(str(exc), field="parameters") from None
    return document.rule_set() or RuleSet(), document.pixels_per_mm


def _tiling(params: Any) -> TilingOptions:
    """The tiling parameters (the runtime checks their ranges, as for the typed API)."""
    mode = parameter(params, "tiling")
    modes = ", ".join(m.value for m in TilingMode)
    if mode is not None and (not isinstance(mode, str) or mode not in set(TilingMode)):
        raise InvalidInputError(
            f"parameter 'tiling' is {mode!r}; send a string_param: {modes}", field="parameters"
        )
    size = number(params, "tile_size")
    if size is not None and not size.is_integer():
        raise InvalidInputError("parameter 'tile_size' must be an integer", field="parameters")
    return TilingOptions(
        mode=None if mode is None else TilingMode(mode),
        tile_size=0 if size is None else int(size),
        overlap=number(params, "tile_overlap"),
    )


Tensor = tuple[str, str, tuple[int, ...], bytes]
"""An output's name, datatype, shape and raw contents (little-endian; BYTES framed)."""


def output_tensors(results: list[InferenceResult], wanted: tuple[TensorSpec, ...]) -> list[Tensor]:
    """The ``wanted`` outputs of the detections of all images (the request's order of images)."""
    names = {name for name, _, _ in wanted}
    arrays: dict[str, np.ndarray] = {}
    if names & {name for name, _, _ in DETECTIONS}:
        arrays.update(_detection_arrays(results))
    arrays.update(task_arrays(results, names))
    if MEASUREMENTS in names:
        arrays[MEASUREMENTS] = _measurements(results)
    if MASK_ORIGINS in names:
        arrays[MASK_ORIGINS] = np.asarray(
            [d.mask.png_origin if d.mask else (0, 0) for r in results for d in r.detections],
            dtype="<i8",
        ).reshape(-1, 2)
    tensors: list[Tensor] = []
    for name, datatype, _ in wanted:
        if name == MASKS:
            pngs = [d.mask.png if d.mask else b"" for r in results for d in r.detections]
            tensors.append((name, datatype, (len(pngs),), frame(pngs)))
        elif name == VERDICT:
            verdicts = [r.verdict.verdict.value if r.verdict else "" for r in results]
            tensors.append((name, datatype, (len(results),), frame([v.encode() for v in verdicts])))
        elif name == VERDICT_HITS:
            hits = [json.dumps(h).encode() for h in _hits(results)]
            tensors.append((name, datatype, (len(hits),), frame(hits)))
        elif name == RESULT:
            typed = [InferResponseConverter.from_types(r).SerializeToString() for r in results]
            tensors.append((name, datatype, (len(typed),), frame(typed)))
        else:
            array = arrays[name]
            tensors.append((name, datatype, array.shape, array.tobytes()))
    return tensors


def task_arrays(results: list[InferenceResult], names: set[str]) -> dict[str, np.ndarray]:
    """The pose, oriented-box and classification outputs among ``names``."""
    arrays: dict[str, np.ndarray] = {}
    dets = [d for r in results for d in r.detections]
    if KEYPOINTS in names:
        k = max((len(d.keypoints) for d in dets), default=0)
        arrays[KEYPOINTS] = np.asarray(
            [[(p.x, p.y, p.visibility) for p in d.keypoints] for d in dets], dtype="<f4"
        ).reshape(len(dets), k, 3)
    rotated = [d.rotated_box for d in dets if d.rotated_box is not None]
    if ROTATED_BOXES in names:
        arrays[ROTATED_BOXES] = np.asarray(
            [(r.cx, r.cy, r.width, r.height, r.angle_deg) for r in rotated], dtype="<f4"
        ).reshape(-1, 5)
    if CORNERS in names:
        arrays[CORNERS] = np.asarray([r.corners for r in rotated], dtype="<f4").reshape(-1, 4, 2)
    if any(r.classifications for r in results):
        k = len(results[0].classifications)
        arrays["CLASS_IDS"] = np.asarray(
            [[c.class_id for c in r.classifications] for r in results], dtype="<i8"
        ).reshape(len(results), k)
        arrays["SCORES"] = np.asarray(
            [[c.score for c in r.classifications] for r in results], dtype="<f4"
        ).reshape(len(results), k)
    return arrays


def _detection_arrays(results: list[InferenceResult]) -> dict[str, np.ndarray]:
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


def _measurements(results: list[InferenceResult]) -> np.ndarray:
    rows = [
        [math.nan if v is None else v for v in _sizes(d.measurement)]
        for r in results
        for d in r.detections
    ]
    return np.asarray(rows, dtype="<f4").reshape(-1, len(MEASUREMENT_COLUMNS))


def _sizes(m: Any) -> tuple[float | None, ...]:
    if m is None:
        return (None,) * len(MEASUREMENT_COLUMNS)
    return tuple(getattr(m, column) for column in MEASUREMENT_COLUMNS)


def _hits(results: list[InferenceResult]) -> list[list[dict[str, Any]]]:
    """Per image, its fired rules as VERDICT_HITS describes them (rows across the request)."""
    out: list[list[dict[str, Any]]] = []
    first_row = 0
    for result in results:
        hits = result.verdict.hits if result.verdict is not None else ()
        out.append(
            [
                {
                    "rule": h.rule,
                    "verdict": h.verdict.value,
                    "metric": h.metric.value,
                    "value": h.value,
                    "class_name": h.class_name,
                    "min": h.minimum,
                    "max": h.maximum,
                    "row": None if h.detection is None else first_row + h.detection,
                    "zone": h.zone,
                }
                for h in hits
            ]
        )
        first_row += len(result.detections)
    return out
