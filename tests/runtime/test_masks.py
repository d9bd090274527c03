"""Mask encodings: COCO RLE round trip, box-region PNG and outer polygons."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from visionrpc.runtime.masks import MaskEncoder, encode_png, encode_polygons, encode_rle
from visionrpc.runtime.yolo import BoxMask
from visionrpc.types import MaskFormat


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


@pytest.mark.parametrize("seed", range(20))
def test_rle_matches_pycocotools_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    H, W = (int(v) for v in rng.integers(1, 40, 2))
    x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
    w, h = int(rng.integers(1, W - x + 1)), int(rng.integers(1, H - y + 1))
    region = rng.random((h, w)) < rng.choice([0.0, 0.3, 0.9, 1.0])
    full = np.zeros((H, W), np.uint8, order="F")
    full[y : y + h, x : x + w] = region
    expected = coco_mask.encode(full)["counts"].decode()
    enc = MaskEncoder(W, H).encode(BoxMask(x, y, region, W, H), MaskFormat.RLE)
    assert enc.rle_counts == expected and enc.rle_size == (H, W)


def test_png_is_the_box_region() -> None:
    box_mask, full = sample_mask()
    enc = encode_png(box_mask)
    assert enc.png_origin == (20, 5)
    img = cv2.imdecode(np.frombuffer(enc.png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None
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
