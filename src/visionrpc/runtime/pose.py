"""Pose keypoints: the extra values of a pose model's detections, mapped to original pixels.

An Ultralytics pose export carries, after each candidate's class scores (YOLOV8) or class id
(END2END), K keypoints of D values: x, y in input pixels and, when D is 3, a visibility already
passed through a sigmoid. The order of the keypoints is the model's (COCO's 17 for the stock
models); the server keeps it and reports the keypoint shape in ModelInfo.
"""

from __future__ import annotations

import numpy as np

from visionrpc.runtime.imaging import ImageTransform
from visionrpc.types import Keypoint


def keypoints_to_original(
    values: np.ndarray, shape: tuple[int, int], transform: ImageTransform
) -> list[tuple[Keypoint, ...]]:
    """(detections, K*D) keypoint values -> per detection, K keypoints in original pixels.

    Points are clipped to the image as Ultralytics' ``scale_coords`` does; a model without
    visibility (D = 2) reports 1.0 for every point.
    """
    k, d = shape
    pts = np.asarray(values, dtype=np.float64).reshape(-1, k, d)
    kx, ky = transform.input_to_original
    xs = np.clip((pts[:, :, 0] - transform.pad_x) * kx, 0, transform.orig_width)
    ys = np.clip((pts[:, :, 1] - transform.pad_y) * ky, 0, transform.orig_height)
    vis = pts[:, :, 2] if d >= 3 else np.ones_like(xs)
    return [
        tuple(
            Keypoint(float(x), float(y), float(v))
            for x, y, v in zip(xs[i], ys[i], vis[i], strict=True)
        )
        for i in range(pts.shape[0])
    ]
