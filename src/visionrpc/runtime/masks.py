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
        if box_mask.step != 1:
            raise ValueError("a coarse (step > 1) mask cannot be encoded; build it with step=1")
        if fmt is MaskFormat.PNG:
            return encode_png(box_mask)
        if fmt is MaskFormat.POLYGON:
            return encode_polygons(box_mask)
        return encode_rle(box_mask)


def rle_runs(box_mask: BoxMask) -> list[int]:
    """COCO (column-major) run lengths of the full-frame mask, computed from the box region only.

    Each box column is framed by a zero above and below; the run boundaries inside it map to
    full-frame positions. Where a box spans the full height, the boundary that ends one column
    and the one that starts the next fall on the same position and cancel. Cost ~ box area.
    """
    if box_mask.step != 1:
        raise ValueError("a coarse (step > 1) mask cannot be encoded; build it with step=1")
    H, W = box_mask.image_height, box_mask.image_width
    mask = box_mask.mask
    h, w = mask.shape
    if mask.size == 0 or not mask.any():
        return [H * W]
    framed = np.zeros((w, h + 2), dtype=np.int8)  # row i = image column x + i, top to bottom
    framed[:, 1:-1] = mask.T
    col, j = np.nonzero(np.diff(framed, axis=1))  # boundary before framed row j + 1
    pos = (box_mask.x + col).astype(np.int64) * H + box_mask.y + j
    pos, counts = np.unique(pos, return_counts=True)
    pos = pos[(counts % 2 == 1) & (pos < H * W)]
    runs = np.diff(np.concatenate(([0], pos, [H * W])))
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
