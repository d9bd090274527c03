"""Binary instance mask -> types.EncodedMask (COCO RLE, box-region PNG or outer polygons)."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from visionrpc.runtime.yolo import BoxMask
from visionrpc.types import EncodedMask, MaskFormat


class MaskEncoder:
    """Encodes the masks of one image (width x height) into the requested format."""

    def __init__(self, image_width: int, image_height: int) -> None:
        self.width = image_width
        self.height = image_height

    def encode(self, box_mask: BoxMask, fmt: MaskFormat) -> EncodedMask:
        if fmt is MaskFormat.PNG:
            return encode_png(box_mask)
        if fmt is MaskFormat.POLYGON:
            return encode_polygons(box_mask)
        return encode_rle(box_mask)


def rle_runs(box_mask: BoxMask) -> list[int]:
    """COCO (column-major) run lengths of the full-frame mask, computed from the box region only.

    Columns left and right of the box are all zeros, so only the box's columns (padded to the full
    image height) are scanned: cost ~ height x box width instead of the whole frame.
    """
    H, W = box_mask.image_height, box_mask.image_width
    mask = box_mask.mask
    h, w = mask.shape
    if mask.size == 0 or not mask.any():
        return [H * W]
    columns = np.zeros((w, H), dtype=np.int8)  # row i = image column x + i, top to bottom
    columns[:, box_mask.y : box_mask.y + h] = mask.T
    seq = columns.ravel()
    starts = np.flatnonzero(seq[1:] != seq[:-1]) + 1
    runs = np.diff(np.concatenate(([0], starts, [seq.size])))
    if seq[0]:
        runs = np.concatenate(([0], runs))  # counts always start with a run of zeros
    runs[0] += box_mask.x * H
    trailing = (W - box_mask.x - w) * H
    if seq[-1]:
        runs = np.concatenate((runs, [trailing])) if trailing else runs
    else:
        runs[-1] += trailing
    return [int(r) for r in runs]


def encode_rle(box_mask: BoxMask) -> EncodedMask:
    """COCO compressed RLE over the full image frame, size (h, w); pycocotools decodes it."""
    H, W = box_mask.image_height, box_mask.image_width
    rle = coco_mask.frPyObjects({"counts": rle_runs(box_mask), "size": [H, W]}, H, W)
    counts = rle["counts"]
    return EncodedMask(
        format=MaskFormat.RLE,
        area_px=box_mask.area,
        rle_counts=counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
        rle_size=(H, W),
    )


def encode_png(box_mask: BoxMask) -> EncodedMask:
    """8-bit single-channel PNG (0/255) of the box region, plus where it sits in the image."""
    region = box_mask.mask.astype(np.uint8) * 255
    if region.size == 0:
        region = np.zeros((1, 1), np.uint8)
    ok, png = cv2.imencode(".png", region)
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise RuntimeError("PNG encoding failed")
    return EncodedMask(
        format=MaskFormat.PNG,
        area_px=box_mask.area,
        png=png.tobytes(),
        png_origin=(box_mask.x, box_mask.y),
    )


def encode_polygons(box_mask: BoxMask) -> EncodedMask:
    """Outer contours in image pixels (x, y) as float32 (N, 2) arrays.

    Contours with fewer than 3 points (specks) are dropped unless nothing else is left.
    """
    polygons: list[np.ndarray] = []
    if box_mask.mask.size:
        contours, _ = cv2.findContours(
            box_mask.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        offset = np.array([box_mask.x, box_mask.y], dtype=np.float32)
        polygons = [c.reshape(-1, 2).astype(np.float32) + offset for c in contours]
        proper = [p for p in polygons if len(p) >= 3]
        polygons = proper or polygons
    return EncodedMask(format=MaskFormat.POLYGON, area_px=box_mask.area, polygons=tuple(polygons))
