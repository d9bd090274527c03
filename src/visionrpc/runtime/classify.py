"""Classification models: Ultralytics' resize-and-centre-crop input and the top-k of its output.

An Ultralytics classification export takes [B, 3, S, S] and gives [B, nc] probabilities (its head
ends in a softmax). Its predictor does not letterbox: it scales the image so the shorter side is S
and cuts the centre S x S square; the same is done here, so the scores equal Ultralytics' for the
same image (up to resampling differences).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from visionrpc.errors import ModelLoadError
from visionrpc.runtime.imaging import DecodedImage, ImageTransform
from visionrpc.runtime.yolo import OutputSpec
from visionrpc.types import Layout, Task

DEFAULT_TOP_K = 5  # Ultralytics' Results.probs.top5


def centre_crop_uint8(
    image: DecodedImage, input_size: tuple[int, int]
) -> tuple[np.ndarray, ImageTransform]:
    """Scale so the image covers ``input_size`` (w, h), cut out its centre.

    The transform maps input pixels back like a letterbox's, with negative padding: the crop's
    offset inside the scaled image.
    """
    in_w, in_h = input_size
    rgb = image.rgb
    h, w = rgb.shape[:2]
    r = max(in_w / w, in_h / h)
    new_w, new_h = max(in_w, round(w * r)), max(in_h, round(h * r))
    if (new_w, new_h) != (w, h):
        shrink = new_w < w
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    left, top = (new_w - in_w) // 2, (new_h - in_h) // 2
    canvas = np.ascontiguousarray(rgb[top : top + in_h, left : left + in_w])
    transform = ImageTransform(
        orig_width=image.width,
        orig_height=image.height,
        input_width=in_w,
        input_height=in_h,
        resized_width=new_w,
        resized_height=new_h,
        pad_x=-left,
        pad_y=-top,
        lb_scale_x=new_w / w,
        lb_scale_y=new_h / h,
        decode_scale_x=image.scale_x,
        decode_scale_y=image.scale_y,
    )
    return canvas, transform


def top_classes(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best classes of one image's [nc] scores: (class ids, scores), best first; ties
    keep the lower class id first."""
    scores = np.asarray(probs, dtype=np.float32).reshape(-1)
    k = max(0, min(k, scores.shape[0]))
    order = np.argsort(-scores, kind="stable")[:k]
    return order.astype(np.int64), scores[order]


def classify_layout(shapes: Sequence[Sequence[int]], num_classes: int | None) -> OutputSpec:
    """The layout of a classification export: one output [B, nc] (a dynamic B reads as -1)."""
    out0 = [int(d) for d in shapes[0]] if shapes else []
    if len(shapes) != 1 or len(out0) != 2 or out0[1] <= 0:
        raise ModelLoadError(
            f"unsupported classification outputs {[list(s) for s in shapes]}: expected one "
            "[batch, classes] output of class probabilities"
        )
    if num_classes and out0[1] != num_classes:
        raise ModelLoadError(
            f"the classification output has {out0[1]} classes but the metadata names "
            f"{num_classes}; fix the class names"
        )
    return OutputSpec(Layout.CLASSIFY, Task.CLASSIFY, out0[1], 0, capacity=out0[1])
