"""Measurements on drawn masks with exact answers, the box fallback, the scale and calibration."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from visionrpc.runtime.measure import class_totals, measure, read_calibration, shape_of
from visionrpc.runtime.yolo import BoxMask
from visionrpc.types import BoxXYXY, Detection


def bar(length: int, width: int, angle_deg: float) -> np.ndarray:
    """A filled rectangle of length x width pixels, rotated, on a canvas with a margin."""
    side = length + 2 * width + 10
    mask = np.zeros((side, side), np.uint8)
    # corners through the centres of the outermost pixels: length x width pixels
    rect = ((side / 2, side / 2), (length - 1, width - 1), angle_deg)
    box = cv2.boxPoints(rect)
    cv2.fillPoly(mask, [np.round(box * 16).astype(np.int32)], 1, shift=4)
    return mask.astype(bool)


def arc(radius: float, sweep_deg: float, width: int) -> tuple[np.ndarray, float]:
    """A curved stroke (a crack-like arc) and its centreline length, radius x sweep."""
    side = int(2 * radius + 4 * width)
    mask = np.zeros((side, side), np.uint8)
    c = side // 2
    cv2.ellipse(mask, (c, c), (round(radius), round(radius)), 0, 0, sweep_deg, 1, width)
    return mask.astype(bool), radius * math.radians(sweep_deg)


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 90.0])
def test_a_straight_bar_measures_its_length_and_width(angle: float) -> None:
    mask = bar(100, 10, angle)
    for method in ("skeleton", "rect"):
        length, width = shape_of(mask, method=method)
        assert length == pytest.approx(100, rel=0.08), method
        assert width == pytest.approx(10, rel=0.1), method


def test_a_curved_stroke_is_measured_along_its_centreline_by_the_skeleton() -> None:
    mask, true_length = arc(60, 180, 8)
    length, width = shape_of(mask, method="skeleton")
    assert length == pytest.approx(true_length, rel=0.06)
    assert width == pytest.approx(8, rel=0.15)
    # the rectangle takes the chord (120 px) and the bulge of the curve for its sides
    rect_length, rect_width = shape_of(mask, method="rect")
    assert rect_length < 0.7 * true_length
    assert rect_width > 5 * 8


def test_a_disc_measures_its_diameter() -> None:
    mask = np.zeros((60, 60), np.uint8)
    cv2.circle(mask, (30, 30), 20, 1, -1)
    length, _ = shape_of(mask.astype(bool))
    assert length == pytest.approx(41, rel=0.1)


def test_coarse_cells_and_large_masks_measure_in_image_pixels() -> None:
    mask = bar(100, 10, 30)
    fine = shape_of(mask)
    # the same shape as a grid of 2 x 2 pixel cells
    coarse = cv2.resize(mask.astype(np.uint8), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    half = shape_of(coarse.astype(bool), cell=2.0)
    assert half[0] == pytest.approx(fine[0], rel=0.06)
    # a mask larger than the measuring grid is reduced first
    big = cv2.resize(mask.astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    length, width = shape_of(big.astype(bool))
    assert length == pytest.approx(400, rel=0.05)
    assert width == pytest.approx(40, rel=0.12)
    assert shape_of(np.zeros((5, 5), bool)) == (0.0, 0.0)


def det(
    box: tuple[float, float, float, float], name: str = "crack", score: float = 0.9
) -> Detection:
    return Detection(BoxXYXY(*box), score, 0, name)


def test_detect_only_models_fall_back_to_the_box_and_mm_follow_the_scale() -> None:
    d = det((10, 20, 70, 35))
    (m,) = (x.measurement for x in measure([d], None, pixels_per_mm=5.0, shape=True))
    assert m is not None and not m.from_mask
    assert (m.area_px, m.length_px, m.width_px) == (900.0, 60.0, 15.0)
    assert (m.area_mm2, m.length_mm, m.width_mm) == pytest.approx((36.0, 12.0, 3.0))
    # no shape asked: area only; no scale: no mm
    (m,) = (x.measurement for x in measure([d], None, pixels_per_mm=None, shape=False))
    assert m is not None and m.length_px is None and m.area_mm2 is None and m.area_px == 900.0


def test_masks_give_their_pixel_area_and_skeleton() -> None:
    mask = bar(100, 10, 0)
    box_mask = BoxMask(5, 5, mask, 200, 200)
    (d,) = measure([det((5, 5, 125, 125))], [box_mask], pixels_per_mm=2.0, shape=True)
    m = d.measurement
    assert m is not None and m.from_mask
    assert m.area_px == float(mask.sum())
    assert m.length_px == pytest.approx(100, rel=0.05)
    assert m.area_mm2 == pytest.approx(mask.sum() / 4)


def test_class_totals_add_up_or_are_unknown() -> None:
    ds = measure([det((0, 0, 10, 2)), det((0, 0, 30, 4))], None, pixels_per_mm=2.0, shape=True)
    assert class_totals(ds) == pytest.approx((35.0, 40.0, 20.0))
    unscaled = measure([det((0, 0, 10, 2))], None, pixels_per_mm=None, shape=False)
    assert class_totals(unscaled) == (None, None, None)
    assert class_totals([det((0, 0, 1, 1))]) == (None, None, None)


def test_calibration_files(tmp_path: Path) -> None:
    direct = tmp_path / "scale.yaml"
    direct.write_text("pixels_per_mm: 12.5\n")
    assert read_calibration(direct) == 12.5
    points = tmp_path / "ruler.json"
    points.write_text('{"points": [[100, 100], [400, 500]], "distance_mm": 50}')
    assert read_calibration(points) == pytest.approx(10.0)  # 500 px over 50 mm
    for text, message in [
        ("pixels_per_mm: -1\n", "must be a number > 0"),
        ("points: [[0, 0]]\ndistance_mm: 5\n", "two \\[x, y\\] pairs"),
        ("points: [[0, 0], [1, 1]]\ndistance_mm: 0\n", "distance_mm must be > 0"),
        ("scale: 3\n", "either pixels_per_mm, or points"),
        ("[1, 2]\n", "must hold a mapping"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_calibration(bad)
    with pytest.raises(ValueError, match="cannot read"):
        read_calibration(tmp_path / "missing.yaml")
