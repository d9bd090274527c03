"""YOLO output decoding: layout detection, thresholds, NMS and instance masks.

Two layouts are understood (see types.Layout):
* YOLOV8 (YOLOv8/YOLO11): output0 [B, 4+nc(+extra), N] of cx,cy,w,h (input pixels) and sigmoid
  class scores, no objectness; needs NMS. Segment models add output1 protos [B, nm, H/4, W/4].
* END2END (YOLOv10/YOLO26, Ultralytics ``nms=True``): output0 [B, max_det, 6(+extra)] of
  x1,y1,x2,y2,score,class(,extra); already de-duplicated within each class, so only thresholds
  apply, plus a class-agnostic NMS pass when asked for.
The extra values per candidate are the task's: mask coefficients (segment), K keypoints of 2 or 3
values (pose: x, y in input pixels, visibility after a sigmoid) or one angle (obb, radians; its
boxes are cx,cy,w,h in both layouts, decoded by :mod:`visionrpc.runtime.obb`). Classification
models ([B, nc] probabilities) have their own layout, read by :mod:`visionrpc.runtime.classify`.
All work is vectorised with numpy. NMS is OpenCV's: class-aware ``NMSBoxesBatched`` by default,
``NMSBoxes`` over every candidate when class-agnostic (``DecodeParams.agnostic``), so one defect
reported under two classes with overlapping boxes counts once, under its best-scoring class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from visionrpc.errors import ModelLoadError
from visionrpc.runtime.imaging import ImageTransform
from visionrpc.types import Layout, Task

MAX_NMS_CANDIDATES = 30_000  # like Ultralytics' max_nms: bounds NMS time at very low thresholds
MASK_THRESHOLD = 0.5
END2END_DEFAULT_ROWS = 300  # Ultralytics' max_det: the rows of an end-to-end head, or fewer


@dataclass(frozen=True)
class OutputSpec:
    """How to read a model's outputs; fixed at load time from real output shapes."""

    layout: Layout
    task: Task
    num_classes: int  # 0 = unknown (no names in metadata, END2END layout)
    num_masks: int  # prototype count, 0 for detect models
    capacity: int  # anchors (YOLOV8) or rows (END2END): the most detections the model can give
    transposed: bool = False  # YOLOV8 only: [B, N, C] instead of [B, C, N]
    batched: bool = True  # False when output0 is 2-D (no batch axis)
    keypoint_shape: tuple[int, int] | None = None  # pose models: (K, 2 or 3)

    @property
    def num_extra(self) -> int:
        """Values after the class scores (YOLOV8) or the class id (END2END) of each candidate."""
        if self.task is Task.POSE and self.keypoint_shape:
            return self.keypoint_shape[0] * self.keypoint_shape[1]
        if self.task is Task.OBB:
            return 1
        return self.num_masks


@dataclass(frozen=True)
class DecodeParams:
    confidence: float
    iou: float
    max_detections: int
    class_ids: frozenset[int] | None = None  # keep only these; None = all
    agnostic: bool = False  # NMS across classes: overlapping boxes are one detection


@dataclass(frozen=True)
class RawDetections:
    """Detections of one image in model-input pixels, best score first."""

    boxes: np.ndarray  # (K, 4) float32 x1,y1,x2,y2
    scores: np.ndarray  # (K,) float32
    class_ids: np.ndarray  # (K,) int64
    coeffs: np.ndarray | None  # (K, extra) float32: mask coefficients or keypoints; else None

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class BoxMask:
    """A binary instance mask stored only over its box: ``mask`` starts at pixel (x, y).

    With ``step`` > 1 each cell stands for step x step image pixels (the last row and column
    for what is left of the box): enough for an area, not for an encoded mask.
    """

    x: int
    y: int
    mask: np.ndarray  # (h, w) bool; (ceil(h / step), ceil(w / step)) with a step
    image_width: int
    image_height: int
    step: int = 1
    box_width: int = 0  # image pixels the box covers; only read with a step
    box_height: int = 0

    @property
    def area(self) -> int:
        if self.step == 1:
            return int(np.count_nonzero(self.mask))
        rows, cols = self.mask.shape
        s = self.step
        row_px = np.full(rows, s, np.int64)
        col_px = np.full(cols, s, np.int64)
        if rows:
            row_px[-1] = self.box_height - s * (rows - 1)
        if cols:
            col_px[-1] = self.box_width - s * (cols - 1)
        return int(row_px @ self.mask.astype(np.int64) @ col_px)


