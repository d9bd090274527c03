"""Inference CLI commands (infer, infer-stream, models, eval, demo --local) against live servers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from tests.helpers import RunningServer, make_settings
from visionrpc.cli.main import app
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.local import ServerThread
from visionrpc.synthetic import generate_sample

runner = CliRunner()
SAMPLES = [(1001, 11), (1001, 19), (1000, 15)]  # small held-out images with visible defects


def invoke(*args: str) -> Result:
    # rich sizes tables to COLUMNS (80 when not a terminal, which ellipsizes the cells)
    return runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def inference_server() -> Iterator[RunningServer]:
    """One server with the packaged models for the module, on a loop in a background thread."""
    settings = make_settings(access_log=False)
    thread = ServerThread()
    yield RunningServer(thread.start(settings, [InferenceServicer(settings)]), settings)
    thread.close()


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Three generated images as JPEG/PNG files in tmp_path/images."""
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i, (seed, index) in enumerate(SAMPLES):
        path = folder / f"img{i}.{'png' if i == 1 else 'jpg'}"
        bgr = cv2.cvtColor(generate_sample(seed, index).image, cv2.COLOR_RGB2BGR)
        assert cv2.imwrite(str(path), bgr)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_infer_json(inference_server: RunningServer, images: list[Path]) -> None:
    result = invoke("infer", str(images[0]), "--target", inference_server.address, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    sample = generate_sample(*SAMPLES[0])
    assert (data["image_width"], data["image_height"]) == (sample.width, sample.height)
    assert data["request_id"] == images[0].name and data["model"] == "defects"
    assert data["detections"] and data["defects"]
    for det in data["detections"]:
        assert det["class_name"] in ("scratch", "spot", "crack") and 0 < det["score"] <= 1
        assert set(det["box"]) == {"x_min", "y_min", "x_max", "y_max"}
        assert "mask" not in det
    assert data["timings"]["total_ms"] > 0
    # several images and masks: a list, each detection with its RLE mask
    both = invoke(
        "infer", *map(str, images[:2]), "--target", inference_server.address, "--json", "--masks"
    )
    assert both.exit_code == 0, both.output
    results = json.loads(both.stdout)
    assert [r["request_id"] for r in results] == [images[0].name, images[1].name]
    mask = results[0]["detections"][0]["mask"]
    assert mask["format"] == "rle" and mask["area_px"] > 0 and mask["rle"]["counts"]


def test_infer_table(inference_server: RunningServer, images: list[Path]) -> None:
    result = invoke("infer", str(images[0]), "--target", inference_server.address)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "model defects" in out and "defects" in out
    assert re.search(r"(spot|crack|scratch)\s*│\s*0\.\d{3}", out), out


def test_infer_errors_are_reported(inference_server: RunningServer, images: list[Path]) -> None:
    args = ["infer", str(images[0]), "--target", inference_server.address, "--classes", "rust"]
    result = invoke(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: INVALID_ARGUMENT: unknown class name(s) ['rust']")
    assert "valid names: scratch, spot, crack" in result.stderr


def test_infer_save_annotated(
    inference_server: RunningServer, images: list[Path], tmp_path: Path
) -> None:
    out_dir = tmp_path / "annotated"
    result = invoke(
        "infer",
        str(images[1]),
        "--target",
        inference_server.address,
        "--save-annotated",
        str(out_dir),
    )
    assert result.exit_code == 0, result.output
    written = out_dir / f"{images[1].stem}.annotated.png"
    assert written.is_file() and str(written) in result.stdout.replace("\n", "")
    original = cv2.imread(str(images[1]))
    drawn = cv2.imread(str(written))
    assert original is not None and drawn is not None and drawn.shape == original.shape
    changed = np.any(drawn != original, axis=2)
    assert 0.001 < changed.mean() < 0.5  # boxes, labels and masks, not the whole image


def test_infer_stream_folder_and_glob(inference_server: RunningServer, images: list[Path]) -> None:
    folder = images[0].parent
    result = invoke("infer-stream", str(folder), "--target", inference_server.address)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert [line.split(":")[0] for line in lines] == ["img0.jpg", "img1.png", "img2.jpg"]
    for line in lines:
        assert re.search(r"\d+× (spot|crack|scratch).*\(\d+\.\d ms\)", line), line
    globbed = invoke(
        "infer-stream", str(folder / "*.jpg"), "--target", inference_server.address, "--json"
    )
    assert globbed.exit_code == 0, globbed.output
    frames = [json.loads(line) for line in globbed.stdout.splitlines() if line.strip()]
    assert [f["frame"] for f in frames] == ["img0.jpg", "img2.jpg"]
    assert all(f["detections"] and "error" not in f for f in frames)


def test_infer_stream_reports_bad_frames(
    inference_server: RunningServer, images: list[Path]
) -> None:
    folder = images[0].parent
    (folder / "broken.jpg").write_bytes(images[0].read_bytes()[:500])
    result = invoke("infer-stream", str(folder), "--target", inference_server.address)
    assert result.exit_code == 1
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 4
    assert lines[0].startswith("broken.jpg: ERROR INVALID_ARGUMENT") and "truncated" in lines[0]
    assert all("ERROR" not in line for line in lines[1:])


def write_video(path: Path, fourcc: str, frames: int = 4) -> bool:
    """A tiny video of generated frames; False when this OpenCV build cannot write it."""
    size = (320, 240)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), 5.0, size)
    if not writer.isOpened():
        return False
    image = cv2.cvtColor(generate_sample(1001, 11, size=size).image, cv2.COLOR_RGB2BGR)
    for _ in range(frames):
        writer.write(image)
    writer.release()
    capture = cv2.VideoCapture(str(path))
    ok = capture.isOpened() and capture.read()[0]
    capture.release()
    return bool(ok)


