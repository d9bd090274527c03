"""Ultralytics' Triton client against a model's raw view, run by tritonclient in its own process.

``oip_ultralytics_probe.py`` repeats what Ultralytics' ``TritonRemoteModel`` does with
tritonclient.grpc (Ultralytics itself needs torch). Set ``VISIONRPC_TRITONCLIENT_PYTHON`` to a
Python with ``tritonclient[grpc]``; the test is skipped without it (see test_oip_tritonclient.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import StartThreadedServer, make_settings
from tests.server.test_oip_raw import assert_same, model_path, onnxruntime_outputs, pixels
from visionrpc.runtime.repository import ModelRepository
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer

PYTHON = os.environ.get("VISIONRPC_TRITONCLIENT_PYTHON", "")
PROBE = Path(__file__).with_name("oip_ultralytics_probe.py")

pytestmark = pytest.mark.skipif(
    not PYTHON, reason="set VISIONRPC_TRITONCLIENT_PYTHON to a Python with tritonclient[grpc]"
)


@pytest.mark.parametrize("model", ["defects", "defects-fp32"])
def test_ultralytics_triton_client_reads_the_raw_view(
    start_threaded_server: StartThreadedServer, tmp_path: Path, model: str
) -> None:
    settings = make_settings(access_log=False)
    repository = ModelRepository(settings)
    inference = InferenceServicer(settings, repository)
    running = start_threaded_server([inference, OpenInferenceServicer(inference)], access_log=False)
    sample = pixels(1)
    np.save(tmp_path / "input.npy", sample)
    done = subprocess.run(
        [
            PYTHON,
            str(PROBE),
            running.address,
            f"{model}.raw",
            str(tmp_path / "input.npy"),
            str(tmp_path / "outputs.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    loaded = repository.get(model)
    assert (seen["input_names"], seen["input_formats"]) == (["images"], ["TYPE_FP32"])
    assert seen["output_names"] == ["output0", "output1"]
    assert (seen["platform"], seen["max_batch_size"]) == ("onnxruntime_onnx", loaded.max_batch_size)
    assert seen["names"] == {str(i): name for i, name in enumerate(loaded.class_names)}
    assert (seen["task"], seen["imgsz"], seen["stride"]) == ("segment", [320, 320], 32)
    vision = seen["vision_config"]
    assert (vision["platform"], vision["input"][0]["data_type"]) == (
        "visionrpc_vision",
        "TYPE_STRING",
    )
    with np.load(tmp_path / "outputs.npz") as got:
        assert_same(dict(got), onnxruntime_outputs(model_path(model), sample))
