"""What the classify, pose and oriented-box tasks add to a result, from one image's outputs.

Detect and segment are the pipeline's own (:func:`visionrpc.runtime.yolo.decode_detections` and
masks); these build the typed results of the other Ultralytics tasks with the modules that
decode them, so the pipeline only asks which task a model has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from visionrpc.runtime import obb
from visionrpc.runtime.classify import top_classes
from visionrpc.runtime.imaging import ImageTransform
from visionrpc.runtime.pose import keypoints_to_original
from visionrpc.runtime.yolo import DecodeParams, OutputSpec, RawDetections
from visionrpc.types import BoxXYXY, Classification, Detection

ClassName = Callable[[int], str]


def classifications(
    outputs: Sequence[np.ndarray], top_k: int, class_name: ClassName
) -> tuple[Classification, ...]:
    """The ``top_k`` best classes of a classification model's [nc] output, best first."""
    ids, scores = top_classes(outputs[0], top_k)
    return tuple(
        Classification(int(c), class_name(int(c)), float(s))
        for c, s in zip(ids, scores, strict=True)
    )


def rotated_detections(
    outputs: Sequence[np.ndarray],
    spec: OutputSpec,
    params: DecodeParams,
    transform: ImageTransform,
    class_name: ClassName,
) -> tuple[Detection, ...]:
    """An oriented-box model's detections: each with its rotated box and the box around it."""
    raw = obb.decode_rotated(outputs[0], spec, params)
    rotated, boxes = obb.to_original(raw, transform)
    return tuple(
        Detection(
            box=box, score=float(s), class_id=int(c), class_name=class_name(int(c)), rotated_box=rb
        )
        for box, rb, s, c in zip(boxes, rotated, raw.scores, raw.class_ids, strict=True)
    )


def pose_detections(
    raw: RawDetections,
    boxes: np.ndarray,
    spec: OutputSpec,
    transform: ImageTransform,
    class_name: ClassName,
) -> tuple[Detection, ...]:
    """A pose model's detections (``boxes`` already in original pixels) with their keypoints."""
    shape = spec.keypoint_shape or (0, 2)
    values = raw.coeffs if raw.coeffs is not None else np.zeros((len(raw), 0), np.float32)
    points = keypoints_to_original(values, shape, transform)
    return tuple(
        Detection(
            box=BoxXYXY(*(float(v) for v in box)),
            score=float(s),
            class_id=int(c),
            class_name=class_name(int(c)),
            keypoints=kps,
        )
        for box, s, c, kps in zip(boxes, raw.scores, raw.class_ids, points, strict=True)
    )