def test_infer_stream_video(inference_server: RunningServer, tmp_path: Path) -> None:
    for name, fourcc in (("clip.mp4", "mp4v"), ("clip.avi", "MJPG")):
        path = tmp_path / name
        if write_video(path, fourcc):
            break
    else:
        pytest.skip("this OpenCV build can neither write mp4v nor MJPG video")
    result = invoke("infer-stream", str(path), "--target", inference_server.address, "--json")
    assert result.exit_code == 0, result.output
    frames = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [f["frame"] for f in frames] == [f"frame{i:06d}" for i in range(4)]
    assert all((f["image_width"], f["image_height"]) == (320, 240) for f in frames)


def test_models_json(inference_server: RunningServer) -> None:
    result = invoke("models", "--target", inference_server.address, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["default_model"] == "defects"
    model = next(m for m in data["models"] if m["name"] == "defects")
    assert model["task"] == "segment" and model["layout"] == "yolov8"
    assert model["class_names"] == ["scratch", "spot", "crack"]
    assert model["execution_provider"] == "CPUExecutionProvider"
    assert (model["input_width"], model["input_height"]) == (320, 320)
    table = invoke("models", "--target", inference_server.address)
    assert table.exit_code == 0
    assert "defects (default)" in table.stdout and "CPUExecutionProvider" in table.stdout


def test_eval_json(inference_server: RunningServer) -> None:
    result = invoke("eval", "--count", "6", "--json", "--target", inference_server.address)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 6 and report["instances"] > 0
    for key in ("box_map50", "mask_map50", "box_map50_95", "mask_map50_95"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["box_map50"] > 0  # the model finds something on its own kind of images
    for per_class in (report["per_class_box_map50"], report["per_class_mask_map50"]):
        assert set(per_class) == {"scratch", "spot", "crack"}
        assert all(0.0 <= v <= 1.0 for v in per_class.values())
    assert report["mean_latency_ms"] > 0


def test_demo_local_runs_every_step_with_inference() -> None:
    result = invoke("demo", "--local")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "health: SERVING" in out
    for title in ("Ping", "StreamNumbers", "UploadNumbers", "Chat", "Infer"):
        assert f"== {title}" in out
    infer_section = out.split("== Infer", 1)[1]
    assert "planted (" in infer_section and "found (" in infer_section
    found = re.findall(r"^\s+(scratch|spot|crack)\s+box=\(.*\) score=0\.\d\d", infer_section, re.M)
    assert found, infer_section


def test_demo_skips_inference_on_a_core_only_server(threaded_server: RunningServer) -> None:
    result = invoke("demo", "--target", threaded_server.address)
    assert result.exit_code == 0, result.output
    assert "skipped: this server does not offer visionrpc.v1.InferenceMethods" in result.stdout


def test_demo_local_and_target_conflict() -> None:
    result = runner.invoke(app, ["demo", "--local", "--target", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "either --target or --local" in result.output
