"""Mask encodings: COCO RLE round trip, box-region PNG and outer polygons."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from visionrpc.runtime.masks import MaskEncoder, encode_png, encode_polygons, encode_rle
from visionrpc.runtime.types import MaskFormat
from visionrpc.runtime.yolo import BoxMask


def sample_mask() -> tuple[BoxMask, np.ndarray]:
    full = np.zeros((60, 90), bool)
    cv2.circle(full.view(np.uint8), (40, 30), 12, 1, -1)
    full[10:14, 60:80] = True  # a second blob
    region = full[5:50, 20:85]
    return BoxMask(20, 5, region.copy(), 90, 60), full


def test_rle_round_trips_through_pycocotools() -> None:
    box_mask, full = sample_mask()
    enc = encode_rle(box_mask)
    assert enc.format is MaskFormat.RLE and enc.rle_size == (60, 90)
    decoded = coco_mask.decode({"size": list(enc.rle_size), "counts": enc.rle_counts})
    np.testing.assert_array_equal(decoded.astype(bool), full)
    assert (
        enc.area_px
        == int(full.sum())
        == int(coco_mask.area({"size": [60, 90], "counts": enc.rle_counts}))
    )


def test_encoder_reuses_its_frame_without_leaking_masks() -> None:
    encoder = MaskEncoder(90, 60)
    first, _ = sample_mask()
    encoder.encode(first, MaskFormat.RLE)
    second = BoxMask(0, 0, np.ones((2, 2), bool), 90, 60)
    enc = encoder.encode(second, MaskFormat.RLE)
    decoded = coco_mask.decode({"size": [60, 90], "counts": enc.rle_counts})
    assert decoded.sum() == 4 and decoded[:2, :2].all()


def test_png_is_the_box_region() -> None:
    box_mask, full = sample_mask()
    enc = encode_png(box_mask)
    assert enc.png_origin == (20, 5)
    img = cv2.imdecode(np.frombuffer(enc.png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.ndim == 2 and img.dtype == np.uint8 and set(np.unique(img)) <= {0, 255}
    rebuilt = np.zeros_like(full)
    rebuilt[5 : 5 + img.shape[0], 20 : 20 + img.shape[1]] = img == 255
    np.testing.assert_array_equal(rebuilt, full)


def test_polygons_are_outer_contours_in_image_pixels() -> None:
    box_mask, full = sample_mask()
    enc = encode_polygons(box_mask)
    assert len(enc.polygons) == 2
    canvas = np.zeros(full.shape, np.uint8)
    for poly in enc.polygons:
        assert poly.ndim == 2 and poly.shape[1] == 2 and len(poly) >= 3
        cv2.fillPoly(canvas, [poly.round().astype(np.int32)], 1)
    overlap = (canvas.astype(bool) & full).sum() / (canvas.astype(bool) | full).sum()
    assert overlap > 0.95
    assert enc.area_px == int(full.sum())


def test_empty_masks_encode() -> None:
    empty = BoxMask(3, 4, np.zeros((0, 0), bool), 10, 10)
    assert encode_rle(empty).area_px == 0
    assert encode_polygons(empty).polygons == ()
    assert encode_png(empty).png.startswith(b"\x89PNG")
