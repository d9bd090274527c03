"""Output layouts, thresholds, class-aware and class-agnostic NMS, end-to-end decoding and
instance masks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.runtime.onnx_builders import yolov8_detect_outputs
from visionrpc.errors import ModelLoadError
from visionrpc.runtime.imaging import DecodedImage, letterbox_uint8
from visionrpc.runtime.yolo import (
    DecodeParams,
    OutputSpec,
    decode_detections,
    detect_layout,
    expected_anchor_count,
    instance_masks,
)
from visionrpc.types import Layout, Task

P = DecodeParams(confidence=0.25, iou=0.5, max_detections=100)


# -- layout detection -----------------------------------------------------------------------


def test_layout_yolov8_detect_and_segment() -> None:
    spec = detect_layout([(1, 84, 2100)], num_classes=80, input_size=(320, 320))
    assert (spec.layout, spec.task, spec.num_classes, spec.capacity) == (
        Layout.YOLOV8,
        Task.DETECT,
        80,
        2100,
    )
    seg = detect_layout(
        [(1, 4 + 3 + 32, 2100), (1, 32, 80, 80)], num_classes=3, input_size=(320, 320)
    )
    assert (seg.layout, seg.task, seg.num_masks) == (Layout.YOLOV8, Task.SEGMENT, 32)


def test_layout_transposed_and_2d() -> None:
    spec = detect_layout([(1, 2100, 7)], num_classes=3, input_size=(320, 320))
    assert spec.layout is Layout.YOLOV8 and spec.transposed and spec.capacity == 2100
    flat = detect_layout([(7, 2100)], num_classes=3, input_size=(320, 320))
    assert not flat.batched and not flat.transposed


def test_layout_end2end_shapes_win_over_metadata() -> None:
    spec = detect_layout([(1, 300, 6)], num_classes=80, input_size=(640, 640), end2end_hint=False)
    assert spec.layout is Layout.END2END and spec.capacity == 300
    seg = detect_layout([(1, 300, 38), (1, 32, 160, 160)], num_classes=80, input_size=(640, 640))
    assert seg.layout is Layout.END2END and seg.task is Task.SEGMENT
    wrong_hint = detect_layout(
        [(1, 84, 8400)], num_classes=80, input_size=(640, 640), end2end_hint=True
    )
    assert wrong_hint.layout is Layout.YOLOV8


def test_layout_two_classes_is_ambiguous_and_resolved() -> None:
    anchors = expected_anchor_count((320, 320))
    assert anchors == 2100
    # [B, N, 6] with N = anchor count: a transposed YOLOv8 head, whatever the metadata says
    spec = detect_layout([(1, 2100, 6)], num_classes=2, input_size=(320, 320), end2end_hint=True)
    assert spec.layout is Layout.YOLOV8 and spec.transposed
    spec = detect_layout([(1, 300, 6)], num_classes=2, input_size=(320, 320), end2end_hint=True)
    assert spec.layout is Layout.END2END
    spec = detect_layout([(1, 6, 2100)], num_classes=2, input_size=(320, 320))
    assert spec.layout is Layout.YOLOV8 and not spec.transposed


def test_layout_without_class_names() -> None:
    spec = detect_layout([(1, 9, 2100)], num_classes=None, input_size=(320, 320))
    assert spec.num_classes == 5


def test_layout_unsupported() -> None:
    with pytest.raises(ModelLoadError, match="unsupported YOLO output layout"):
        detect_layout([(1, 50, 2100)], num_classes=80, input_size=(320, 320))
    with pytest.raises(ModelLoadError, match="output0 shape"):
        detect_layout([(1, 2, 3, 4, 5)], num_classes=1, input_size=(320, 320))


# -- YOLOv8 decoding ------------------------------------------------------------------------


def spec_for(nc: int, n: int = 64) -> OutputSpec:
    return OutputSpec(Layout.YOLOV8, Task.DETECT, nc, 0, n)


def test_nms_is_class_aware() -> None:
    out = yolov8_detect_outputs(
        [(50, 50, 20, 20), (51, 50, 20, 20), (50, 51, 20, 20), (150, 150, 10, 10)],
        classes=[0, 0, 1, 0],
        scores=[0.9, 0.8, 0.7, 0.6],
        num_classes=2,
    )
    det = decode_detections([out], spec_for(2), P)
    assert det.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert det.class_ids.tolist() == [0, 1, 0]
    np.testing.assert_allclose(det.boxes[0], [40, 40, 60, 60])


def test_confidence_class_filter_and_max_detections() -> None:
    boxes = [(20.0 * i + 10, 10, 8, 8) for i in range(6)]
    out = yolov8_detect_outputs(
        boxes, classes=[0, 1, 2, 0, 1, 2], scores=[0.3, 0.9, 0.5, 0.8, 0.2, 0.6], num_classes=3
    )
    det = decode_detections([out], spec_for(3), DecodeParams(0.5, 0.5, 100))
    assert det.scores.tolist() == pytest.approx([0.9, 0.8, 0.6, 0.5])
    det = decode_detections([out], spec_for(3), DecodeParams(0.25, 0.5, 100, frozenset({2})))
    assert det.class_ids.tolist() == [2, 2]
    det = decode_detections([out], spec_for(3), DecodeParams(0.25, 0.5, 2))
    assert det.scores.tolist() == pytest.approx([0.9, 0.8])
    det = decode_detections([out], spec_for(3), DecodeParams(0.95, 0.5, 100))
    assert len(det) == 0 and det.boxes.shape == (0, 4)


def test_transposed_output_decodes_the_same() -> None:
    out = yolov8_detect_outputs([(30, 40, 10, 20)], [1], [0.7], num_classes=2)
    spec = OutputSpec(Layout.YOLOV8, Task.DETECT, 2, 0, 64, transposed=True)
    det = decode_detections([out.T.copy()], spec, P)
    np.testing.assert_allclose(det.boxes, [[25, 30, 35, 50]])


def test_many_candidates_are_vectorised() -> None:
    rng = np.random.default_rng(0)
    n = 8400
    out = np.zeros((4 + 80, n), np.float32)
    out[:2] = rng.uniform(0, 640, (2, n))
    out[2:4] = rng.uniform(5, 60, (2, n))
    out[4:] = rng.uniform(0, 1, (80, n))
    det = decode_detections([out], spec_for(80, n), DecodeParams(0.001, 0.7, 300))
    assert len(det) == 300 and (np.diff(det.scores) <= 0).all()


def test_agnostic_nms_keeps_the_best_of_overlapping_boxes_of_any_class() -> None:
    # one thin defect seen as class 0 and class 1 (box IoU 0.82), and a separate one elsewhere
    out = yolov8_detect_outputs(
        [(50, 50, 20, 20), (52, 50, 20, 20), (150, 150, 10, 10)],
        classes=[0, 1, 1],
        scores=[0.8, 0.9, 0.6],
        num_classes=2,
    )
    aware = decode_detections([out], spec_for(2), P)
    assert aware.class_ids.tolist() == [1, 0, 1]
    assert aware.scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    agnostic = decode_detections([out], spec_for(2), replace(P, agnostic=True))
    assert agnostic.class_ids.tolist() == [1, 1]
    assert agnostic.scores.tolist() == pytest.approx([0.9, 0.6])
    np.testing.assert_allclose(agnostic.boxes[0], [42, 40, 62, 60])
    # boxes overlapping less than the IoU threshold are both kept
    loose = decode_detections([out], spec_for(2), replace(P, agnostic=True, iou=0.9))
    assert loose.class_ids.tolist() == [1, 0, 1]


# -- end-to-end decoding --------------------------------------------------------------------


def test_end2end_filters_without_nms() -> None:
    rows = np.zeros((10, 6), np.float32)
    rows[0] = [10, 10, 50, 50, 0.9, 3]
    rows[1] = [11, 11, 50, 50, 0.8, 3]  # overlapping, same class: kept (no NMS)
    rows[2] = [0, 0, 5, 5, 0.4, 1]
    rows[3] = [0, 0, 9, 9, 0.95, 2]
    spec = OutputSpec(Layout.END2END, Task.DETECT, 4, 0, 10)
    det = decode_detections([rows], spec, DecodeParams(0.5, 0.5, 100))
    assert det.scores.tolist() == pytest.approx([0.95, 0.9, 0.8])
    assert det.class_ids.tolist() == [2, 3, 3]
    np.testing.assert_allclose(det.boxes[1], [10, 10, 50, 50])
    det = decode_detections([rows], spec, DecodeParams(0.3, 0.5, 2, frozenset({3, 1})))
    assert det.class_ids.tolist() == [3, 3]


def test_end2end_agnostic_nms_pass() -> None:
    rows = np.zeros((10, 6), np.float32)
    rows[0] = [10, 10, 50, 50, 0.7, 0]
    rows[1] = [12, 10, 52, 50, 0.9, 1]  # the same defect under another class (IoU 0.9)
    rows[2] = [100, 100, 120, 120, 0.5, 0]
    spec = OutputSpec(Layout.END2END, Task.DETECT, 2, 0, 10)
    aware = decode_detections([rows], spec, P)
    assert aware.class_ids.tolist() == [1, 0, 0]
    agnostic = decode_detections([rows], spec, replace(P, agnostic=True))
    assert agnostic.class_ids.tolist() == [1, 0]
    assert agnostic.scores.tolist() == pytest.approx([0.9, 0.5])
    np.testing.assert_allclose(agnostic.boxes, [[12, 10, 52, 50], [100, 100, 120, 120]])
    # max_detections counts what is left after the pass
    one = decode_detections([rows], spec, replace(P, agnostic=True, max_detections=2))
    assert one.scores.tolist() == pytest.approx([0.9, 0.5])


# -- masks ----------------------------------------------------------------------------------


def square_protos(mh: int, mw: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Proto 0 is +20 inside rows y0:y1 / cols x0:x1 and -20 elsewhere; proto 1 is all +20."""
    protos = np.full((2, mh, mw), -20.0, np.float32)
    protos[0, y0:y1, x0:x1] = 20.0
    protos[1] = 20.0
    return protos