def expected_anchor_count(input_size: tuple[int, int], strides: Sequence[int] = (8, 16, 32)) -> int:
    """Anchor points of a P3-P5 YOLO head: how long N is for this input size."""
    w, h = input_size
    return sum(math.ceil(w / s) * math.ceil(h / s) for s in strides)


def detect_layout(
    shapes: Sequence[Sequence[int]],
    *,
    num_classes: int | None,
    input_size: tuple[int, int],
    end2end_hint: bool | None = None,
    task_hint: Task | None = None,
    keypoint_shape: tuple[int, int] | None = None,
) -> OutputSpec:
    """Tell YOLOV8 from END2END (and plain from transposed) by output shapes; metadata breaks ties.

    Shapes win over the ``end2end`` metadata key, which exports made with ``nms=True`` leave False.
    Ambiguity only arises when 4+nc equals 6 (two classes); then a true ``end2end`` key wins if
    there are at most 300 rows (a YOLO26 head at an input of 128 px or less has as many rows as
    anchors), then an N equal to the anchor count of the input size, then the key, then the usual
    [B, C, N] with N > C. Pose and oriented-box models
    are told by the metadata's ``task`` (and ``kpt_shape``), since their extra values look like
    anything else's.
    """
    if not shapes:
        raise ModelLoadError("the model has no outputs")
    out0 = tuple(shapes[0])
    if len(out0) not in (2, 3):
        raise ModelLoadError(f"unsupported YOLO output0 shape {list(out0)}: expected 2 or 3 dims")
    batched = len(out0) == 3
    nm, task = 0, Task.DETECT
    if task_hint is Task.POSE:
        if not keypoint_shape:
            raise ModelLoadError(
                "a pose model needs 'kpt_shape' (e.g. [17, 3]) in its metadata; export it with "
                "Ultralytics or add the key"
            )
        task = Task.POSE
    elif task_hint is Task.OBB:
        task = Task.OBB
    elif len(shapes) > 1:
        protos = tuple(shapes[1])
        if len(protos) != (4 if batched else 3):
            raise ModelLoadError(
                f"unsupported YOLO output1 shape {list(protos)}: expected protos [B, nm, H/4, W/4]"
            )
        nm, task = protos[-3], Task.SEGMENT
    a, b = out0[-2], out0[-1]
    extra = (
        keypoint_shape[0] * keypoint_shape[1]
        if task is Task.POSE and keypoint_shape
        else (1 if task is Task.OBB else nm)
    )
    e2e_cols = 6 + extra
    anchors = expected_anchor_count(input_size)
    candidates: list[OutputSpec] = []

    def add(layout: Layout, nc: int, capacity: int, transposed: bool = False) -> None:
        kpt = keypoint_shape if task is Task.POSE else None
        candidates.append(OutputSpec(layout, task, nc, nm, capacity, transposed, batched, kpt))

    if num_classes:
        c = 4 + num_classes + extra
        if a == c:
            add(Layout.YOLOV8, num_classes, b)
        if b == c:
            add(Layout.YOLOV8, num_classes, a, transposed=True)
    else:
        if 4 + extra < a < b:
            add(Layout.YOLOV8, a - 4 - extra, b)
        if 4 + extra < b < a:
            add(Layout.YOLOV8, b - 4 - extra, a, transposed=True)
    if b == e2e_cols:
        add(Layout.END2END, num_classes or 0, a)
    if not candidates:
        nc_text = f"{num_classes} classes" if num_classes else "unknown class count"
        raise ModelLoadError(
            f"unsupported YOLO output layout {[list(s) for s in shapes]} for a {task.value} model "
            f"({nc_text}, {extra} extra values per box): expected [B, 4+nc+{extra}, N] "
            f"(YOLOv8/YOLO11) or [B, max_det, {e2e_cols}] (end-to-end); check the export and the "
            "class names, task and kpt_shape in the metadata"
        )
    if len(candidates) == 1:
        return candidates[0]
    if end2end_hint:  # an end-to-end head whose rows (max_det) happen to equal the anchor count
        for spec in candidates:
            if spec.layout is Layout.END2END and spec.capacity <= END2END_DEFAULT_ROWS:
                return spec
    for spec in candidates:
        if spec.layout is Layout.YOLOV8 and spec.capacity == anchors:
            return spec
    if end2end_hint is not None:
        for spec in candidates:
            if (spec.layout is Layout.END2END) == end2end_hint:
                return spec
    return candidates[0]


