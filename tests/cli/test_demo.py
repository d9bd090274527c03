"""``visionrpc demo``: the image it ships matches the generator, and it finds what was planted."""

from __future__ import annotations

import importlib.resources
import json
import re
import subprocess
import sys

import cv2
import numpy as np
from typer.testing import CliRunner, Result

from tests.helpers import RunningServer
from tools.make_demo_asset import DEMO_SAMPLE, describe
from visionrpc.cli.main import app
from visionrpc.synthetic import generate_sample

runner = CliRunner()
ASSETS = importlib.resources.files("visionrpc.cli").joinpath("assets")
BOX = re.compile(r"^\s+(scratch|spot|crack)\s+box=\((\d+), (\d+), (\d+), (\d+)\)", re.M)


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_shipped_description_matches_the_generator() -> None:
    shipped = json.loads(ASSETS.joinpath("demo.json").read_text(encoding="utf-8"))
    assert shipped == describe(generate_sample(*DEMO_SAMPLE), *DEMO_SAMPLE)
    assert (shipped["seed"], shipped["index"]) == (1001, 11) and shipped["defects"]


def test_shipped_jpeg_is_the_generated_image() -> None:
    data = ASSETS.joinpath("demo.jpg").read_bytes()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    generated = generate_sample(*DEMO_SAMPLE).image
    assert decoded.shape == generated.shape
    # JPEG libraries may decode a pixel or so differently; another image is far off
    difference = np.abs(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(int) - generated)
    assert difference.mean() < 3.0


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_demo_local_runs_every_section_and_finds_the_planted_defects() -> None:
    result = invoke("demo", "--local")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "health: SERVING" in out
    for title in ("Ping", "StreamNumbers", "UploadNumbers", "Chat", "Infer"):
        assert f"== {title}" in out
    assert "[10, 15, 20, 25, 30]" in out and "in the same order: True" in out
    infer_section = out.split("== Infer", 1)[1]
    planted_text, found_text = infer_section.split("found (", 1)
    planted = [(m[0], tuple(map(int, m[1:]))) for m in BOX.findall(planted_text)]
    found = [(m[0], tuple(map(int, m[1:]))) for m in BOX.findall(found_text)]
    shipped = json.loads(ASSETS.joinpath("demo.json").read_text(encoding="utf-8"))
    assert [name for name, _ in planted] == [d["class_name"] for d in shipped["defects"]]
    for name, box in planted:  # each planted defect is found, same class, same place
        assert any(n == name and _iou(box, b) > 0.5 for n, b in found), (name, box, found)
    assert re.search(r"score=0\.\d\d mask=\d+px", found_text)


def test_demo_skips_inference_on_a_core_only_server(threaded_server: RunningServer) -> None:
    result = invoke("demo", "--target", threaded_server.address)
    assert result.exit_code == 0, result.output
    assert "skipped: this server does not offer visionrpc.v1.InferenceMethods" in result.stdout


def test_demo_local_and_target_conflict() -> None:
    result = runner.invoke(app, ["demo", "--local", "--target", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "either --target or --local" in result.output


def test_demo_local_without_the_server_extra_says_what_to_install() -> None:
    # as in a client-only install: ONNX Runtime cannot be imported
    code = (
        "import sys; sys.modules['onnxruntime'] = None; from visionrpc.cli.main import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "demo", "--local"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == (
        "error: --local needs the server extra (onnxruntime is missing): "
        'pip install "visionrpc[server]"\n'
    )
