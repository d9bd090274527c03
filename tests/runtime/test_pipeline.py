"""InferencePipeline end to end on tiny ONNX models: geometry, options, masks, defects, async."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from tests.runtime.onnx_builders import box_finder_model, constant_model, yolov8_detect_outputs
from visionrpc.errors import (
    InvalidInputError,
    ModelNotFoundError,
    NotReadyError,
    ResourceLimitError,
)
from visionrpc.runtime.model import OnnxModel
from visionrpc.runtime.pipeline import InferencePipeline, summarize_defects
from visionrpc.runtime.repository import ModelRepository
from visionrpc.settings import Settings
from visionrpc.types import (
    BoxXYXY,
    Detection,
    InferenceInput,
    InferenceOptions,
    MaskFormat,
    PixelFormat,
    RawImage,
)

NAMES = {0: "scratch", 1: "dent", 2: "stain"}


def segment_outputs() -> list[np.ndarray]:
    """Two 'scratch' instances and one 'dent' in a 320x320 input, with known masks.

    Proto 0 is on in input x 40..120, y 40..80 (proto cells 10..30, 10..20); proto 1 is on
    everywhere. Detection A (scratch) uses proto 0 inside a box bigger than the region, B (dent)
    uses proto 1 over its whole box, C (scratch) overlaps A heavily with a lower score (NMS).
    """
    nc, nm, n = 3, 2, 64
    out = np.zeros((4 + nc + nm, n), np.float32)
    out[:4] = np.array([5, 5, 2, 2], np.float32)[:, None]
    out[:4, 0] = [80, 80, 160, 160]  # A: input x 0..160, y 0..160
    out[4 + 0, 0] = 0.9
    out[4 + nc :, 0] = [1, 0]
    out[:4, 1] = [240, 240, 40, 40]  # B: input x 220..260, y 220..260
    out[4 + 1, 1] = 0.8
    out[4 + nc :, 1] = [0, 1]
    out[:4, 2] = [82, 80, 160, 160]  # C: suppressed by A
    out[4 + 0, 2] = 0.7
    out[4 + nc :, 2] = [0, 1]
    protos = np.full((nm, 80, 80), -20.0, np.float32)
    protos[0, 10:20, 10:30] = 20.0
    protos[1] = 20.0
    return [out, protos]


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    box_finder_model(d / "finder.onnx")
    constant_model(
        d / "detect.onnx",
        [yolov8_detect_outputs([(100, 100, 20, 20), (200, 200, 40, 20)], [1, 2], [0.9, 0.6], 3)],
        names=NAMES,
    )
    constant_model(d / "seg.onnx", segment_outputs(), names=NAMES, task="segment")
    e2e = np.zeros((5, 6), np.float32)
    e2e[0] = [40, 80, 120, 160, 0.8, 2]
    constant_model(d / "e2e.onnx", [e2e], names=NAMES, metadata={"end2end": "True"})
    constant_model(
        d / "fixed.onnx",
        [yolov8_detect_outputs([(100, 100, 20, 20)], [0], [0.9], 3)],
        names=NAMES,
        fixed_batch=1,
    )
    return d


@pytest.fixture(scope="module")
def repo(repo_dir: Path) -> ModelRepository:
    return ModelRepository(Settings(models_dir=repo_dir, default_model="detect"))


@pytest.fixture
def pipeline(repo: ModelRepository):
    p = InferencePipeline(repo, Settings(models_dir=repo.directory))
    yield p
    p.shutdown()


def jpeg(img_bgr: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", img_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def png(img_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img_bgr)
    assert ok
    return buf.tobytes()


def request(data: bytes, **options) -> InferenceInput:
    return InferenceInput(InferenceOptions(**options), image_bytes=data, request_id="r1")


def scene(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img


# -- geometry: content-aware model ----------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "box"),
    [
        (800, 600, (300, 100, 500, 200)),  # landscape
        (600, 800, (120, 400, 360, 720)),  # portrait
        (4000, 3000, (1000, 800, 2400, 1600)),  # large: reduced decode at 1/8
        (1, 1, (0, 0, 1, 1)),
        (2000, 40, (400, 8, 1600, 32)),  # extreme aspect ratio
    ],
)
def test_boxes_land_in_original_pixels(pipeline, w, h, box) -> None:
    result = pipeline.infer_sync(request(png(scene(w, h, box)), model="finder"))
    assert (result.image_width, result.image_height) == (w, h)
    (det,) = result.detections
    scale = min(320 / w, 320 / h)
    tol = 1.5 / scale + 1  # one and a half model-input pixels
    got = (det.box.x_min, det.box.y_min, det.box.x_max, det.box.y_max)
    np.testing.assert_allclose(got, box, atol=tol)


@pytest.mark.parametrize(("w", "h"), [(1000, 808), (2560, 1920), (1001, 751)])
def test_reduced_decoding_matches_full_decoding(repo, w, h) -> None:
    box = (w // 4 + 3, h // 3 + 5, w // 2 + 7, (2 * h) // 3 + 1)
    data = jpeg(scene(w, h, box))
    results = []
    for reduced in (True, False):
        p = InferencePipeline(repo, Settings(models_dir=repo.directory, reduced_decode=reduced))
        try:
            results.append(p.infer_sync(request(data, model="finder")))
        finally:
            p.shutdown()
    reduced_det, full_det = results[0].detections[0], results[1].detections[0]
    assert (results[0].image_width, results[0].image_height) == (w, h)
    one_input_px = max(w, h) / 320
    for a, b, truth in zip(
        (
            reduced_det.box.x_min,
            reduced_det.box.y_min,
            reduced_det.box.x_max,
            reduced_det.box.y_max,
        ),
        (full_det.box.x_min, full_det.box.y_min, full_det.box.x_max, full_det.box.y_max),
        box,
        strict=True,
    ):
        assert abs(a - b) <= one_input_px + 1
        assert abs(a - truth) <= 1.5 * one_input_px + 1


def test_raw_frames_match_encoded(pipeline) -> None:
    img = scene(640, 480, (100, 50, 300, 250))
    raw = RawImage(640, 480, 3, PixelFormat.BGR, img.tobytes())
    by_raw = pipeline.infer_sync(InferenceInput(InferenceOptions(model="finder"), raw=raw))
    by_png = pipeline.infer_sync(request(png(img), model="finder"))
    assert by_raw.detections == by_png.detections


# -- detect model: options and defects ------------------------------------------------------


def test_detect_result_defects_and_timings(pipeline) -> None:
    result = pipeline.infer_sync(request(png(np.zeros((640, 640, 3), np.uint8))))
    assert result.model == "detect" and result.model_version == "1" and result.request_id == "r1"
    assert [d.class_name for d in result.detections] == ["dent", "stain"]
    dent, _ = result.detections
    assert (dent.box.x_min, dent.box.y_min, dent.box.x_max, dent.box.y_max) == (180, 180, 220, 220)
    assert dent.mask is None and dent.mask_area_px is None
    assert [d.class_name for d in result.defects] == ["dent", "stain"]
    assert result.defects[1].total_area_px == pytest.approx(80 * 40)
    assert result.defects[1].area_fraction == pytest.approx(3200 / 640**2)
    t = result.timings
    assert t.decode_ms > 0 and t.preprocess_ms > 0 and t.inference_ms > 0 and t.postprocess_ms > 0
    assert t.total_ms >= t.decode_ms + t.inference_ms


def test_request_options_apply(pipeline) -> None:
    data = png(np.zeros((320, 320, 3), np.uint8))
    assert len(pipeline.infer_sync(request(data, confidence_threshold=0.7)).detections) == 1
    assert len(pipeline.infer_sync(request(data, max_detections=1)).detections) == 1
    only = pipeline.infer_sync(request(data, classes=("stain",)))
    assert [d.class_name for d in only.detections] == ["stain"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"confidence_threshold": 1.5}, r"confidence_threshold is 1.5; send a value in \(0, 1\]"),
        ({"confidence_threshold": -0.1}, "confidence_threshold"),
        ({"iou_threshold": float("nan")}, "iou_threshold"),
        ({"max_detections": 100_000}, "returns at most 64"),
        ({"max_detections": -1}, "max_detections"),
        ({"classes": ("rust",)}, "unknown class name.*'rust'.*scratch, dent, stain"),
        ({"return_masks": True}, "only detects"),
    ],
)
def test_invalid_options(pipeline, options, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        pipeline.infer_sync(request(png(np.zeros((8, 8, 3), np.uint8)), **options))


def test_bad_inputs(pipeline) -> None:
    with pytest.raises(InvalidInputError, match="no image"):
        pipeline.infer_sync(InferenceInput(InferenceOptions()))
    with pytest.raises(InvalidInputError, match="empty"):
        pipeline.infer_sync(request(b""))
    with pytest.raises(ModelNotFoundError, match="available models"):
        pipeline.infer_sync(request(b"x", model="nope"))


def test_end2end_model(pipeline) -> None:
    result = pipeline.infer_sync(request(png(np.zeros((640, 640, 3), np.uint8)), model="e2e"))
    (det,) = result.detections
    assert det.class_name == "stain" and det.score == pytest.approx(0.8)
    assert (det.box.x_min, det.box.y_min, det.box.x_max, det.box.y_max) == (80, 160, 240, 320)


# -- segment model --------------------------------------------------------------------------


def test_segment_masks_areas_and_encodings(pipeline) -> None:
    # original 640x640: 2 original px per input px
    data = png(np.zeros((640, 640, 3), np.uint8))
    plain = pipeline.infer_sync(request(data, model="seg"))
    assert [d.class_name for d in plain.detections] == ["scratch", "dent"]  # C suppressed
    a, b = plain.detections
    assert a.mask is None
    # A: proto-0 region is input x 40..120, y 40..80 -> original 80..240 x 80..160
    assert a.mask_area_px == pytest.approx(160 * 80, rel=0.05)
    # B: whole box input 220..260 -> original 440..520
    assert b.mask_area_px == pytest.approx(80 * 80, rel=0.05)
    defects = {d.class_name: d for d in plain.defects}
    assert defects["scratch"].total_area_px == a.mask_area_px
    assert defects["dent"].area_fraction == pytest.approx(b.mask_area_px / 640**2)

    rle = pipeline.infer_sync(request(data, model="seg", return_masks=True)).detections[0].mask
    assert rle is not None and rle.format is MaskFormat.RLE and rle.rle_size == (640, 640)
    full = coco_mask.decode({"size": list(rle.rle_size), "counts": rle.rle_counts})
    ys, xs = np.nonzero(full)
    assert full.sum() == rle.area_px == a.mask_area_px
    assert abs(xs.min() - 80) <= 2 and abs(xs.max() - 239) <= 2
    assert abs(ys.min() - 80) <= 2 and abs(ys.max() - 159) <= 2

    png_mask = (
        pipeline.infer_sync(
            request(data, model="seg", return_masks=True, mask_format=MaskFormat.PNG)
        )
        .detections[1]
        .mask
    )
    assert png_mask is not None and png_mask.png_origin == (440, 440)
    region = cv2.imdecode(np.frombuffer(png_mask.png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert region is not None
    assert region.shape == (80, 80) and (region == 255).mean() > 0.95

    poly = (
        pipeline.infer_sync(
            request(data, model="seg", return_masks=True, mask_format=MaskFormat.POLYGON)
        )
        .detections[0]
        .mask
    )
    assert poly is not None and len(poly.polygons) == 1
    pts = poly.polygons[0]
    assert abs(pts[:, 0].min() - 80) <= 2 and abs(pts[:, 1].max() - 159) <= 2


def test_segment_masks_follow_letterbox(pipeline) -> None:
    # original 1280x640 -> 4 original px per input px, pad_y 80. A's proto region (input
    # y 40..80) lies in the padding; B (input y 220..260) -> original 560..720, clipped to 640
    result = pipeline.infer_sync(request(png(np.zeros((640, 1280, 3), np.uint8)), model="seg"))
    a, b = result.detections
    assert a.mask_area_px == 0  # the region lies entirely in the letterbox padding
    assert (b.box.y_min, b.box.y_max) == (560, 640)
    assert b.mask_area_px == pytest.approx(160 * 80, rel=0.05)


# -- async ----------------------------------------------------------------------------------


async def test_async_matches_sync_and_batches(pipeline) -> None:
    data = png(scene(640, 480, (100, 50, 300, 250)))
    expected = pipeline.infer_sync(request(data, model="finder"))
    results = await asyncio.gather(
        *(pipeline.infer(request(data, model="finder")) for _ in range(12))
    )
    assert all(r.detections == expected.detections for r in results)
    assert all(r.timings.total_ms >= r.timings.queue_ms for r in results)
    await pipeline.close()


async def test_async_fixed_batch_model_and_errors(pipeline) -> None:
    data = png(np.zeros((64, 64, 3), np.uint8))
    results = await asyncio.gather(
        *(pipeline.infer(request(data, model="fixed")) for _ in range(4))
    )
    assert all(len(r.detections) == 1 for r in results)
    bad = await asyncio.gather(
        pipeline.infer(request(b"not an image at all", model="fixed")),
        pipeline.infer(request(data, model="fixed")),
        return_exceptions=True,
    )
    assert isinstance(bad[0], InvalidInputError) and not isinstance(bad[1], Exception)
    await pipeline.close()


async def test_lone_request_runs_in_one_hop_without_a_batch(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionrpc.runtime import pipeline as pipeline_module

    batches: list[int] = []
    run_batch = pipeline_module.BatchRunner.__call__

    def recording(self: pipeline_module.BatchRunner, items: list) -> list:
        batches.append(len(items))
        return run_batch(self, items)

    monkeypatch.setattr(pipeline_module.BatchRunner, "__call__", recording)
    settings = Settings(models_dir=repo_dir, runtime={"instances": 1})
    p = InferencePipeline(ModelRepository(settings), settings)
    data = png(np.zeros((40, 60, 3), np.uint8))
    alone = await p.infer(request(data, model="detect"))
    assert batches == []  # the idle model ran it directly
    assert alone.detections == p.infer_sync(request(data, model="detect")).detections
    together = await asyncio.gather(*(p.infer(request(data, model="detect")) for _ in range(5)))
    assert sum(batches) == 4  # the first ran alone, the others went through the batcher
    assert all(r.detections == alone.detections for r in together)
    await p.close()

    # A lone request with every instance idle may use all cores (the lone-request session);
    # batches never do.
    flags: list[bool] = []
    run_model = OnnxModel.run

    def flagged(self: OnnxModel, batch: np.ndarray, all_cores: bool = False) -> list:
        flags.append(all_cores)
        return run_model(self, batch, all_cores=all_cores)

    monkeypatch.setattr(OnnxModel, "run", flagged)
    settings = Settings(models_dir=repo_dir, runtime={"instances": 2})
    p = InferencePipeline(ModelRepository(settings), settings)
    await p.infer(request(data, model="detect"))
    p.infer_sync(request(data, model="detect"))
    await asyncio.gather(*(p.infer(request(data, model="detect")) for _ in range(2)))
    # the pair ran side by side, alone each: only the first had every core
    assert flags[:2] == [True, True] and sorted(flags[2:]) == [False, True]
    await p.close()

    # One hop for each request with nobody waiting ahead of it: the second of two finds the
    # first already running (not waiting) and the second instance idle.
    batches.clear()
    settings = Settings(models_dir=repo_dir, runtime={"instances": 2})
    p = InferencePipeline(ModelRepository(settings), settings)
    pair = await asyncio.gather(*(p.infer(request(data, model="detect")) for _ in range(2)))
    assert batches == [] and all(r.detections == alone.detections for r in pair)
    await p.close()


async def test_a_request_running_alone_does_not_hold_up_the_next(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances and a 30 s queue delay: while one request runs alone, a second one is
    served on the idle instance at once, not after the delay."""
    gate, started = threading.Event(), threading.Event()
    calls: list[bool] = []
    run_model = OnnxModel.run

    def held_first(self: OnnxModel, batch: np.ndarray, all_cores: bool = False) -> list:
        calls.append(all_cores)
        if len(calls) == 1:
            started.set()
            gate.wait(20)
        return run_model(self, batch, all_cores=all_cores)

    monkeypatch.setattr(OnnxModel, "run", held_first)
    settings = Settings(
        models_dir=repo_dir,
        runtime={"instances": 2},
        batching={"max_queue_delay_us": 30_000_000, "max_batch_size": 8},
    )
    p = InferencePipeline(ModelRepository(settings), settings)
    data = png(np.zeros((40, 60, 3), np.uint8))
    first = asyncio.ensure_future(p.infer(request(data, model="detect")))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        second = await asyncio.wait_for(p.infer(request(data, model="detect")), 10)
        assert not first.done() and len(calls) == 2
        assert second.detections == p.infer_sync(request(data, model="detect")).detections
    finally:
        gate.set()
    assert (await first).detections == second.detections
    await p.close()