def decode_detections(
    outputs: Sequence[np.ndarray], spec: OutputSpec, params: DecodeParams
) -> RawDetections:
    """One image's outputs (batch axis already removed) -> thresholded, de-duplicated detections."""
    pred = np.asarray(outputs[0])
    if spec.layout is Layout.END2END:
        return _decode_end2end(pred, spec, params)
    return _decode_yolov8(pred.T if spec.transposed else pred, spec, params)


def _empty(nm: int) -> RawDetections:
    return RawDetections(
        np.zeros((0, 4), np.float32),
        np.zeros((0,), np.float32),
        np.zeros((0,), np.int64),
        np.zeros((0, nm), np.float32) if nm else None,
    )


def _decode_yolov8(pred: np.ndarray, spec: OutputSpec, params: DecodeParams) -> RawDetections:
    nc, nm = spec.num_classes, spec.num_extra
    cls_scores = pred[4 : 4 + nc]  # (nc, N)
    class_ids = cls_scores.argmax(axis=0)
    scores = np.take_along_axis(cls_scores, class_ids[None, :], axis=0)[0]
    keep = scores >= params.confidence
    if params.class_ids is not None:
        # filter after the arg-max, like Ultralytics: the result is a subset of the unfiltered one
        keep &= np.isin(class_ids, np.fromiter(params.class_ids, dtype=np.int64))
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return _empty(nm)
    if idx.size > MAX_NMS_CANDIDATES:
        idx = idx[np.argpartition(-scores[idx], MAX_NMS_CANDIDATES)[:MAX_NMS_CANDIDATES]]
    cand = pred[:, idx].T.astype(np.float32, copy=False)  # (M, C)
    cx, cy, w, h = cand[:, 0], cand[:, 1], cand[:, 2], cand[:, 3]
    xywh = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1).astype(np.float64)
    cand_scores = scores[idx].astype(np.float32)
    cand_classes = class_ids[idx].astype(np.int32)
    kept = nms(xywh, cand_scores, None if params.agnostic else cand_classes, params.iou)
    kept = kept[np.argsort(-cand_scores[kept], kind="stable")][: params.max_detections]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)[kept]
    coeffs = cand[kept, 4 + nc : 4 + nc + nm] if nm else None
    return RawDetections(
        boxes.astype(np.float32), cand_scores[kept], cand_classes[kept].astype(np.int64), coeffs
    )


def _decode_end2end(pred: np.ndarray, spec: OutputSpec, params: DecodeParams) -> RawDetections:
    nm = spec.num_extra
    scores = pred[:, 4]
    class_ids = np.rint(pred[:, 5]).astype(np.int64)
    keep = scores >= params.confidence
    if params.class_ids is not None:
        keep &= np.isin(class_ids, np.fromiter(params.class_ids, dtype=np.int64))
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    if params.agnostic and idx.size > 1:
        x1, y1, x2, y2 = (pred[idx, i].astype(np.float64) for i in range(4))
        xywh = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        kept = nms(xywh, scores[idx].astype(np.float32), None, params.iou)
        idx = idx[np.sort(kept)]  # NMS keeps the best of each group; restore score order
    idx = idx[: params.max_detections]
    rows = pred[idx].astype(np.float32, copy=False)
    return RawDetections(
        rows[:, :4].copy(),
        rows[:, 4].copy(),
        class_ids[idx],
        rows[:, 6 : 6 + nm].copy() if nm else None,
    )


def nms(xywh: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, iou: float) -> np.ndarray:
    """Indices kept by OpenCV's NMS: within each class, or across all when ``classes`` is None."""
    dnn: Any = cv2.dnn  # its stubs ask for Sequences; numpy arrays are what it takes best
    if classes is None:
        kept = dnn.NMSBoxes(xywh, scores, 0.0, float(iou))
    else:
        kept = dnn.NMSBoxesBatched(xywh, scores, classes, 0.0, float(iou))
    return np.asarray(kept, dtype=np.int64).reshape(-1)


