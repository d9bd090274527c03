"""Binary instance mask -> types.EncodedMask (COCO RLE, box-region PNG or outer polygons)."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from visionrpc.runtime.types import EncodedMask, MaskFormat
from visionrpc.runtime.yolo import BoxMask


class MaskEncoder:
    """Encodes masks of one image; reuses one full-frame buffer for RLE instead of one per mask."""

    def __init__(self, image_width: int, image_height: int) -> None:
        self.width = image_width
        self.height = image_height
        self._frame: np.ndarray | None = None

    def encode(self, box_mask: BoxMask, fmt: MaskFormat) -> EncodedMask:
        if fmt is MaskFormat.PNG:
            return encode_png(box_mask)
        if fmt is MaskFormat.POLYGON:
            return encode_polygons(box_mask)
        return self.encode_rle(box_mask)

    def encode_rle(self, box_mask: BoxMask) -> EncodedMask:
        """COCO compressed RLE over the full image frame, size (h, w); pycocotools decodes it."""
        if self._frame is None:
            # Fortran order: pycocotools runs are column-major
            self._frame = np.zeros((self.height, self.width), dtype=np.uint8, order="F")
        frame = self._frame
        h, w = box_mask.mask.shape
        region = frame[box_mask.y : box_mask.y + h, box_mask.x : box_mask.x + w]
        region[...] = box_mask.mask
        try:
            rle = coco_mask.encode(frame)
        finally:
            region[...] = 0
        counts = rle["counts"]
        return EncodedMask(
            format=MaskFormat.RLE,
            area_px=box_mask.area,
            rle_counts=counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
            rle_size=(self.height, self.width),
        )


def encode_rle(box_mask: BoxMask) -> EncodedMask:
    """One-off RLE encoding (see MaskEncoder to encode many masks of one image)."""
    return MaskEncoder(box_mask.image_width, box_mask.image_height).encode_rle(box_mask)


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