async def test_closed_pipeline_answers_not_ready(repo_dir: Path) -> None:
    settings = Settings(models_dir=repo_dir)
    p = InferencePipeline(ModelRepository(settings), settings)
    data = png(np.zeros((40, 60, 3), np.uint8))
    assert (await p.infer(request(data, model="detect"))).detections
    await p.close()
    with pytest.raises(NotReadyError, match="model 'detect' is shutting down; retry on another"):
        await p.infer(request(data, model="detect"))


async def test_async_queue_limit(repo_dir: Path) -> None:
    settings = Settings(models_dir=repo_dir, batching={"max_queue_size": 2, "max_batch_size": 1})
    p = InferencePipeline(ModelRepository(settings), settings)
    data = png(np.zeros((2000, 2000, 3), np.uint8))
    results = await asyncio.gather(
        *(p.infer(request(data, model="detect")) for _ in range(6)), return_exceptions=True
    )
    shed = [r for r in results if isinstance(r, ResourceLimitError)]
    assert shed and "max_queue_size=2" in str(shed[0])
    assert any(not isinstance(r, Exception) for r in results)
    await p.close()


def test_defect_summaries_sorted_by_class_name() -> None:
    det = [
        Detection(BoxXYXY(0, 0, 2, 2), 0.5, 1, "zeta"),
        Detection(BoxXYXY(0, 0, 1, 1), 0.7, 0, "alpha", mask_area_px=3),
        Detection(BoxXYXY(0, 0, 4, 1), 0.9, 1, "zeta"),
    ]
    alpha, zeta = summarize_defects(det, 10, 10)
    assert (alpha.class_name, alpha.count, alpha.total_area_px) == ("alpha", 1, 3)
    assert (zeta.count, zeta.max_score, zeta.total_area_px) == (2, 0.9, 8)
    assert zeta.area_fraction == pytest.approx(0.08)


