"""Inference CLI commands (infer, infer-stream, models, eval) against live servers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from tests.helpers import RunningServer, StartThreadedServer, make_settings
from tests.runtime.onnx_builders import constant_model, yolov8_detect_outputs
from visionrpc.annotate import VERDICT_COLORS, ZONE_COLOR
from visionrpc.cli.main import app
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.local import ServerThread
from visionrpc.synthetic import generate_sample
from visionrpc.types import Verdict

runner = CliRunner()
SAMPLES = [(1001, 11), (1001, 19), (1000, 15)]  # small held-out images with visible defects


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False)


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


def test_infer_tiled(inference_server: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    frame = generate_sample(7000, 0, size=(1600, 1200), defect_unit=1.0, jpeg=False)
    assert cv2.imwrite(str(path), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    args = ("infer", str(path), "--target", inference_server.address, "--tiling", "on")
    result = invoke(*args, "--tile-overlap", "0", "--json")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)
    tiling = entry["result"]["tiling"]
    assert (tiling["columns"], tiling["rows"], tiling["tiles"]) == (5, 4, 20)
    assert tiling["overlap_x"] == 0 and tiling["thumbnail"] is True
    table = invoke(*args)
    assert table.exit_code == 0 and "30 tiles" in table.stdout  # overlap 0.2: 6 x 5
    plain = json.loads(
        invoke("infer", str(path), "--target", inference_server.address, "--json").stdout
    )
    assert "tiling" not in plain[0]["result"]
    bad = invoke(*args, "--tile-overlap", "0.9")
    assert bad.exit_code == 1 and "tiling.overlap is 0.9" in bad.output


def test_infer_json(inference_server: RunningServer, images: list[Path]) -> None:
    result = invoke("infer", str(images[0]), "--target", inference_server.address, "--json")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)  # a list even for one image
    assert entry["image"] == str(images[0]) and "error" not in entry
    data = entry["result"]
    sample = generate_sample(*SAMPLES[0])
    assert (data["image_width"], data["image_height"]) == (sample.width, sample.height)
    assert data["request_id"] == images[0].name and data["model"] == "defects"
    assert data["detections"] and data["defects"]
    for det in data["detections"]:
        assert det["class_name"] in ("scratch", "spot", "crack") and 0 < det["score"] <= 1
        assert set(det["box"]) == {"x_min", "y_min", "x_max", "y_max"}
        assert "mask" not in det
        # float32 on the wire, rounded for people: pixels to 2 decimals, scores to 4
        assert all(round(v, 2) == v for v in det["box"].values()), det["box"]
        assert round(det["score"], 4) == det["score"]
    assert not re.search(r"\d\.\d{7,}", result.stdout)  # no 0.6000000238418579
    assert data["timings"]["total_ms"] > 0
    # several images and masks: one entry per image, in order, each detection with its RLE mask
    both = invoke(
        "infer", *map(str, images[:2]), "--target", inference_server.address, "--json", "--masks"
    )
    assert both.exit_code == 0, both.output
    entries = json.loads(both.stdout)
    assert [e["image"] for e in entries] == [str(images[0]), str(images[1])]
    assert [e["result"]["request_id"] for e in entries] == [images[0].name, images[1].name]
    mask = entries[0]["result"]["detections"][0]["mask"]
    assert mask["format"] == "rle" and mask["area_px"] > 0 and mask["rle"]["counts"]


def test_infer_table(inference_server: RunningServer, images: list[Path]) -> None:
    result = invoke("infer", str(images[0]), "--target", inference_server.address)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "model defects" in out and "defects" in out
    assert re.search(r"(spot|crack|scratch)\s*│\s*0\.\d{3}", out), out


@pytest.fixture
def with_broken(images: list[Path]) -> list[Path]:
    """img0.jpg, broken.jpg (a truncated JPEG) and img2.jpg."""
    broken = images[0].parent / "broken.jpg"
    broken.write_bytes(images[0].read_bytes()[:500])
    return [images[0], broken, images[2]]


def test_infer_tries_every_image_and_reports_each(
    inference_server: RunningServer, with_broken: list[Path]
) -> None:
    args = ["infer", *map(str, with_broken), "--target", inference_server.address]
    as_json = invoke(*args, "--json")
    assert as_json.exit_code == 1  # one image failed
    entries = json.loads(as_json.stdout)
    assert [e["image"] for e in entries] == list(map(str, with_broken))
    assert "result" in entries[0] and "result" in entries[2]
    assert set(entries[1]) == {"image", "error"}
    error = entries[1]["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "truncated" in error["message"]
    table = invoke(*args)
    assert table.exit_code == 1
    assert table.stdout.count("model defects") == 2  # both good images have their table
    [line] = table.stderr.splitlines()
    assert line.startswith(f"error: {with_broken[1]}: INVALID_ARGUMENT: ") and "truncated" in line
    ok = invoke("infer", str(with_broken[0]), "--target", inference_server.address)
    assert ok.exit_code == 0  # the server keeps serving


def test_infer_expands_folders_and_globs(
    inference_server: RunningServer, images: list[Path]
) -> None:
    folder = images[0].parent
    result = invoke("infer", str(folder), "--target", inference_server.address, "--json")
    assert result.exit_code == 0, result.output
    # the folder's image files, sorted (notes.txt is left out)
    assert [e["image"] for e in json.loads(result.stdout)] == list(map(str, images))
    globbed = invoke("infer", str(folder / "*.jpg"), "--target", inference_server.address, "--json")
    assert globbed.exit_code == 0, globbed.output
    assert [e["image"] for e in json.loads(globbed.stdout)] == [str(images[0]), str(images[2])]
    target = ["--target", inference_server.address]
    no_match = invoke("infer", str(folder / "nothing*.png"), *target)
    assert no_match.exit_code == 2
    [line] = no_match.stderr.splitlines()
    assert line.startswith("error: no ") and line.endswith(f" files match {folder}/nothing*.png")
    missing = invoke("infer", str(images[0]), str(folder / "gone.jpg"), *target)
    assert missing.exit_code == 2  # checked before any image is sent
    assert missing.stderr == f"error: no such file or folder: {folder / 'gone.jpg'}\n"
    assert missing.stdout == ""


def test_infer_errors_are_reported(inference_server: RunningServer, images: list[Path]) -> None:
    args = ["infer", *map(str, images), "--target", inference_server.address, "--classes", "rust"]
    result = invoke(*args)
    assert result.exit_code == 2  # once, before any image is sent
    assert result.stderr == (
        "error: --classes: model defects has no class 'rust'; its classes: scratch, spot, crack\n"
    )
    unknown = invoke(*args[:-2], "--model", "nope")
    assert unknown.exit_code == 1
    [line] = unknown.stderr.splitlines()
    assert line.startswith("error: NOT_FOUND: ") and "nope" in line


def test_infer_save_annotated_to_a_folder(
    inference_server: RunningServer, images: list[Path], tmp_path: Path
) -> None:
    out_dir = tmp_path / "annotated"
    result = invoke(
        "infer",
        *map(str, images[:2]),
        "--target",
        inference_server.address,
        "--save-annotated",
        str(out_dir),
    )
    assert result.exit_code == 0, result.output
    for image in images[:2]:
        written = out_dir / f"{image.stem}.annotated.png"
        assert written.is_file() and str(written) in result.stdout.replace("\n", "")
        original = cv2.imread(str(image))
        drawn = cv2.imread(str(written))
        assert original is not None and drawn is not None and drawn.shape == original.shape
        changed = np.any(drawn != original, axis=2)
        assert 0.001 < changed.mean() < 0.5  # boxes, labels and masks, not the whole image


def test_infer_save_annotated_to_a_file(
    inference_server: RunningServer, images: list[Path], tmp_path: Path
) -> None:
    target = ["--target", inference_server.address]
    out = tmp_path / "out" / "drawn.png"
    result = invoke("infer", str(images[0]), *target, "--save-annotated", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert out.is_file()  # a file, not a folder named drawn.png
    drawn, original = cv2.imread(str(out)), cv2.imread(str(images[0]))
    assert drawn is not None and original is not None and drawn.shape == original.shape
    assert json.loads(result.stdout)[0]["annotated"] == str(out)
    jpeg = tmp_path / "drawn.jpg"
    assert invoke("infer", str(images[0]), *target, "--save-annotated", str(jpeg)).exit_code == 0
    assert jpeg.read_bytes()[:2] == b"\xff\xd8"  # written as JPEG
    # a file name for several images is a usage error, found before any call
    several = invoke(
        "infer", *map(str, images), *target, "--save-annotated", str(tmp_path / "x.png")
    )
    assert several.exit_code == 2
    assert several.stderr == (
        f"error: --save-annotated {tmp_path / 'x.png'} names one file but there are 3 images; "
        "give a folder instead\n"
    )
    assert several.stdout == "" and not (tmp_path / "x.png").exists()


def run_without_opencv(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess where ``import cv2`` fails, as in a client-only install."""
    code = "import sys; sys.modules['cv2'] = None; from visionrpc.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


