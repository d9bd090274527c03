"""Turn results back into pixels: decode wire masks and draw boxes, labels and masks on an image."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from visionrpc.types import EncodedMask, InferenceResult, MaskFormat

_PALETTE = np.array(
    [
        (255, 56, 56),
        (50, 205, 50),
        (255, 157, 151),
        (0, 194, 255),
        (255, 178, 29),
        (207, 210, 49),
        (72, 249, 10),
        (146, 204, 23),
        (61, 219, 134),
        (26, 147, 52),
    ],
    np.uint8,
)  # RGB


def color_for(class_id: int) -> tuple[int, int, int]:
    r, g, b = _PALETTE[class_id % len(_PALETTE)]
    return int(r), int(g), int(b)


def decode_mask(mask: EncodedMask, height: int, width: int) -> np.ndarray:
    """A wire mask as a full-image boolean array of shape (height, width)."""
    if mask.format is MaskFormat.RLE:
        rle = {"size": list(mask.rle_size), "counts": mask.rle_counts.encode()}
        decoded: np.ndarray = coco_mask.decode(rle)
        return decoded.astype(bool)
    out = np.zeros((height, width), np.uint8)
    if mask.format is MaskFormat.PNG:
        patch = cv2.imdecode(np.frombuffer(mask.png, np.uint8), cv2.IMREAD_GRAYSCALE)
        if patch is None:
            raise ValueError("mask PNG could not be decoded")
        x, y = mask.png_origin
        h, w = min(patch.shape[0], height - y), min(patch.shape[1], width - x)
        out[y : y + h, x : x + w] = patch[:h, :w]
    else:
        polys = [np.round(p).astype(np.int32) for p in mask.polygons if len(p) >= 3]
        cv2.fillPoly(out, polys, 255)
    return out > 0


def draw(image_rgb: np.ndarray, result: InferenceResult) -> np.ndarray:
    """A copy of ``image_rgb`` with each detection's mask (translucent), box and label drawn."""
    canvas = image_rgb.copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    for det in result.detections:
        color = color_for(det.class_id)
        if det.mask is not None:
            region = decode_mask(det.mask, height, width)
            canvas[region] = (0.55 * canvas[region] + 0.45 * np.array(color)).astype(np.uint8)
    for det in result.detections:
        color = color_for(det.class_id)
        p1 = (round(det.box.x_min), round(det.box.y_min))
        p2 = (round(det.box.x_max), round(det.box.y_max))
        cv2.rectangle(canvas, p1, p2, color, thickness, cv2.LINE_AA)
        label = f"{det.class_name} {det.score:.2f}"
        scale = 0.4 * thickness
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(p1[1] - th - base - 2, 0)
        cv2.rectangle(canvas, (p1[0], top), (p1[0] + tw + 2, top + th + base + 2), color, -1)
        cv2.putText(
            canvas,
            label,
            (p1[0] + 1, top + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return canvas
