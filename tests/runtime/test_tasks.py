"""Classify, pose and oriented-box models through the pipeline: exact decoding on tiny graphs."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.runtime.onnx_builders import constant_model, task_models
from visionrpc.errors import InvalidInputError, ModelLoadError
from visionrpc.runtime import obb
from visionrpc.runtime.classify import centre_crop_uint8
from visionrpc.runtime.imaging import DecodedImage
from visionrpc.runtime.model import OnnxModel
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.repository import ModelRepository
from visionrpc.settings import RuntimeSettings, Settings
from visionrpc.types import InferenceInput, InferenceOptions, Layout, Task


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return task_models(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def pipeline(repo_dir: Path):
    settings = Settings(models_dir=repo_dir, default_model="pose")
    p = InferencePipeline(ModelRepository(settings), settings)
    yield p
    p.shutdown()


def png(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 90, np.uint8))
    assert ok
    return buf.tobytes()


def infer(pipeline: InferencePipeline, model: str, width: int = 128, height: int = 128, **options):
    item = InferenceInput(InferenceOptions(model=model, **options), image_bytes=png(width, height))
    return pipeline.infer_sync(item)


def test_models_report_their_task_and_layout(pipeline: InferencePipeline) -> None:
    described = {d.name: d for d in pipeline.repository.describe_all()}
    assert described["classify"].task is Task.CLASSIFY
    assert described["classify"].layout is Layout.CLASSIFY
    assert described["pose"].task is Task.POSE
    assert described["pose"].keypoint_shape == (2, 3)
    assert described["pose-e2e"].layout is Layout.END2END
    assert described["obb"].task is Task.OBB
    assert described["obb-e2e"].task is Task.OBB
    assert described["obb"].keypoint_shape == ()


@pytest.mark.parametrize("model", ["pose", "pose-e2e"])
def test_pose_keypoints_in_original_pixels(pipeline: InferencePipeline, model: str) -> None:
    # the 64x64 input is the 128x128 image at half size: every coordinate doubles
    result = infer(pipeline, model)
    (det,) = result.detections  # the near copy is suppressed; the e2e row under 0.25 dropped
    assert det.class_name == ("person" if model == "pose" else "robot")
    assert det.score == pytest.approx(0.9)
    assert (det.box.x_min, det.box.y_min, det.box.x_max, det.box.y_max) == pytest.approx(
        (44, 24, 84, 104)
    )
    got = [(k.x, k.y, k.visibility) for k in det.keypoints]
    np.testing.assert_allclose(got, [(60, 40, 0.95), (68, 88, 0.2)], rtol=1e-6)
    assert det.rotated_box is None and det.mask is None


def test_pose_keypoints_follow_the_letterbox_and_are_clipped(tmp_path: Path) -> None:
    out = np.zeros((4 + 1 + 4, 16), np.float32)
    out[:4, 0] = [32, 32, 20, 20]
    out[4, 0] = 0.9
    out[5:, 0] = [10, 32, 70, 5]  # (10, 32) and (70, 5): the second lies outside the image
    constant_model(
        tmp_path / "xy.onnx",
        [out],
        input_size=(64, 64),
        names={0: "hand"},
        task="pose",
        metadata={"kpt_shape": "[2, 2]"},
    )
    settings = Settings(models_dir=tmp_path)
    p = InferencePipeline(ModelRepository(settings), settings)
    try:
        # 256x128 -> 64x32 inside the 64x64 input, padded 16 rows above: x4 after removing pad
        (det,) = infer(p, "xy", 256, 128).detections
    finally:
        p.shutdown()
    got = [(k.x, k.y, k.visibility) for k in det.keypoints]
    np.testing.assert_allclose(got, [(40, 64, 1.0), (256, 0, 1.0)], rtol=1e-6)


def expected_corners(cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    u, v = np.array([w / 2 * c, w / 2 * s]), np.array([-h / 2 * s, h / 2 * c])
    centre = np.array([cx, cy])
    return np.array([centre + u + v, centre + u - v, centre - u - v, centre - u + v])


@pytest.mark.parametrize("model", ["obb", "obb-e2e"])
def test_rotated_boxes_regularised_in_original_pixels(
    pipeline: InferencePipeline, model: str
) -> None:
    result = infer(pipeline, model)
    a, b = result.detections  # A's rotated near copy is suppressed by the rotated NMS
    assert (a.class_name, b.class_name) == ("blade", "shim")
    assert (a.score, b.score) == pytest.approx((0.9, 0.6))
    # A: 30 x 10 at 2.0 rad -> width and height swap, angle 2.0 - pi/2; all doubled
    ra = a.rotated_box
    assert ra is not None
    angle = 2.0 - math.pi / 2
    assert (ra.cx, ra.cy, ra.width, ra.height) == pytest.approx((64, 64, 20, 60), abs=1e-4)
    assert ra.angle_deg == pytest.approx(math.degrees(angle), abs=1e-4)
    corners = expected_corners(64, 64, 20, 60, angle)
    np.testing.assert_allclose(ra.corners, corners, atol=1e-3)
    # the axis-aligned box around it
    assert (a.box.x_min, a.box.y_min) == pytest.approx(tuple(corners.min(axis=0)), abs=1e-3)
    assert (a.box.x_max, a.box.y_max) == pytest.approx(tuple(corners.max(axis=0)), abs=1e-3)
    rb = b.rotated_box
    assert rb is not None
    assert (rb.cx, rb.cy, rb.width, rb.height) == pytest.approx((24, 100, 16, 8), abs=1e-4)
    assert rb.angle_deg == pytest.approx(math.degrees(0.3), abs=1e-4)


def test_rotated_nms_keeps_other_classes_and_agnostic_merges_them() -> None:
    boxes = np.array([[50, 50, 40, 10, 0.2], [50, 50, 40, 10, 0.25], [50, 50, 40, 10, 0.2]])
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    classes = np.array([0, 0, 1])
    assert sorted(obb.rotated_nms(boxes, scores, classes, 0.5).tolist()) == [0, 2]
    assert obb.rotated_nms(boxes, scores, None, 0.5).tolist() == [0]
    # perpendicular boxes barely overlap: both stay
    cross = np.array([[50, 50, 40, 10, 0.0], [50, 50, 40, 10, math.pi / 2]])
    assert sorted(obb.rotated_nms(cross, scores[:2], None, 0.5).tolist()) == [0, 1]


def test_regularize_matches_ultralytics_convention() -> None:
    got = obb.regularize(np.array([[0, 0, 4, 2, -0.5], [0, 0, 4, 2, 1.6], [0, 0, 4, 2, 3.5]]))
    # -0.5: mod pi = 2.64 >= pi/2 -> swap, angle -0.5 mod pi/2 = 1.07
    np.testing.assert_allclose(got[0], [0, 0, 2, 4, -0.5 + math.pi / 2])
    np.testing.assert_allclose(got[1], [0, 0, 2, 4, 1.6 - math.pi / 2])
    np.testing.assert_allclose(got[2], [0, 0, 4, 2, 3.5 - math.pi])


def test_classification_top_k(pipeline: InferencePipeline) -> None:
    result = infer(pipeline, "classify", 300, 200)
    assert result.detections == () and result.defects == ()
    # the default is 5, at most every class; a tie keeps the lower class id first
    got = [(c.class_name, c.class_id) for c in result.classifications]
    assert got == [("scratch", 1), ("spot", 2), ("ok", 0), ("crack", 3)]
    scores = [c.score for c in result.classifications]
    np.testing.assert_allclose(scores, [0.55, 0.25, 0.1, 0.1], rtol=1e-6)
    two = infer(pipeline, "classify", top_k=2).classifications
    assert [c.class_name for c in two] == ["scratch", "spot"]


@pytest.mark.parametrize(
    ("model", "top_k", "message"),
    [
        ("classify", 5, "has 4 classes, send 1..4"),
        ("pose", 3, "top_k is for classification models"),
    ],
)
def test_bad_top_k_is_refused(pipeline: InferencePipeline, model: str, top_k: int, message: str):
    with pytest.raises(InvalidInputError, match=message) as info:
        infer(pipeline, model, top_k=top_k)
    assert info.value.field == "top_k"


def test_classifier_gets_the_centre_crop() -> None:
    # left third red, middle third green, right third blue; 96x32 -> 64 wide and cropped to the
    # middle 32x32... of a 32x32 input: scale 1, crop x 32..64 = the green third
    rgb = np.zeros((32, 96, 3), np.uint8)
    rgb[:, :32, 0] = rgb[:, 32:64, 1] = rgb[:, 64:, 2] = 255
    canvas, transform = centre_crop_uint8(DecodedImage(rgb, 96, 32), (32, 32))
    assert canvas.shape == (32, 32, 3)
    assert (canvas[:, :, 1] == 255).all() and (canvas[:, :, [0, 2]] == 0).all()
    # input pixel (0, 0) is original pixel (32, 0)
    back = transform.boxes_to_original(np.array([[0, 0, 32, 32]], np.float32))
    np.testing.assert_allclose(back, [[32, 0, 64, 32]])
    # an image smaller than the input is scaled up until it covers it
    canvas, _ = centre_crop_uint8(DecodedImage(rgb[:8, :24], 24, 8), (32, 32))
    assert canvas.shape == (32, 32, 3)


def test_task_comes_from_metadata_and_shapes(tmp_path: Path) -> None:
    runtime = RuntimeSettings()
    # a [B, nc] output matching the class names is a classifier even without the task key
    path = constant_model(
        tmp_path / "c.onnx",
        [np.full(3, 1 / 3, np.float32)],
        names={0: "a", 1: "b", 2: "c"},
        metadata={"task": ""},
    )
    assert OnnxModel(path, runtime).task is Task.CLASSIFY
    # a pose model needs its keypoint shape
    pose = np.zeros((4 + 1 + 6, 64), np.float32)
    path = constant_model(tmp_path / "p.onnx", [pose], names={0: "x"}, task="pose")
    with pytest.raises(ModelLoadError, match="kpt_shape"):
        OnnxModel(path, runtime)
    path = constant_model(
        tmp_path / "q.onnx", [pose], names={0: "x"}, task="pose", metadata={"kpt_shape": "[2, 4]"}
    )
    with pytest.raises(ModelLoadError, match=r"expected \[keypoints, 2 or 3\]"):
        OnnxModel(path, runtime)
    # a keypoint shape that does not fit the output names the layout expected
    path = constant_model(
        tmp_path / "r.onnx", [pose], names={0: "x"}, task="pose", metadata={"kpt_shape": "[3, 3]"}
    )
    with pytest.raises(ModelLoadError, match=r"\[B, 4\+nc\+9, N\]"):
        OnnxModel(path, runtime)
    # a classifier whose output does not match its names is refused
    path = constant_model(
        tmp_path / "d.onnx", [np.zeros(4, np.float32)], names={0: "a"}, task="classify"
    )
    with pytest.raises(ModelLoadError, match="4 classes but the metadata names 1"):
        OnnxModel(path, runtime)
