"""Oriented-box (OBB) decoding: thresholds, rotated NMS, Ultralytics' angle convention, corners.

An Ultralytics OBB export gives per candidate cx, cy, w, h (input pixels), the class scores and one
angle in radians: YOLOV8 layout [B, 4+nc+1, N], needing NMS; END2END layout [B, max_det, 7] of
cx, cy, w, h, score, class, angle. Boxes are reported as Ultralytics' ``regularize_rboxes`` leaves
them: the angle in [0, pi/2), width and height swapped where the raw angle said so, so one box
always has one description (the raw angle range differs between YOLOv8 and YOLO26 heads).
NMS is OpenCV's ``NMSBoxesRotated``: greedy, with the exact polygon IoU of the rectangles, per
class unless agnostic. Ultralytics' predictor runs Fast-NMS with a Gaussian approximation of the
IoU (probiou) instead: a box also falls to a higher-scoring box that was itself suppressed, so in
a crowd of overlapping boxes it keeps a subset of what greedy NMS keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from visionrpc.runtime.imaging import ImageTransform
from visionrpc.runtime.yolo import MAX_NMS_CANDIDATES, DecodeParams, OutputSpec
from visionrpc.types import BoxXYXY, Layout, RotatedBox


@dataclass(frozen=True)
class RawRotated:
    """Oriented boxes of one image in model-input pixels, best score first."""

    xywhr: np.ndarray  # (K, 5) float64 cx, cy, w, h, angle (radians, as the model gave it)
    scores: np.ndarray  # (K,) float32
    class_ids: np.ndarray  # (K,) int64

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def decode_rotated(pred: np.ndarray, spec: OutputSpec, params: DecodeParams) -> RawRotated:
    """One image's output0 (batch axis removed) -> thresholded, de-duplicated oriented boxes."""
    pred = np.asarray(pred)
    if spec.layout is Layout.END2END:
        rows = pred.astype(np.float64, copy=False)
        scores = rows[:, 4].astype(np.float32)
        class_ids = np.rint(rows[:, 5]).astype(np.int64)
        xywhr = np.concatenate([rows[:, :4], rows[:, 6:7]], axis=1)
        keep = _kept(scores, class_ids, params)
        idx = keep[np.argsort(-scores[keep], kind="stable")]
        if params.agnostic and idx.size > 1:
            kept = rotated_nms(xywhr[idx], scores[idx], None, params.iou)
            idx = idx[np.sort(kept)]
    else:
        cols = pred.T if spec.transposed else pred  # (C, N)
        nc = spec.num_classes
        cls_scores = cols[4 : 4 + nc]
        class_ids = cls_scores.argmax(axis=0).astype(np.int64)
        scores = np.take_along_axis(cls_scores, class_ids[None, :], axis=0)[0].astype(np.float32)
        keep = _kept(scores, class_ids, params)
        if keep.size > MAX_NMS_CANDIDATES:
            best = np.argpartition(-scores[keep], MAX_NMS_CANDIDATES)[:MAX_NMS_CANDIDATES]
            keep = keep[best]
        xywhr = np.concatenate([cols[:4, keep], cols[4 + nc : 5 + nc, keep]]).T.astype(np.float64)
        scores, class_ids = scores[keep], class_ids[keep]
        kept = rotated_nms(xywhr, scores, None if params.agnostic else class_ids, params.iou)
        idx = kept[np.argsort(-scores[kept], kind="stable")]
    idx = idx[: params.max_detections]
    return RawRotated(xywhr[idx], scores[idx], class_ids[idx])


def _kept(scores: np.ndarray, class_ids: np.ndarray, params: DecodeParams) -> np.ndarray:
    keep = scores >= params.confidence
    if params.class_ids is not None:
        keep &= np.isin(class_ids, np.fromiter(params.class_ids, dtype=np.int64))
    return np.flatnonzero(keep)


def rotated_nms(
    xywhr: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, iou: float
) -> np.ndarray:
    """Indices kept by OpenCV's rotated NMS, within each class (or across all when None)."""
    if not len(scores):
        return np.zeros((0,), np.int64)
    dnn: Any = cv2.dnn  # its stubs ask for Sequences of RotatedRects
    groups = [np.arange(len(scores))] if classes is None else _by_class(classes)
    kept: list[np.ndarray] = []
    for members in groups:
        rects = [
            ((float(b[0]), float(b[1])), (float(b[2]), float(b[3])), math.degrees(float(b[4])))
            for b in xywhr[members]
        ]
        chosen = dnn.NMSBoxesRotated(rects, scores[members].astype(np.float32), 0.0, float(iou))
        kept.append(members[np.asarray(chosen, dtype=np.int64).reshape(-1)])
    return np.concatenate(kept)


def _by_class(classes: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(classes == c) for c in np.unique(classes)]


def regularize(xywhr: np.ndarray) -> np.ndarray:
    """Angle into [0, pi/2), swapping width and height where the angle mod pi was >= pi/2."""
    out = np.array(xywhr, dtype=np.float64).reshape(-1, 5)
    t = out[:, 4]
    swap = np.mod(t, math.pi) >= math.pi / 2
    out[swap, 2], out[swap, 3] = out[swap, 3].copy(), out[swap, 2].copy()
    out[:, 4] = np.mod(t, math.pi / 2)
    return out


def corners(xywhr: np.ndarray) -> np.ndarray:
    """(K, 4, 2) corners of (K, 5) oriented boxes, in Ultralytics' order (xywhr2xyxyxyxy)."""
    b = np.asarray(xywhr, dtype=np.float64).reshape(-1, 5)
    cos, sin = np.cos(b[:, 4]), np.sin(b[:, 4])
    half_w = np.stack([b[:, 2] / 2 * cos, b[:, 2] / 2 * sin], axis=1)
    half_h = np.stack([-b[:, 3] / 2 * sin, b[:, 3] / 2 * cos], axis=1)
    centre = b[:, :2]
    return np.stack(
        [
            centre + half_w + half_h,
            centre + half_w - half_h,
            centre - half_w - half_h,
            centre - half_w + half_h,
        ],
        axis=1,
    )


def to_original(
    raw: RawRotated, transform: ImageTransform
) -> tuple[list[RotatedBox], list[BoxXYXY]]:
    """Oriented boxes in original-image pixels, and the axis-aligned box around each (clipped).

    The centre moves like any point; width and height scale with the letterbox gain of their
    axis before the angle is regularised, as Ultralytics' ``scale_boxes(xywh=True)`` does (the
    gains only differ by rounding).
    """
    kx, ky = transform.input_to_original
    b = raw.xywhr.copy()
    b[:, 0] = (b[:, 0] - transform.pad_x) * kx
    b[:, 1] = (b[:, 1] - transform.pad_y) * ky
    b[:, 2] *= kx
    b[:, 3] *= ky
    b = regularize(b)
    pts = corners(b)
    rotated: list[RotatedBox] = []
    boxes: list[BoxXYXY] = []
    w, h = transform.orig_width, transform.orig_height
    for row, quad in zip(b, pts, strict=True):
        rotated.append(
            RotatedBox(
                cx=float(row[0]),
                cy=float(row[1]),
                width=float(row[2]),
                height=float(row[3]),
                angle_deg=math.degrees(float(row[4])),
                corners=tuple((float(x), float(y)) for x, y in quad),
            )
        )
        x0, y0 = np.clip(quad.min(axis=0), 0, (w, h))
        x1, y1 = np.clip(quad.max(axis=0), 0, (w, h))
        boxes.append(BoxXYXY(float(x0), float(y0), float(x1), float(y1)))
    return rotated, boxes