HINT = '(cv2 is missing): pip install "visionrpc[images]"\n'


def test_annotating_without_opencv_says_what_to_install(
    inference_server: RunningServer, images: list[Path], tmp_path: Path
) -> None:
    target = ["--target", inference_server.address]
    done = run_without_opencv("infer", str(images[0]), *target, "--save-annotated", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr == f"error: --save-annotated needs OpenCV and pycocotools {HINT}"
    assert done.stdout == ""
    plain = run_without_opencv("infer", str(images[0]), *target, "--json")  # no OpenCV needed
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)[0]["result"]["detections"]


def test_video_without_opencv_says_what_to_install(
    inference_server: RunningServer, tmp_path: Path
) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: OpenCV is checked first")
    done = run_without_opencv("infer-stream", str(video), "--target", inference_server.address)
    assert done.returncode == 1
    assert done.stderr == f"error: reading video needs OpenCV and pycocotools {HINT}"


SUMMARY = re.compile(
    r"^(\d+) frames, (\d+) failed, \d+\.\d images/s; defects: (none|\d+× \w+(, \d+× \w+)*)$"
)


def test_infer_stream_folder_and_glob(inference_server: RunningServer, images: list[Path]) -> None:
    folder = images[0].parent
    result = invoke("infer-stream", str(folder), "--target", inference_server.address)
    assert result.exit_code == 0, result.output
    *lines, summary = [line for line in result.stdout.splitlines() if line.strip()]
    assert [line.split(":")[0] for line in lines] == ["img0.jpg", "img1.png", "img2.jpg"]
    found: dict[str, int] = {}
    for line in lines:
        assert re.search(r"\d+× (spot|crack|scratch).*\(\d+\.\d ms\)", line), line
        for count, name in re.findall(r"(\d+)× (\w+)", line):
            found[name] = found.get(name, 0) + int(count)
    match = SUMMARY.match(summary)
    assert match and match.group(1, 2) == ("3", "0"), summary
    # the summary adds up the frames' defects, most frequent first
    totals = dict((name, int(n)) for n, name in re.findall(r"(\d+)× (\w+)", match.group(3)))
    assert totals == found and list(totals.values()) == sorted(totals.values(), reverse=True)
    globbed = invoke(
        "infer-stream", str(folder / "*.jpg"), "--target", inference_server.address, "--json"
    )
    assert globbed.exit_code == 0, globbed.output
    *frames, last = [json.loads(line) for line in globbed.stdout.splitlines() if line.strip()]
    assert [f["image"] for f in frames] == ["img0.jpg", "img2.jpg"]
    assert all(f["result"]["detections"] and "error" not in f for f in frames)
    assert last["summary"]["frames"] == 2 and last["summary"]["failed"] == 0
    assert last["summary"]["images_per_s"] > 0
    defects: dict[str, int] = {}
    for f in frames:
        for d in f["result"]["defects"]:
            defects[d["class_name"]] = defects.get(d["class_name"], 0) + d["count"]
    assert last["summary"]["defects"] == defects