def test_mask_follows_protos_inside_the_box() -> None:
    # input 320x320, protos 80x80 (stride 4), original 640x640 -> 8 original px per proto cell
    _, tr = letterbox_uint8(DecodedImage(np.zeros((640, 640, 3), np.uint8), 640, 640), (320, 320))
    protos = square_protos(80, 80, 10, 20, 10, 30)  # input px x 40..120, y 40..80
    box_in = np.array([[0, 0, 320, 320]], np.float32)
    masks = instance_masks(np.array([[1.0, 0.0]]), protos, box_in, tr.boxes_to_original(box_in), tr)
    m = masks[0]
    assert (m.x, m.y, m.mask.shape) == (0, 0, (640, 640))
    ys, xs = np.nonzero(m.mask)
    assert abs(xs.min() - 80) <= 2 and abs(xs.max() - 239) <= 2
    assert abs(ys.min() - 80) <= 2 and abs(ys.max() - 159) <= 2
    assert abs(m.area - 160 * 80) <= 0.05 * 160 * 80


def test_mask_is_cropped_to_the_box_through_the_letterbox() -> None:
    # original 400x200 -> scale 0.8, resized 320x160, pad_y 80
    _, tr = letterbox_uint8(DecodedImage(np.zeros((200, 400, 3), np.uint8), 400, 200), (320, 320))
    assert (tr.pad_x, tr.pad_y) == (0, 80)
    protos = square_protos(80, 80, 0, 80, 0, 80)  # everything "on" for proto 0
    box_in = np.array([[40, 120, 120, 200]], np.float32)  # original x 50..150, y 50..150
    box_orig = tr.boxes_to_original(box_in)
    np.testing.assert_allclose(box_orig, [[50, 50, 150, 150]])
    m = instance_masks(np.array([[1.0, 0.0]]), protos, box_in, box_orig, tr)[0]
    assert (m.x, m.y) == (50, 50) and m.mask.shape == (100, 100)
    assert m.mask.mean() > 0.97  # full box, crop edges only lose a pixel row/column
    assert m.image_width == 400 and m.image_height == 200