# -- class-agnostic NMS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair_repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """One defect reported twice, as scratch (0.8) and dent (0.9) with overlapping boxes, by a
    YOLOv8-layout and an end-to-end model, each with agnostic NMS off and on by default."""
    d = tmp_path_factory.mktemp("pairs")
    yolov8 = yolov8_detect_outputs([(100, 100, 40, 20), (102, 100, 40, 20)], [0, 1], [0.8, 0.9], 3)
    e2e = np.zeros((5, 6), np.float32)
    e2e[0] = [80, 90, 120, 110, 0.8, 0]
    e2e[1] = [82, 90, 122, 110, 0.9, 1]
    for name, outputs, meta in (("v8", yolov8, None), ("e2e", e2e, {"end2end": "True"})):
        constant_model(d / f"{name}.onnx", [outputs], names=NAMES, metadata=meta)
        constant_model(d / f"{name}-agnostic" / "model.onnx", [outputs], names=NAMES, metadata=meta)
        (d / f"{name}-agnostic" / "model.yaml").write_text("agnostic_nms: true\n")
    return ModelRepository(Settings(models_dir=d, default_model="v8"))


@pytest.mark.parametrize("layout", ["v8", "e2e"])
def test_agnostic_nms_from_model_yaml_and_per_request(pair_repo, layout) -> None:
    p = InferencePipeline(pair_repo, Settings(models_dir=pair_repo.directory))
    data = png(np.zeros((320, 320, 3), np.uint8))

    def classes(model: str, **options) -> list[tuple[str, float]]:
        result = p.infer_sync(request(data, model=model, **options))
        return [(d.class_name, round(d.score, 3)) for d in result.detections]

    both, best = [("dent", 0.9), ("scratch", 0.8)], [("dent", 0.9)]
    try:
        assert classes(layout) == both  # class-aware: counted twice
        assert classes(layout, agnostic_nms=True) == best
        assert classes(f"{layout}-agnostic") == best  # agnostic_nms: true in model.yaml
        assert classes(f"{layout}-agnostic", agnostic_nms=False) == both
    finally:
        p.shutdown()
    assert not pair_repo.describe(layout).default_agnostic_nms
    assert pair_repo.describe(f"{layout}-agnostic").default_agnostic_nms