def test_infer_stream_reports_bad_frames(
    inference_server: RunningServer, images: list[Path]
) -> None:
    folder = images[0].parent
    (folder / "broken.jpg").write_bytes(images[0].read_bytes()[:500])
    result = invoke("infer-stream", str(folder), "--target", inference_server.address)
    assert result.exit_code == 1
    *lines, summary = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 4
    assert lines[0].startswith("broken.jpg: ERROR INVALID_ARGUMENT") and "truncated" in lines[0]
    assert all("ERROR" not in line for line in lines[1:])
    assert summary.startswith("4 frames, 1 failed, ")


def test_infer_stream_unknown_model_fails_once(
    inference_server: RunningServer, images: list[Path]
) -> None:
    folder = images[0].parent
    args = ["infer-stream", str(folder), "--target", inference_server.address]
    result = invoke(*args, "--model", "nope")
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()  # one line, not one per frame
    assert line.startswith("error: NOT_FOUND: ") and "'nope'" in line and "defects" in line
    assert result.stdout.strip() == ""
    classes = invoke(*args, "--classes", "spot,rust", "--json")
    assert classes.exit_code == 2
    assert classes.stderr == (
        "error: --classes: model defects has no class 'rust'; its classes: scratch, spot, crack\n"
    )
    named = invoke(*args, "--model", "defects", "--classes", "spot")  # known: streams as usual
    assert named.exit_code == 0, named.output
    assert all("crack" not in line for line in named.stdout.splitlines()[:-1])


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
    *frames, last = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [f["image"] for f in frames] == [f"frame{i:06d}" for i in range(4)]
    assert all(
        (f["result"]["image_width"], f["result"]["image_height"]) == (320, 240) for f in frames
    )
    assert last["summary"]["frames"] == 4


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
    # float32 thresholds as configured, not 0.6000000238418579
    assert '"default_iou_threshold": 0.6,' in result.stdout
    assert not re.search(r"\d\.\d{7,}", result.stdout)
    table = invoke("models", "--target", inference_server.address)
    assert table.exit_code == 0
    assert "defects (default)" in table.stdout and "CPUExecutionProvider" in table.stdout


