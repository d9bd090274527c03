"""tritonclient.grpc itself against visionrpc's Open Inference Protocol, in a separate process.

tritonclient pins its own protobuf, so it runs from its own interpreter: set
``VISIONRPC_TRITONCLIENT_PYTHON`` to a Python that has ``tritonclient[grpc]`` (e.g. a venv made with
``python -m venv /tmp/triton && /tmp/triton/bin/pip install 'tritonclient[grpc]'``); the test is
skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.helpers import StartThreadedServer, make_settings
from tests.server.test_inference_service import FOUND_SAMPLES, LOW_CONF, encode
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.synthetic import generate_sample
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc

PYTHON = os.environ.get("VISIONRPC_TRITONCLIENT_PYTHON", "")
PROBE = Path(__file__).with_name("oip_tritonclient_probe.py")

pytestmark = pytest.mark.skipif(
    not PYTHON, reason="set VISIONRPC_TRITONCLIENT_PYTHON to a Python with tritonclient[grpc]"
)


def test_tritonclient_uses_visionrpc_unchanged(
    start_threaded_server: StartThreadedServer, tmp_path: Path
) -> None:
    settings = make_settings(access_log=False)
    inference = InferenceServicer(settings)
    running = start_threaded_server([inference, OpenInferenceServicer(inference)], access_log=False)
    image = encode(generate_sample(*FOUND_SAMPLES[0]).image, ".jpg")
    (tmp_path / "part.jpg").write_bytes(image)
    model = inference.repository.default_name
    done = subprocess.run(
        [PYTHON, str(PROBE), running.address, model, str(tmp_path / "part.jpg"), str(LOW_CONF)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert seen["unknown_model_ready"] is False
    assert seen["server_metadata"]["name"] == "visionrpc"
    assert seen["model_metadata"]["inputs"] == [
        {"name": "IMAGE", "datatype": "BYTES", "shape": ["-1"]}
    ]
    assert seen["wrong_datatype"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "must have datatype BYTES" in seen["wrong_datatype"][1]

    with grpc.insecure_channel(running.address) as channel:
        typed = inference_pb2_grpc.InferenceMethodsStub(channel).Infer(
            pb.InferRequest(model=model, image_bytes=image, confidence_threshold=LOW_CONF)
        )
    out = seen["outputs"]
    assert out["IMAGE_INDEX"] == [0] * len(typed.detections) + [1] * len(typed.detections)
    assert len(typed.detections) > 0
    for copy in range(2):
        rows = range(copy * len(typed.detections), (copy + 1) * len(typed.detections))
        for d, row in zip(typed.detections, rows, strict=True):
            assert out["CLASS_IDS"][row] == d.class_id
            assert out["SCORES"][row] == pytest.approx(d.score, abs=1e-6)
            b = d.box
            assert out["BOXES"][row] == pytest.approx(
                [b.x_min, b.y_min, b.x_max, b.y_max], abs=1e-3
            )
