"""Real Ultralytics exports of every task served by a real server, compared with the predictions
Ultralytics' own predictor made on the same ONNX files and images when they were exported.

The fixtures (tests/fixtures/tasks/) are tiny random-weight models made by
training/export_task_fixtures.py; see the README there. Decoding has to agree with Ultralytics'
(the same boxes, keypoints, angles, classes and scores), not be accurate.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.helpers import StartServer, make_settings
from visionrpc.client import AsyncClient, InferenceResult, RotatedBox
from visionrpc.server.inference_servicer import InferenceServicer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tasks"
EXPECTED = {path.name.removesuffix(".expected.json"): path for path in FIXTURES.glob("*.json")}
PIXELS = 1e-2  # boxes, centres, sizes and keypoints: original-image pixels
SCORE = 1e-4  # a random network amplifies one-ulp input differences
DEGREES = 1e-3


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXPECTED[name].read_text())
    return data


def test_every_task_has_a_real_export() -> None:
    tasks = {load(name)["task"] for name in EXPECTED}
    assert tasks == {"classify", "pose", "obb"}
    for name in EXPECTED:
        assert (FIXTURES / f"{name}.onnx").stat().st_size < 1_000_000


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixtures")
    for name in EXPECTED:
        folder = root / name
        folder.mkdir()
        shutil.copy(FIXTURES / f"{name}.onnx", folder / "model.onnx")
        # Ultralytics' thresholds are the model's defaults, so a request names none
        spec = load(name)
        (folder / "model.yaml").write_text(
            f"confidence_threshold: {spec['confidence']}\niou_threshold: {spec['iou']}\n"
        )
    return root


@pytest.fixture
async def client(start_server: StartServer, models: Path) -> AsyncIterator[AsyncClient]:
    overrides = {"models_dir": models, "access_log": False, "default_model": sorted(EXPECTED)[0]}
    running = await start_server([InferenceServicer(make_settings(**overrides))], **overrides)
    async with AsyncClient(running.address, timeout=20) as c:
        yield c


def regularize(xywhr: np.ndarray) -> np.ndarray:
    """Ultralytics' regularize_rboxes: angle in [0, pi/2), sides swapped where it said so."""
    out = xywhr.copy()
    swap = np.mod(out[:, 4], np.pi) >= np.pi / 2
    out[swap, 2], out[swap, 3] = xywhr[swap, 3], xywhr[swap, 2]
    out[:, 4] = np.mod(out[:, 4], np.pi / 2)
    return out


def rect(box: Any) -> Any:
    """An OpenCV RotatedRect of an (cx, cy, w, h, radians) box."""
    return ((box[0], box[1]), (box[2], box[3]), float(np.degrees(box[4])))


def xywhr(r: RotatedBox) -> list[float]:
    return [r.cx, r.cy, r.width, r.height, float(np.radians(r.angle_deg))]


def same_as_ultralytics_nms(result: InferenceResult, expected: dict[str, Any]) -> InferenceResult:
    """Ours, less the boxes the two rotated NMS treat differently, checked one by one.

    Ultralytics' Fast-NMS also drops boxes whose suppressor was itself suppressed (greedy NMS, the
    server's, keeps them); OpenCV's counts a box lying wholly inside a better one of its class as
    overlapping fully. So each of Ultralytics' boxes must be ours, in the same order, or lie inside
    a better box of ours of its class; ours that are not Ultralytics' are left out.
    """
    dets, kept, at = result.detections, [], 0

    def same(d: Any, cls: int, score: float, box: Any) -> bool:
        r = d.rotated_box
        return bool(
            d.class_id == cls
            and abs(d.score - score) < SCORE
            and abs(r.cx - box[0]) < PIXELS
            and abs(r.cy - box[1]) < PIXELS
        )

    for cls, score, box in zip(
        expected["classes"], expected["scores"], expected["xywhr"], strict=True
    ):
        found = next((i for i in range(at, len(dets)) if same(dets[i], cls, score, box)), None)
        if found is not None:
            kept.append(dets[found])
            at = found + 1
            continue
        inside = [
            d
            for d in dets
            if d.class_id == cls
            and d.score > score
            and d.rotated_box is not None
            and cv2.rotatedRectangleIntersection(rect(box), rect(xywhr(d.rotated_box)))[0]
            == cv2.INTERSECT_FULL
        ]
        assert inside, f"Ultralytics' box {box} (class {cls}, {score:.4f}) is not ours"
    return dataclasses.replace(result, detections=tuple(kept))