LONG_NAME = "line7-station3-left-camera-" + "surface-inspection-" * 5 + "v2"


def test_models_never_cuts_long_names(
    start_threaded_server: StartThreadedServer, tmp_path: Path
) -> None:
    out = yolov8_detect_outputs([(40, 40, 20, 20)], [0], [0.9], num_classes=1)
    constant_model(tmp_path / f"{LONG_NAME}.onnx", [out], input_size=(64, 64), names={0: "dent"})
    settings = {"models_dir": tmp_path, "default_model": LONG_NAME, "access_log": False}
    running = start_threaded_server([InferenceServicer(make_settings(**settings))], **settings)
    assert len(LONG_NAME) > 100
    # not a terminal and no COLUMNS: rich would use 80 columns and cut the name with "…"
    result = runner.invoke(app, ["models", "--target", running.address], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"{LONG_NAME} (default)" in result.stdout
    assert "…" not in result.stdout


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


def test_agnostic_nms_flag_overrides_the_models_setting(tmp_path: Path) -> None:
    """Two overlapping boxes of different classes: two detections class-aware (this model's
    setting), one with --agnostic-nms; `models` shows the setting."""
    models = tmp_path / "models"
    models.mkdir()
    out = yolov8_detect_outputs(
        [(40, 40, 30, 10), (41, 40, 30, 10)], [0, 1], [0.9, 0.8], num_classes=2
    )
    constant_model(
        models / "thin.onnx", [out], input_size=(96, 96), names={0: "scratch", 1: "crack"}
    )
    settings = make_settings(access_log=False, models_dir=models)
    thread = ServerThread()
    try:
        address = thread.start(settings, [InferenceServicer(settings)]).address
        image = tmp_path / "part.png"
        assert cv2.imwrite(str(image), np.full((96, 96, 3), 90, np.uint8))
        counts = {}
        for flag in ("--no-agnostic-nms", "--agnostic-nms"):
            result = invoke("infer", str(image), "--target", address, "--json", flag)
            assert result.exit_code == 0, result.output
            [entry] = json.loads(result.stdout)
            counts[flag] = [d["class_name"] for d in entry["result"]["detections"]]
        assert counts == {"--no-agnostic-nms": ["scratch", "crack"], "--agnostic-nms": ["scratch"]}
        listed = invoke("models", "--target", address)
        assert "agnostic nms" in listed.stdout and "off" in listed.stdout
    finally:
        thread.close()


def test_infer_json_carries_keypoints_rotated_boxes_and_classes() -> None:
    from visionrpc.cli.infer import result_to_json
    from visionrpc.types import (
        BoxXYXY,
        Classification,
        Detection,
        InferenceResult,
        Keypoint,
        RotatedBox,
    )

    corners = ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0))
    result = InferenceResult(
        model="m",
        model_version="1",
        image_width=10,
        image_height=10,
        detections=(
            Detection(BoxXYXY(0, 0, 4, 4), 0.5, 0, "hand", keypoints=(Keypoint(1, 2, 0.25),)),
            Detection(
                BoxXYXY(1, 2, 7, 8),
                0.75,
                1,
                "blade",
                rotated_box=RotatedBox(4, 5, 6, 2, 30.0, corners),
            ),
        ),
        defects=(),
        classifications=(Classification(2, "crack", 0.5),),
    )
    data = result_to_json(result)
    hand, blade = data["detections"]
    assert hand["keypoints"] == [[1, 2, 0.25]] and "rotated_box" not in hand
    assert blade["rotated_box"]["angle_deg"] == 30.0
    assert blade["rotated_box"]["corners"] == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert data["classifications"] == [{"class_id": 2, "class_name": "crack", "score": 0.5}]


