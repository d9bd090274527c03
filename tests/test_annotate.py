"""annotate: wire masks back to pixels, and drawings that land where the detections are."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from visionrpc.annotate import (
    BANNER_MAX_HITS,
    IGNORE_ZONE_COLOR,
    PALETTE,
    VERDICT_COLORS,
    ZONE_COLOR,
    banner_lines,
    color_for,
    contrast_ratio,
    decode_mask,
    draw,
    layout_labels,
    text_color_for,
)
from visionrpc.inspection import size_text
from visionrpc.runtime.masks import encode_png, encode_polygons, encode_rle
from visionrpc.runtime.yolo import BoxMask
from visionrpc.types import (
    BoxXYXY,
    Detection,
    EncodedMask,
    InferenceResult,
    InspectionVerdict,
    MaskFormat,
    Measurement,
    Metric,
    Rule,
    RuleHit,
    RuleSet,
    Verdict,
)

H, W = 60, 80


def box_mask() -> tuple[BoxMask, np.ndarray]:
    """An L-shaped mask in the box x 20..50, y 10..40, and the same mask over the whole image."""
    region = np.zeros((30, 30), bool)
    region[:, :10] = True
    region[20:, :] = True
    full = np.zeros((H, W), bool)
    full[10:40, 20:50] = region
    return BoxMask(mask=region, x=20, y=10, image_width=W, image_height=H), full


def result_with(*detections: Detection, height: int = H, width: int = W) -> InferenceResult:
    return InferenceResult(
        model="m",
        model_version="1",
        image_width=width,
        image_height=height,
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
    result = result_with(with_mask, box_only)
    drawn = draw(image, result)
    assert np.all(image == 128)  # a copy is drawn on
    changed = np.any(drawn != image, axis=2)
    # the mask is tinted with its class colour (away from the outline and the labels)
    inner = np.zeros((H, W), bool)
    inner[12:39, 22:49] = True
    for label in layout_labels(result, H, W):
        inner[label.y0 : label.y1, label.x0 : label.x1] = False
    assert inner[full].sum() > 50 and inner[~full].sum() > 50
    tint = (0.55 * 128 + 0.45 * np.array(color_for(0))).astype(np.uint8)
    assert np.all(drawn[full & inner] == tint)
    assert np.all(drawn[~full & inner] == 128)
    # box outlines are drawn, far-away pixels stay as they were
    assert changed[10, 20:50].any() and changed[45:58, 60].any() and changed[58, 60:75].any()
    assert not changed[50:, :10].any()
    assert changed[10:40, 20:50].mean() > 0.3


def test_draw_without_detections_is_a_plain_copy() -> None:
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)
    drawn = draw(image, result_with())
    assert np.array_equal(drawn, image) and drawn is not image


def test_neighbouring_class_colours_are_clearly_different() -> None:
    colours = np.array([color_for(i) for i in range(len(PALETTE))], float)
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 100  # any two of the first twelve class ids, not only neighbours


def test_label_text_contrasts_with_its_background() -> None:
    for colour in PALETTE:
        assert contrast_ratio(text_color_for(colour), colour) >= 4.5, colour


def test_labels_of_overlapping_boxes_do_not_cover_each_other() -> None:
    height, width = 240, 320
    image = np.full((height, width, 3), 90, np.uint8)
    detections = (
        Detection(BoxXYXY(40, 4, 200, 150), 0.91, 0, "scratch"),  # at the top: no room above
        Detection(BoxXYXY(44, 8, 204, 154), 0.87, 2, "crack"),  # almost the same box
        Detection(BoxXYXY(42, 6, 202, 152), 0.55, 1, "spot"),
    )
    result = result_with(*detections, height=height, width=width)
    labels = layout_labels(result, height, width)
    assert [label.text for label in labels] == ["scratch 0.91", "crack 0.87", "spot 0.55"]
    for i, a in enumerate(labels):
        assert 0 <= a.x0 < a.x1 <= width and 0 <= a.y0 < a.y1 <= height, a
        for b in labels[i + 1 :]:
            assert not a.overlaps(b), (a, b)
            # the rectangles really are apart: no shared pixel
            assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0
    drawn = draw(image, result)
    for det, label in zip(detections, labels, strict=True):
        patch = drawn[label.y0 : label.y1, label.x0 : label.x1].reshape(-1, 3)
        background = color_for(det.class_id)
        # the label is filled with its class colour and carries text in the contrasting colour
        assert (patch == background).all(axis=1).mean() > 0.5, label
        assert (patch == text_color_for(background)).all(axis=1).any(), label


# -- every Ultralytics task (issue 13 item 4) ------------------------------------------------


def test_rotated_boxes_are_drawn_along_their_corners() -> None:
    from visionrpc.types import RotatedBox

    corners = ((40.0, 10.0), (70.0, 30.0), (40.0, 50.0), (10.0, 30.0))  # a diamond
    rotated = RotatedBox(40, 30, 36, 36, 33.7, corners)
    det = Detection(BoxXYXY(10, 10, 70, 50), 0.9, 0, "blade", rotated_box=rotated)
    canvas = draw(np.zeros((H, W, 3), np.uint8), result_with(det))
    assert canvas[30, 10].any() and canvas[20, 55].any()  # on the diamond's edges
    assert not canvas[48, 12].any() and not canvas[48, 68].any()  # the bounding box's corners


def test_visible_keypoints_are_dots() -> None:
    from visionrpc.types import Keypoint

    det = Detection(
        BoxXYXY(0, 0, 1, 1),
        0.9,
        0,
        "hand",
        keypoints=(Keypoint(30, 45, 0.9), Keypoint(60, 45, 0.1)),
    )
    canvas = draw(np.zeros((H, W, 3), np.uint8), result_with(det))
    assert tuple(canvas[45, 30]) == color_for(0)  # keypoint 0 in the colour of index 0
    assert not canvas[45, 60].any()  # not visible enough: not drawn


def test_classifications_are_listed_at_the_top_left() -> None:
    from visionrpc.types import Classification

    result = InferenceResult(
        model="m",
        model_version="1",
        image_width=W,
        image_height=H,
        detections=(),
        defects=(),
        classifications=(Classification(1, "scratch", 0.7), Classification(0, "ok", 0.2)),
    )
    canvas = draw(np.zeros((H, W, 3), np.uint8), result)
    assert canvas[:8, :4].any()  # the first label's background
    assert not canvas[40:, :].any()  # two short lines only


# -- verdicts, measurements and zones ------------------------------------------------------------

BH, BW = 200, 400


def judged(verdict: Verdict, *hits: RuleHit) -> InferenceResult:
    crack = Detection(
        BoxXYXY(100, 120, 180, 150),
        0.9,
        2,
        "crack",
        measurement=Measurement(area_px=300.0, length_px=41.0, length_mm=4.1, area_mm2=3.0),
    )
    base = result_with(crack, height=BH, width=BW)
    return replace(base, verdict=InspectionVerdict(verdict, hits), pixels_per_mm=10.0)


CRACK_HIT = RuleHit("crack-long", Verdict.FAIL, Metric.LENGTH_MM, 4.1, "crack", 2.0, None, 0)
COUNT_HIT = RuleHit("many", Verdict.REVIEW, Metric.COUNT, 1.0, "", 1.0, None, None)


def ink_rows(band: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Rows of ``band`` with pixels that are not the background (text)."""
    return np.flatnonzero(np.any(np.any(band != background, axis=2), axis=1))