def instance_masks(
    coeffs: np.ndarray,
    protos: np.ndarray,
    boxes_input: np.ndarray,
    boxes_original: np.ndarray,
    transform: ImageTransform,
    *,
    step: int = 1,
) -> list[BoxMask]:
    """Ultralytics-style masks, computed only over each box.

    sigmoid(coeffs @ protos) is evaluated only on the proto cells of the box plus a one-cell margin,
    cropped to the box at proto resolution (crop_mask: zero outside), then sampled by one bilinear
    warp straight into the box's original-image pixels: the same geometry as "upsample to the input
    size, cut the letterbox padding, resize to the original", with cost proportional to box area
    instead of detections x image size. Thresholded at 0.5.

    ``step`` > 1 samples one point per step x step block of image pixels (its centre): a coarser
    mask whose cost is box area / step², for areas of masks nobody asked to see.
    """
    nm, mh, mw = protos.shape
    protos = np.ascontiguousarray(protos, dtype=np.float32)
    coeffs = np.asarray(coeffs, dtype=np.float32)
    rx, ry = mw / transform.input_width, mh / transform.input_height
    proto_boxes = boxes_input * np.array([rx, ry, rx, ry], dtype=np.float32)
    kx, ky = transform.input_to_original
    W, H = transform.orig_width, transform.orig_height
    result: list[BoxMask] = []
    for coeff, pb, box in zip(coeffs, proto_boxes, boxes_original, strict=True):
        x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x1, y1 = min(W, math.ceil(box[2])), min(H, math.ceil(box[3]))
        # proto cells of the box, plus a margin cell on each side that crop_mask zeroes
        cx0, cy0 = max(0, math.floor(pb[0]) - 1), max(0, math.floor(pb[1]) - 1)
        cx1, cy1 = min(mw, math.ceil(pb[2]) + 1), min(mh, math.ceil(pb[3]) + 1)
        bw, bh = max(0, x1 - x0), max(0, y1 - y0)
        out_w, out_h = -(-bw // step), -(-bh // step)
        if x1 <= x0 or y1 <= y0 or cx1 <= cx0 or cy1 <= cy0:
            result.append(BoxMask(x0, y0, np.zeros((out_h, out_w), bool), W, H, step, bw, bh))
            continue
        cells = protos[:, cy0:cy1, cx0:cx1]
        logits = coeff @ cells.reshape(nm, -1)
        prob = (1.0 / (1.0 + np.exp(-logits))).reshape(cy1 - cy0, cx1 - cx0).astype(np.float32)
        cols = np.arange(cx0, cx1, dtype=np.float32)
        rows = np.arange(cy0, cy1, dtype=np.float32)
        prob *= ((rows >= pb[1]) & (rows < pb[3]))[:, None] & ((cols >= pb[0]) & (cols < pb[2]))
        # destination cell (u, v) of the box -> crop sample coordinate; a cell's centre is image
        # pixel x0 + step * u + step / 2 (pixel centres at +0.5 when step is 1)
        half = step / 2
        m = np.array(
            [
                [step * rx / kx, 0.0, ((x0 + half) / kx + transform.pad_x) * rx - 0.5 - cx0],
                [0.0, step * ry / ky, ((y0 + half) / ky + transform.pad_y) * ry - 0.5 - cy0],
            ]
        )
        region = cv2.warpAffine(
            prob,
            m,
            (out_w, out_h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        result.append(BoxMask(x0, y0, region > MASK_THRESHOLD, W, H, step, bw, bh))
    return result


def mask_pixels(boxes_original: np.ndarray) -> int:
    """Image pixels the masks of these boxes cover (what building and encoding them costs)."""
    if not len(boxes_original):
        return 0
    b = np.asarray(boxes_original, dtype=np.float64)
    w = np.maximum(0, np.ceil(b[:, 2]) - np.floor(b[:, 0]))
    h = np.maximum(0, np.ceil(b[:, 3]) - np.floor(b[:, 1]))
    return int((w * h).sum())