RULES_YAML = """\
pixels_per_mm: 10
zones:
  top: [[0, 0], [10000, 0], [10000, 5], [0, 5]]
rules:
  - {name: any-defect, metric: count, min: 1, verdict: FAIL}
  - {name: long, metric: length_mm, min: 0.01, verdict: REVIEW}
  - {name: in-top, zone: top, metric: count, min: 1, verdict: FAIL}
"""


def test_infer_rules_show_the_verdict_and_measurements(
    inference_server: RunningServer, images: list[Path], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    args = ["infer", str(images[0]), "--target", inference_server.address, "--rules", str(rules)]
    as_json = invoke(*args, "--json")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)[0]["result"]
    assert data["pixels_per_mm"] == 10  # the rules file's scale
    detections = data["detections"]
    verdict = data["verdict"]
    assert verdict["verdict"] == "FAIL"
    fired = [h["rule"] for h in verdict["hits"]]
    # a count rule fires once, a per-detection rule once per detection it matched
    assert fired.count("any-defect") == 1 and fired.count("long") == len(detections)
    assert "in-top" not in fired
    [count] = [h for h in verdict["hits"] if h["rule"] == "any-defect"]
    assert count == {
        "rule": "any-defect",
        "verdict": "FAIL",
        "metric": "count",
        "value": len(detections),
        "class_name": "",
        "min": 1.0,
        "max": None,
        "detection": None,
        "zone": "",
    }
    for det in detections:  # length rules measure lengths, in mm with the scale
        m = det["measurement"]
        assert m["length_mm"] == pytest.approx(m["length_px"] / 10, abs=0.002)
        assert m["area_mm2"] == pytest.approx(m["area_px"] / 100, abs=0.002)
    table = invoke(*args)
    assert table.exit_code == 0, table.output
    out = table.stdout
    hits = len(verdict["hits"])
    assert f"verdict: FAIL ({hits} rule hits); scale 10 px/mm" in out
    assert f"any-defect (FAIL): all count {len(detections)} >= 1" in out
    first = detections[0]["measurement"]
    long_hit = f"long (REVIEW): {detections[0]['class_name']} #0 length_mm "
    assert long_hit + f"{first['length_mm']:.3g} >= 0.01" in out
    assert "length mm" in out and f"{first['length_mm']:.2f}" in out
    assert out.count("area mm²") == 2  # per detection, and the per-class totals
    # --pixels-per-mm replaces the file's scale
    rescaled = json.loads(invoke(*args, "--pixels-per-mm", "5", "--json").stdout)[0]["result"]
    assert rescaled["pixels_per_mm"] == 5