@pytest.mark.parametrize("verdict", list(Verdict))
def test_verdict_banner_above_the_image_in_the_verdicts_colour(verdict: Verdict) -> None:
    image = np.full((BH, BW, 3), 128, np.uint8)
    hits = (CRACK_HIT, COUNT_HIT) if verdict is not Verdict.PASS else ()
    result = judged(verdict, *hits)
    drawn = draw(image, result)
    extra = drawn.shape[0] - BH
    assert extra > 0 and drawn.shape[1:] == (BW, 3)
    # the image itself is drawn below the banner exactly as without a verdict
    assert np.array_equal(drawn[extra:], draw(image, replace(result, verdict=None)))
    banner = drawn[:extra]
    color = VERDICT_COLORS[verdict]
    assert np.all(banner == color, axis=2).mean() > 0.6  # mostly the verdict's colour
    # one line of text per entry: the verdict, then each fired rule
    lines = banner_lines(result)
    assert len(lines) == 1 + len(hits)
    assert lines[0].startswith(verdict.value)
    rows = ink_rows(banner, color)
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    assert len(bands) == len(lines)


def test_banner_names_each_fired_rule_with_value_and_bounds() -> None:
    lines = banner_lines(judged(Verdict.FAIL, CRACK_HIT, COUNT_HIT))
    assert lines == [
        "FAIL: 2 rule hit(s)",
        "crack-long (FAIL): crack #0 length_mm 4.1 >= 2",
        "many (REVIEW): all count 1 >= 1",
    ]
    many = [replace(CRACK_HIT, detection=i) for i in range(BANNER_MAX_HITS + 3)]
    lines = banner_lines(judged(Verdict.FAIL, *many))
    assert len(lines) == 1 + BANNER_MAX_HITS + 1 and lines[-1] == "... 3 more"


def test_labels_carry_the_measured_size() -> None:
    result = judged(Verdict.PASS)
    [label] = layout_labels(result, BH, BW)
    assert label.text == "crack 0.90 4.1 mm"
    unscaled = replace(result.detections[0], measurement=Measurement(area_px=300.0, length_px=41.0))
    assert size_text(unscaled) == "41 px"
    assert size_text(replace(unscaled, measurement=Measurement(area_px=12.0))) == "12 px2"
    assert size_text(replace(unscaled, measurement=None)) == ""


def test_zones_are_outlined_in_their_colours() -> None:
    image = np.full((BH, BW, 3), 128, np.uint8)
    zone = ((20.0, 20.0), (380.0, 20.0), (380.0, 100.0), (20.0, 100.0))
    ignored = ((250.0, 130.0), (350.0, 130.0), (350.0, 190.0))
    rules = RuleSet(
        rules=(Rule("r", Metric.COUNT, Verdict.FAIL, minimum=1),),
        zones=(("seal", zone),),
        ignore_zones=(ignored,),
    )
    drawn = draw(image, result_with(height=BH, width=BW), rules=rules)
    assert drawn.shape == image.shape  # no verdict, no banner
    assert np.all(drawn[60, 20] == ZONE_COLOR) and np.all(drawn[100, 200] == ZONE_COLOR)
    assert np.all(drawn[130, 300] == IGNORE_ZONE_COLOR)
    assert np.all(drawn[60, 200] == 128)  # inside is left alone
    # the zone's name is written inside its top-left corner
    corner = drawn[22:40, 22:80]
    assert np.any(np.all(corner == ZONE_COLOR, axis=2))
