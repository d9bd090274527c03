"""Domain types shared by the client, the wire layer and the model runtime (no gRPC, no ONNX).

Results (``InferenceResult`` and what it holds, ``ModelDescription``) are what the client hands its
users and what the runtime produces; the request types (``InferenceInput``...) are what the
server's converters build for the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Task(StrEnum):
    DETECT = "detect"
    SEGMENT = "segment"
    CLASSIFY = "classify"  # whole-image class scores, no boxes
    POSE = "pose"  # boxes with keypoints
    OBB = "obb"  # oriented (rotated) boxes


class Layout(StrEnum):
    YOLOV8 = "yolov8"  # [B, 4+nc(+nm), N] raw anchors, needs NMS
    END2END = "end2end"  # [B, max_det, 6(+nm)] x1,y1,x2,y2,score,class(,coeffs), NMS-free
    CLASSIFY = "classify"  # [B, nc] class probabilities


class MaskFormat(StrEnum):
    RLE = "rle"
    PNG = "png"
    POLYGON = "polygon"


class ModelState(StrEnum):
    """Where a model of the repository stands (the names are Triton's repository index states)."""

    READY = "READY"  # serving
    LOADING = "LOADING"  # first load in progress (a reload keeps the old version READY)
    UNAVAILABLE = "UNAVAILABLE"  # not serving: unloaded, failed to load, or never loaded


class PixelFormat(StrEnum):
    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"
    RGBA = "rgba"
    BGRA = "bgra"


@dataclass(frozen=True)
class RawImage:
    """A decoded 8-bit interleaved frame as sent by the client (validated by the runtime)."""

    width: int
    height: int
    channels: int
    pixel_format: PixelFormat | None
    data: bytes


class TilingMode(StrEnum):
    """Whether a frame is cut into tiles at model resolution (see runtime.tiling)."""

    OFF = "off"
    ON = "on"
    AUTO = "auto"  # tile only frames much larger than the tile (the model's auto_factor)


@dataclass(frozen=True)
class TilingOptions:
    """Tiling asked for by a request (``None`` / 0: the model's default) or set as a model's
    default (every field set)."""

    mode: TilingMode | None = None
    tile_size: int = 0  # tile side in frame pixels; 0: the model's input size
    overlap: float | None = None  # fraction of the tile side shared with the next tile
    thumbnail: bool | None = None  # also run the whole frame letterboxed, and combine
    auto_factor: float = 0.0  # AUTO tiles frames more than this many tile sides long; models only


@dataclass(frozen=True)
class TilingReport:
    """How a tiled request ran (absent when it was not tiled)."""

    tiles: int  # tiles run through the model, the thumbnail not counted
    columns: int
    rows: int
    tile_width: int  # frame pixels per tile
    tile_height: int
    overlap_x: int  # frame pixels shared by neighbouring tiles (the last one may share more)
    overlap_y: int
    thumbnail: bool  # the whole frame also ran, letterboxed, and its detections were combined


@dataclass(frozen=True)
class InferenceOptions:
    """Per-request knobs; ``None`` / 0 / empty mean "the model's default"."""

    model: str = ""
    confidence_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    classes: tuple[str, ...] = ()
    return_masks: bool = False
    mask_format: MaskFormat = MaskFormat.RLE
    agnostic_nms: bool | None = None  # None: the model's default
    tiling: TilingOptions = TilingOptions()
    measure: bool = False  # length and width of each detection (area is always cheap)
    pixels_per_mm: float | None = None  # None: the model's scale, if any
    rules: RuleSet | None = None  # None: the model's rules; replaces them when set

    top_k: int | None = None  # classification models: classes to return; None: the default


@dataclass(frozen=True)
class InferenceInput:
    """One image to run: either encoded bytes or a raw frame, plus its options."""

    options: InferenceOptions
    image_bytes: bytes | None = None
    raw: RawImage | None = None
    request_id: str = ""


@dataclass(frozen=True)
class BoxXYXY:
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @property
    def area(self) -> float:
        return max(0.0, self.x_max - self.x_min) * max(0.0, self.y_max - self.y_min)


@dataclass(frozen=True)
class EncodedMask:
    """A mask in the requested wire-neutral encoding, in original-image pixels."""

    format: MaskFormat
    area_px: int
    rle_counts: str = ""  # RLE: COCO compressed counts
    rle_size: tuple[int, int] = (0, 0)  # RLE: (height, width)
    png: bytes = b""  # PNG: box-region image
    png_origin: tuple[int, int] = (0, 0)  # PNG: (x, y) of its top-left pixel
    polygons: tuple[np.ndarray, ...] = ()  # POLYGON: (N, 2) float arrays, x/y


# -- measurements and verdicts (issue 13) ------------------------------------------------


class Verdict(StrEnum):
    """An inspection's decision; the order PASS < REVIEW < FAIL is how fired rules combine."""

    PASS = "PASS"
    REVIEW = "REVIEW"
    FAIL = "FAIL"


class Metric(StrEnum):
    """What a rule compares: the number of matching detections, or a value of each one."""

    COUNT = "count"
    SCORE = "score"
    AREA_PX = "area_px"
    AREA_MM2 = "area_mm2"
    LENGTH_PX = "length_px"
    LENGTH_MM = "length_mm"
    WIDTH_PX = "width_px"
    WIDTH_MM = "width_mm"


@dataclass(frozen=True)
class Measurement:
    """One detection's size. ``length``/``width`` are None when not measured (not asked for);
    the mm values are None without a scale."""

    area_px: float
    length_px: float | None = None
    width_px: float | None = None
    area_mm2: float | None = None
    length_mm: float | None = None
    width_mm: float | None = None
    from_mask: bool = False  # False: from the box (a detect-only model)


@dataclass(frozen=True)
class Rule:
    """Fires when the metric lies in [minimum, maximum] (either bound may be open)."""

    name: str
    metric: Metric
    verdict: Verdict
    class_name: str = ""  # empty: every class
    minimum: float | None = None
    maximum: float | None = None
    zone: str = ""  # empty: anywhere; else only detections whose box centre is in that zone


@dataclass(frozen=True)
class RuleSet:
    """Rules with the zones they name; detections centred in an ignore zone are left out."""

    rules: tuple[Rule, ...] = ()
    zones: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = ()
    ignore_zones: tuple[tuple[tuple[float, float], ...], ...] = ()


@dataclass(frozen=True)
class RuleHit:
    """A rule that fired: the value measured and the bounds it fell within."""

    rule: str
    verdict: Verdict
    metric: Metric
    value: float
    class_name: str = ""
    minimum: float | None = None
    maximum: float | None = None
    detection: int | None = None  # index in the result's detections; None for a count
    zone: str = ""


@dataclass(frozen=True)
class InspectionVerdict:
    verdict: Verdict
    hits: tuple[RuleHit, ...] = ()


# -- every Ultralytics task (issue 13 item 4): keypoints, rotated boxes, classifications --------


@dataclass(frozen=True)
class Keypoint:
    """One keypoint in original-image pixels, in the model's keypoint order."""

    x: float
    y: float
    visibility: float  # the model's confidence that the point is visible (0..1); 1 if it has none


@dataclass(frozen=True)
class RotatedBox:
    """An oriented box in original-image pixels: centre, side lengths and rotation.

    ``angle_deg`` is in [0, 90): the rotation of the ``width`` side from the image's x axis,
    clockwise on screen (y points down), as Ultralytics reports it. ``corners`` are the four
    corners in order around the box.
    """

    cx: float
    cy: float
    width: float
    height: float
    angle_deg: float
    corners: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Classification:
    """One class of a classification model's answer for the whole image."""

    class_id: int
    class_name: str
    score: float


@dataclass(frozen=True)
class Detection:
    box: BoxXYXY  # for an oriented box, the axis-aligned box around it
    score: float
    class_id: int
    class_name: str
    mask: EncodedMask | None = None
    mask_area_px: int | None = None  # set for segmentation models, even when no mask is returned
    measurement: Measurement | None = None  # when measuring was asked for (or rules need it)
    keypoints: tuple[Keypoint, ...] = ()  # pose models
    rotated_box: RotatedBox | None = None  # oriented-box models


@dataclass(frozen=True)
class DefectSummary:
    """All detections of one class in one image."""

    class_name: str
    count: int
    max_score: float
    total_area_px: float
    area_fraction: float
    total_area_mm2: float | None = None  # with a scale
    total_length_px: float | None = None  # when lengths were measured
    total_length_mm: float | None = None


@dataclass
class Timings:
    """Milliseconds per stage."""

    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    queue_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class InferenceResult:
    model: str
    model_version: str
    image_width: int
    image_height: int
    detections: tuple[Detection, ...]
    defects: tuple[DefectSummary, ...]
    timings: Timings = field(default_factory=Timings)
    request_id: str = ""
    tiling: TilingReport | None = None  # set when the frame ran as tiles
    verdict: InspectionVerdict | None = None  # when rules applied (the model's or the request's)
    pixels_per_mm: float | None = None  # the scale the mm values use
    classifications: tuple[Classification, ...] = ()  # classification models: best first


@dataclass(frozen=True)
class ModelDescription:
    """What ListModels / GetModelInfo report about a loaded model."""

    name: str
    version: str
    display_name: str
    task: Task
    input_width: int
    input_height: int
    class_names: tuple[str, ...]
    execution_provider: str
    default_confidence_threshold: float
    default_iou_threshold: float
    default_max_detections: int
    layout: Layout
    dynamic_batch: bool
    max_batch_size: int
    default_agnostic_nms: bool = False
    state: ModelState = ModelState.READY
    state_reason: str = ""  # why it is not READY, or why its last reload failed
    default_tiling: TilingOptions | None = None  # every field set for a loaded model
    keypoint_shape: tuple[int, ...] = ()  # pose models: (keypoints, 2 or 3 values each)


@dataclass(frozen=True)
class ModelStatus:
    """One model of the repository directory in the index: its state, whether loaded or not."""

    name: str
    state: ModelState
    version: str = ""  # the loaded (or last loaded) version; empty when never loaded
    reason: str = ""  # why it is not READY, or why its last reload failed
