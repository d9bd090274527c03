"""annotate: wire masks back to pixels, and drawings that land where the detections are."""

from __future__ import annotations

import numpy as np
import pytest

from visionrpc.annotate import color_for, decode_mask, draw
from visionrpc.runtime.masks import encode_png, encode_polygons, encode_rle
from visionrpc.runtime.yolo import BoxMask
from visionrpc.types import BoxXYXY, Detection, EncodedMask, InferenceResult, MaskFormat

H, W = 60, 80


def box_mask() -> tuple[BoxMask, np.ndarray]:
    """An L-shaped mask in the box x 20..50, y 10..40, and the same mask over the whole image."""
    region = np.zeros((30, 30), bool)
    region[:, :10] = True
    region[20:, :] = True
    full = np.zeros((H, W), bool)
    full[10:40, 20:50] = region
    return BoxMask(mask=region, x=20, y=10, image_width=W, image_height=H), full


def result_with(*detections: Detection) -> InferenceResult:
    return InferenceResult(
        model="m",
        model_version="1",
        image_width=W,
        image_height=H,
        detections=detections,
        defects=(),
    )


@pytest.mark.parametrize("encode", [encode_rle, encode_png, encode_polygons])
def test_decode_mask_gives_back_the_encoded_pixels(encode) -> None:
    bm, full = box_mask()
    decoded = decode_mask(encode(bm), H, W)
    assert decoded.shape == (H, W) and decoded.dtype == bool
    assert np.array_equal(decoded, full)


def test_decode_png_mask_clips_at_the_image_border() -> None:
    bm, _ = box_mask()
    png = encode_png(bm)
    moved = EncodedMask(
        format=MaskFormat.PNG, area_px=png.area_px, png=png.png, png_origin=(70, 50)
    )
    decoded = decode_mask(moved, H, W)
    assert decoded[50:, 70:].any() and not decoded[:50].any() and not decoded[:, :70].any()
    broken = EncodedMask(format=MaskFormat.PNG, area_px=1, png=b"not a png")
    with pytest.raises(ValueError, match="PNG"):
        decode_mask(broken, H, W)


def test_draw_marks_boxes_and_masks_and_leaves_the_input_alone() -> None:
    image = np.full((H, W, 3), 128, np.uint8)
    bm, full = box_mask()
    with_mask = Detection(BoxXYXY(20, 10, 50, 40), 0.9, 0, "scratch", mask=encode_rle(bm))
    box_only = Detection(BoxXYXY(60, 45, 75, 58), 0.6, 1, "spot")
    drawn = draw(image, result_with(with_mask, box_only))
    assert np.all(image == 128)  # a copy is drawn on
    changed = np.any(drawn != image, axis=2)
    # the mask is tinted with its class colour (away from the outline and the label on top)
    inner = np.zeros((H, W), bool)
    inner[17:39, 22:49] = True
    tint = (0.55 * 128 + 0.45 * np.array(color_for(0))).astype(np.uint8)
    assert np.all(drawn[full & inner] == tint)
    assert np.all(drawn[~full & inner] == 128)
    # box outlines are drawn, far-away pixels stay as they were
    assert changed[10, 20:50].any() and changed[45:58, 60].any() and changed[58, 60:75].any()
    assert not changed[50:, :10].any() and not changed[25:35, 55:58].any()
    assert changed[10:40, 20:50].mean() > 0.3


def test_draw_without_detections_is_a_plain_copy() -> None:
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)
    drawn = draw(image, result_with())
    assert np.array_equal(drawn, image) and drawn is not image
