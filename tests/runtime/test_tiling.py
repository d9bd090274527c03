"""Tiling without a model: planning tiles, cutting them, mapping detections to frame pixels and
merging them across tile borders (runtime.tiling)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from visionrpc.errors import InvalidInputError
from visionrpc.runtime.budget import Deadline
from visionrpc.runtime.masks import encode_rle
from visionrpc.runtime.tiling import (
    FrameDetections,
    Tile,
    TileJob,
    TilingSpec,
    axis_starts,
    crop_tile,
    masks_touch,
    merge_detections,
    plan_tiles,
    resolve_tiling,
    tile_detections,
)
from visionrpc.runtime.yolo import BoxMask, DecodeParams, OutputSpec
from visionrpc.types import Layout, Task, TilingMode, TilingOptions

INPUT = (320, 320)
DEFAULTS = TilingOptions(TilingMode.OFF, 0, 0.2, True, 2.0)


def spec(mode: TilingMode = TilingMode.ON, size: int = 320, overlap: float = 0.2) -> TilingSpec:
    return TilingSpec(mode, size, size, overlap, False, 2.0)


# -- planning ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        (320, 320, 64, [0]),  # exactly one tile
        (200, 320, 64, [0]),  # shorter than a tile: one tile as long as the axis
        (576, 320, 64, [0, 256]),  # divisible: step 256
        (1000, 320, 64, [0, 227, 453, 680]),  # not divisible: spread evenly, last ends at 1000
        (641, 320, 0, [0, 160, 321]),  # no overlap asked; rounding leaves some
    ],
)
def test_axis_starts(length: int, tile: int, overlap: int, expected: list[int]) -> None:
    starts = axis_starts(length, tile, overlap)
    assert starts == expected
    assert starts[0] == 0 and starts[-1] + min(tile, length) == max(length, min(tile, length))
    for a, b in itertools.pairwise(starts):
        assert a + tile - b >= overlap  # neighbours share at least the overlap asked for


def test_plan_covers_every_pixel_with_whole_tiles() -> None:
    plan = plan_tiles(1000, 700, spec(), max_tiles=100)
    assert plan is not None
    assert (plan.columns, plan.rows, len(plan.tiles)) == (4, 3, 12)
    covered = np.zeros((700, 1000), np.int32)
    for tile in plan.tiles:
        assert (tile.width, tile.height) == (320, 320)  # no tile hangs over the frame
        covered[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += 1
    assert covered.min() >= 1
    assert [t.index for t in plan.tiles] == list(range(12))
    assert plan.report().tiles == 12 and plan.report().overlap_x == 64


def test_plan_off_and_auto() -> None:
    assert plan_tiles(5000, 4000, spec(TilingMode.OFF), 1000) is None
    assert plan_tiles(640, 640, spec(TilingMode.AUTO), 1000) is None  # 2 tiles long: not > 2
    plan = plan_tiles(641, 300, spec(TilingMode.AUTO), 1000)
    assert plan is not None and plan.rows == 1  # a frame shorter than a tile: one row
    assert plan.tiles[0].height == 300


def test_too_many_tiles_is_refused_naming_the_setting() -> None:
    with pytest.raises(InvalidInputError) as info:
        plan_tiles(5000, 4000, spec(), max_tiles=100)
    message = str(info.value)
    assert "limits.max_tiles" in message and "VISIONRPC_LIMITS__MAX_TILES" in message
    assert "tiling.tile_size" in message  # says what to change


def test_resolve_fills_model_defaults_and_refuses_bad_values() -> None:
    s = resolve_tiling(TilingOptions(), DEFAULTS, (320, 256))
    assert (s.mode, s.tile_width, s.tile_height, s.overlap, s.thumbnail) == (
        TilingMode.OFF,
        320,
        256,
        0.2,
        True,
    )
    s = resolve_tiling(TilingOptions(TilingMode.ON, 640, 0.0, False), DEFAULTS, INPUT)
    assert (s.mode, s.tile_width, s.overlap, s.thumbnail) == (TilingMode.ON, 640, 0.0, False)
    with pytest.raises(InvalidInputError, match=r"tiling\.overlap is 0\.7"):
        resolve_tiling(TilingOptions(overlap=0.7), DEFAULTS, INPUT)
    with pytest.raises(InvalidInputError, match=r"tiling\.overlap"):
        resolve_tiling(TilingOptions(overlap=float("nan")), DEFAULTS, INPUT)
    with pytest.raises(InvalidInputError, match=r"tiling\.tile_size is 8"):
        resolve_tiling(TilingOptions(tile_size=8), DEFAULTS, INPUT)


# -- cutting ----------------------------------------------------------------------------------


def frame(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_a_tile_of_the_input_size_is_a_view_of_the_frame() -> None:
    rgb = frame(1000, 700)
    tile = Tile(5, 227, 190, 320, 320)
    canvas, tr = crop_tile(rgb, tile, (320, 320), INPUT)
    assert np.shares_memory(canvas, rgb)  # no copy, no scaling
    assert np.array_equal(canvas, rgb[190:510, 227:547])
    assert tr.input_to_original == (1.0, 1.0) and (tr.pad_x, tr.pad_y) == (0, 0)


def test_larger_tiles_are_scaled_and_short_ones_padded() -> None:
    rgb = frame(1000, 500)
    canvas, tr = crop_tile(rgb, Tile(0, 0, 0, 640, 500), (640, 640), INPUT)
    assert canvas.shape == (320, 320, 3)
    assert tr.input_to_original == (2.0, 2.0)  # the same scale as a whole 640 tile
    assert (tr.resized_width, tr.resized_height) == (320, 250)
    assert (canvas[250:] == 114).all()  # padded below, not stretched


# -- mapping and merging ----------------------------------------------------------------------

SEG = OutputSpec(Layout.YOLOV8, Task.SEGMENT, num_classes=1, num_masks=1, capacity=4)
PARAMS = DecodeParams(confidence=0.25, iou=0.6, max_detections=100)


def segment_tile_outputs(box: tuple[int, int, int, int]) -> list[np.ndarray]:
    """What a one-class segmentation model says about a tile holding one defect that fills
    ``box`` (tile input pixels, multiples of 4: mask edges fall on proto cell edges)."""
    x0, y0, x1, y1 = box
    pred = np.zeros((4 + 1 + 1, 4), np.float32)
    pred[:4, 0] = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
    pred[4, 0] = 0.9
    pred[5, 0] = 1.0
    protos = np.full((1, 80, 80), -20.0, np.float32)
    protos[0, y0 // 4 : y1 // 4, x0 // 4 : x1 // 4] = 20.0
    return [pred, protos]


def tile_job(rgb: np.ndarray, tile: Tile) -> TileJob:
    canvas, tr = crop_tile(rgb, tile, (320, 320), INPUT)
    h, w = rgb.shape[:2]
    return TileJob(canvas, tr, tile, w, h, PARAMS, Deadline(), 50_000_000)


def test_tile_detections_are_in_frame_pixels_with_their_masks() -> None:
    rgb = frame(1000, 700)
    job = tile_job(rgb, Tile(1, 227, 190, 320, 320))
    found = tile_detections(SEG, job, segment_tile_outputs((40, 100, 120, 140)))
    assert len(found) == 1
    assert found.boxes[0].tolist() == [267, 290, 347, 330]
    mask = found.masks[0]
    assert mask is not None and (mask.x, mask.y) == (267, 290) and mask.mask.shape == (40, 80)
    assert 80 * 40 - 4 <= mask.area <= 80 * 40  # bilinear sampling may round off the corners
    assert (mask.image_width, mask.image_height) == (1000, 700)
    assert not found.cut[0]  # well inside its tile


def test_a_defect_split_by_a_tile_border_is_merged_once_with_its_whole_mask() -> None:
    """A defect at frame x 200..400, y 100..120 crosses the border of tiles 0 (x 0..320) and 1
    (x 256..576): each sees a piece cut by its inner edge; merged, it is one detection whose mask
    is the whole defect, in frame pixels."""
    rgb = frame(576, 320)
    left = tile_detections(
        SEG, tile_job(rgb, Tile(0, 0, 0, 320, 320)), segment_tile_outputs((200, 100, 320, 120))
    )
    right = tile_detections(
        SEG, tile_job(rgb, Tile(1, 256, 0, 320, 320)), segment_tile_outputs((0, 100, 144, 120))
    )
    assert left.cut[0] and right.cut[0]
    merged = merge_detections([left, right], iou=0.6, max_detections=100, agnostic=False)
    assert len(merged) == 1
    (det,) = merged
    assert det.box == (200.0, 100.0, 400.0, 120.0)
    assert det.mask is not None
    rle = encode_rle(det.mask)
    decoded = coco_mask.decode({"size": list(rle.rle_size), "counts": rle.rle_counts})
    assert decoded.shape == (320, 576)
    assert decoded[100:120, 200:400].all(axis=0).sum() >= 198  # no gap where the tiles met
    assert decoded.sum() == decoded[100:120, 200:400].sum() >= 200 * 20 - 4  # nothing outside
    assert det.mask.area == decoded.sum()


def test_pieces_that_only_touch_at_a_border_without_overlap_are_merged() -> None:
    rgb = frame(640, 320)
    left = tile_detections(
        SEG, tile_job(rgb, Tile(0, 0, 0, 320, 320)), segment_tile_outputs((280, 40, 320, 60))
    )
    right = tile_detections(
        SEG, tile_job(rgb, Tile(1, 320, 0, 320, 320)), segment_tile_outputs((0, 40, 60, 60))
    )
    merged = merge_detections([left, right], iou=0.6, max_detections=100, agnostic=False)
    assert [m.box for m in merged] == [(280.0, 40.0, 380.0, 60.0)]


def test_separate_defects_near_a_border_stay_separate() -> None:
    rgb = frame(576, 320)
    left = tile_detections(  # cut by tile 0's right edge
        SEG, tile_job(rgb, Tile(0, 0, 0, 320, 320)), segment_tile_outputs((240, 20, 320, 40))
    )
    right = tile_detections(  # another defect further down, boxes apart
        SEG, tile_job(rgb, Tile(1, 256, 0, 320, 320)), segment_tile_outputs((8, 60, 64, 80))
    )
    merged = merge_detections([left, right], iou=0.6, max_detections=100, agnostic=False)
    assert len(merged) == 2


def test_a_defect_seen_whole_by_two_tiles_is_reported_once() -> None:
    rgb = frame(576, 320)
    # frame x 264..312 lies in both tiles' overlap (256..320), uncut in both
    left = tile_detections(
        SEG, tile_job(rgb, Tile(0, 0, 0, 320, 320)), segment_tile_outputs((264, 100, 312, 120))
    )
    right = tile_detections(
        SEG, tile_job(rgb, Tile(1, 256, 0, 320, 320)), segment_tile_outputs((8, 100, 56, 120))
    )
    assert not left.cut[0] and not right.cut[0]
    merged = merge_detections([left, right], iou=0.6, max_detections=100, agnostic=False)
    assert [m.box for m in merged] == [(264.0, 100.0, 312.0, 120.0)]


def test_masks_touch() -> None:
    a = BoxMask(10, 10, np.ones((4, 4), bool), 100, 100)
    assert masks_touch(a, BoxMask(14, 14, np.ones((2, 2), bool), 100, 100))  # diagonal neighbour
    assert not masks_touch(a, BoxMask(15, 10, np.ones((2, 2), bool), 100, 100))  # a pixel apart
    hollow = np.ones((4, 4), bool)
    hollow[:, 3] = False
    assert not masks_touch(BoxMask(10, 10, hollow, 100, 100), BoxMask(14, 10, a.mask, 100, 100))


def test_detect_models_merge_cut_boxes_that_touch() -> None:
    def part(tile: int, box: list[float], cut: bool) -> FrameDetections:
        return FrameDetections(
            tile,
            np.array([box], np.float32),
            np.array([0.8], np.float32),
            np.array([0]),
            (),
            np.array([cut]),
        )

    merged = merge_detections(
        [part(0, [200, 50, 320, 90], True), part(1, [256, 52, 420, 88], True)],
        iou=0.6,
        max_detections=100,
        agnostic=False,
    )
    assert [m.box for m in merged] == [(200.0, 50.0, 420.0, 90.0)]
    other_class = FrameDetections(
        1,
        np.array([[256, 52, 420, 88]], np.float32),
        np.array([0.8]),
        np.array([1]),
        (),
        np.array([True]),
    )
    apart = merge_detections(
        [part(0, [200, 50, 320, 90], True), other_class],
        iou=0.6,
        max_detections=100,
        agnostic=False,
    )
    assert len(apart) == 2  # classes differ and NMS is per class