def test_mask_region_maps_to_original_pixels() -> None:
    # original 400x200; proto region cols 20..40, rows 30..40 -> input x 80..160, y 120..160
    # -> original x 100..200, y 50..100
    _, tr = letterbox_uint8(DecodedImage(np.zeros((200, 400, 3), np.uint8), 400, 200), (320, 320))
    protos = square_protos(80, 80, 30, 40, 20, 40)
    box_in = np.array([[0, 80, 320, 240]], np.float32)
    m = instance_masks(np.array([[1.0, 0.0]]), protos, box_in, tr.boxes_to_original(box_in), tr)[0]
    ys, xs = np.nonzero(m.mask)
    assert abs(xs.min() + m.x - 100) <= 2 and abs(xs.max() + m.x - 199) <= 2
    assert abs(ys.min() + m.y - 50) <= 2 and abs(ys.max() + m.y - 99) <= 2


def test_layout_small_end2end_head_has_as_many_rows_as_anchors() -> None:
    # a YOLO26 pose head (2 classes, 5x3 keypoints) at 64 px: min(max_det, anchors) = 84 rows
    kpts = (5, 3)
    shape = [(1, 84, 6 + 15)]
    hinted = detect_layout(
        shape,
        num_classes=2,
        input_size=(64, 64),
        end2end_hint=True,
        task_hint=Task.POSE,
        keypoint_shape=kpts,
    )
    assert hinted.layout is Layout.END2END and hinted.capacity == 84
    plain = detect_layout(
        shape, num_classes=2, input_size=(64, 64), task_hint=Task.POSE, keypoint_shape=kpts
    )
    assert plain.layout is Layout.YOLOV8 and plain.transposed