def check_rotated_subset(result: InferenceResult, expected: dict[str, Any]) -> None:
    """:func:`check` for the boxes both NMS keep (see :func:`same_as_ultralytics_nms`)."""
    matched = same_as_ultralytics_nms(result, expected)
    keep = [
        i
        for i, (cls, score) in enumerate(zip(expected["classes"], expected["scores"], strict=True))
        if any(d.class_id == cls and abs(d.score - score) < SCORE for d in matched.detections)
    ]
    subset = {k: [v[i] for i in keep] for k, v in expected.items()}
    assert len(keep) >= len(expected["scores"]) // 2
    check(matched, subset, "obb")


def check(result: InferenceResult, expected: dict[str, Any], task: str) -> None:
    if task == "classify":
        got = [(c.class_id, c.score) for c in result.classifications]
        want = expected["top"]
        assert [c for c, _ in got] == [c for c, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=SCORE)
        return
    dets = result.detections
    assert [d.class_id for d in dets] == expected["classes"]
    np.testing.assert_allclose([d.score for d in dets], expected["scores"], atol=SCORE)
    if task == "pose":
        boxes = [(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max) for d in dets]
        np.testing.assert_allclose(
            np.reshape(boxes, (-1, 4)), np.reshape(expected["boxes"], (-1, 4)), atol=PIXELS
        )
        points = [[(k.x, k.y, k.visibility) for k in d.keypoints] for d in dets]
        want_kpts = np.asarray(expected["keypoints"], np.float64)
        got_kpts = np.asarray(points, np.float64).reshape(want_kpts.shape[0], -1, 3)
        np.testing.assert_allclose(got_kpts[..., :2], want_kpts[..., :2], atol=PIXELS)
        if want_kpts.shape[2] == 3:
            np.testing.assert_allclose(got_kpts[..., 2], want_kpts[..., 2], atol=SCORE)
        else:  # no visibility in the model: every point reads as visible
            assert np.all(got_kpts[..., 2] == 1.0)
        return
    rotated = [d.rotated_box for d in dets]
    assert all(r is not None for r in rotated)
    got_boxes = np.asarray(
        [(r.cx, r.cy, r.width, r.height, np.radians(r.angle_deg)) for r in rotated if r],
        np.float64,
    ).reshape(-1, 5)
    want_boxes = regularize(np.asarray(expected["xywhr"], np.float64).reshape(-1, 5))
    np.testing.assert_allclose(got_boxes[:, :4], want_boxes[:, :4], atol=PIXELS)
    np.testing.assert_allclose(
        np.degrees(got_boxes[:, 4]), np.degrees(want_boxes[:, 4]), atol=DEGREES
    )
    # the same four corners (regularising may start the ring at another corner)
    for r, corners in zip(rotated, expected["corners"], strict=True):
        assert r is not None
        ours = np.asarray(r.corners)
        theirs = np.asarray(corners)
        distance = np.linalg.norm(ours[:, None, :] - theirs[None, :, :], axis=2).min(axis=1)
        assert distance.max() < PIXELS


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_decoding_matches_ultralytics(client: AsyncClient, name: str) -> None:
    spec = load(name)
    task = spec["task"]
    for label, expected in spec["images"].items():
        image = (FIXTURES / f"image-{label}.png").read_bytes()
        options: dict[str, Any] = {"model": name}  # every anchor, like Ultralytics' max_det 300
        if task == "classify":
            options["top_k"] = len(expected["top"])
        result = await client.infer(image, **options)
        if task != "classify":
            assert result.detections, f"{name} on {label}: nothing found; remake the fixture"
        raw_anchors = not spec["architecture"].startswith("26/") and not name.endswith("-nms")
        if task == "obb" and raw_anchors:
            check_rotated_subset(result, expected)  # two rotated NMS: see the function
        else:
            check(result, expected, task)