def test_infer_measure_without_rules_has_no_verdict(
    inference_server: RunningServer, images: list[Path]
) -> None:
    args = ["infer", str(images[0]), "--target", inference_server.address, "--measure"]
    data = json.loads(invoke(*args, "--json").stdout)[0]["result"]
    assert "verdict" not in data and "pixels_per_mm" not in data
    m = data["detections"][0]["measurement"]
    assert m["length_px"] > 0 and m["width_px"] > 0 and "length_mm" not in m
    table = invoke(*args).stdout
    assert "verdict" not in table and "length px" in table and "width px" in table


def test_infer_bad_rules_file_is_a_usage_error(
    inference_server: RunningServer, images: list[Path], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: big, metric: area_px, min: 5, verdict: MAYBE}\n")
    args = ["infer", str(images[0]), "--target", inference_server.address, "--rules", str(rules)]
    result = invoke(*args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --rules: invalid ") and "rule 'big'" in result.stderr
    # a rule the server refuses (an unknown class) fails the image with the rule's name
    rules.write_text(
        "rules:\n  - {name: dents, class: dent, metric: count, min: 1, verdict: FAIL}\n"
    )
    refused = invoke(*args)
    assert refused.exit_code == 1
    assert "INVALID_ARGUMENT" in refused.stderr and "rule 'dents'" in refused.stderr


def test_infer_save_annotated_with_a_verdict_adds_a_banner(
    inference_server: RunningServer, images: list[Path], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    out = tmp_path / "drawn.png"
    args = ["infer", str(images[0]), "--target", inference_server.address, "--rules", str(rules)]
    assert invoke(*args, "--save-annotated", str(out)).exit_code == 0
    drawn, original = cv2.imread(str(out)), cv2.imread(str(images[0]))
    assert drawn is not None and original is not None
    extra = drawn.shape[0] - original.shape[0]
    assert extra > 0 and drawn.shape[1] == original.shape[1]
    fail_bgr = VERDICT_COLORS[Verdict.FAIL][::-1]
    assert np.all(drawn[:extra] == fail_bgr, axis=2).mean() > 0.6  # a red FAIL banner
    # the "top" zone is outlined on the image
    assert np.any(np.all(drawn[extra : extra + 6] == ZONE_COLOR[::-1], axis=2))


def test_infer_stream_shows_each_frames_verdict(
    inference_server: RunningServer, images: list[Path], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    folder = images[0].parent
    args = ["infer-stream", str(folder), "--target", inference_server.address]
    result = invoke(*args, "--rules", str(rules))
    assert result.exit_code == 0, result.output
    *lines, summary = [line for line in result.stdout.splitlines() if line.strip()]
    for line in lines:
        assert "  FAIL (any-defect, long)  (" in line, line
    assert summary.endswith("; verdicts: 3× FAIL"), summary
    as_json = invoke(*args, "--rules", str(rules), "--json")
    *frames, last = [json.loads(line) for line in as_json.stdout.splitlines() if line.strip()]
    assert all(f["result"]["verdict"]["verdict"] == "FAIL" for f in frames)
    assert last["summary"]["verdicts"] == {"FAIL": 3}
    plain = invoke(*args).stdout.splitlines()[-1]
    assert "verdicts" not in plain


def test_infer_stream_tiles_large_frames(inference_server: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    frame = generate_sample(7000, 0, size=(1600, 1200), defect_unit=1.0, jpeg=False)
    assert cv2.imwrite(str(path), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    args = ["infer-stream", str(path), "--target", inference_server.address, "--json"]
    tiled = invoke(*args, "--tiling", "on", "--tile-overlap", "0")
    assert tiled.exit_code == 0, tiled.output
    first = json.loads(tiled.stdout.splitlines()[0])
    tiling = first["result"]["tiling"]
    assert (tiling["columns"], tiling["rows"], tiling["tiles"]) == (5, 4, 20)
    plain = json.loads(invoke(*args).stdout.splitlines()[0])
    assert "tiling" not in plain["result"]
