"""The benchmark finds models with the server's own scan of the repository directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness import models as bench_models
from tests.runtime.onnx_builders import constant_model, yolov8_detect_outputs
from visionrpc.runtime.repository import ModelRepository
from visionrpc.settings import Settings


def tiny(path: Path) -> Path:
    out = yolov8_detect_outputs([(40, 40, 20, 20)], [0], [0.9], num_classes=1)
    return constant_model(path, [out], input_size=(64, 64), names={0: "dent"})


def test_bench_sees_what_the_server_serves(tmp_path: Path) -> None:
    tiny(tmp_path / "plain.onnx")
    tiny(tmp_path / "tuned" / "model.onnx")
    (tmp_path / "tuned" / "model.yaml").write_text("confidence_threshold: 0.4\nmax_detections: 9\n")
    found = bench_models.discover(tmp_path)
    served = ModelRepository(Settings(models_dir=tmp_path, default_model="plain"))
    assert list(found) == served.names == ["plain", "tuned"]
    for name, entry in found.items():
        config = served.get(name).config
        assert (entry.confidence, entry.iou, entry.max_detections) == (
            config.confidence_threshold,
            config.iou_threshold,
            config.max_detections,
        )
        assert entry.onnx == served.get(name).path and not entry.quantized
    assert found["tuned"].entry == tmp_path / "tuned"


def test_bench_refuses_what_the_server_refuses(tmp_path: Path) -> None:
    tiny(tmp_path / "m" / "model.onnx")
    (tmp_path / "m" / "model.yaml").write_text("confidence: 0.3\n")  # a typo the server refuses
    with pytest.raises(ValueError, match="confidence: Extra inputs are not permitted"):
        bench_models.discover(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        bench_models.discover(tmp_path / "missing")
