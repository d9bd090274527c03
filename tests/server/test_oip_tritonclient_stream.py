"""tritonclient's streams (sync callback stream and aio stream_infer) and its statistics call
against visionrpc, in a separate process (see test_oip_tritonclient.py for the interpreter)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

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
PROBE = Path(__file__).with_name("oip_tritonclient_stream_probe.py")

pytestmark = pytest.mark.skipif(
    not PYTHON, reason="set VISIONRPC_TRITONCLIENT_PYTHON to a Python with tritonclient[grpc]"
)


def test_tritonclient_streams_and_reads_statistics(
    start_threaded_server: StartThreadedServer, tmp_path: Path
) -> None:
    settings = make_settings(access_log=False)
    inference = InferenceServicer(settings)
    running = start_threaded_server([inference, OpenInferenceServicer(inference)], access_log=False)
    image = encode(generate_sample(*FOUND_SAMPLES[0]).image, ".jpg")
    (tmp_path / "part.jpg").write_bytes(image)
    model = inference.repository.default_name
    version = inference.repository.describe(model).version
    done = subprocess.run(
        [PYTHON, str(PROBE), running.address, model, str(tmp_path / "part.jpg"), str(LOW_CONF)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    with grpc.insecure_channel(running.address) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)
        request = pb.InferRequest(model=model, image_bytes=image, confidence_threshold=LOW_CONF)
        typed = stub.Infer(request)
        request.return_masks, request.mask_format = True, pb.MASK_FORMAT_PNG
        with_masks = stub.Infer(request)
    scores = pytest.approx([d.score for d in typed.detections], abs=1e-6)
    assert len(typed.detections) > 0

    # sync: answers in request order; the bad one is an error and the stream went on
    a, b, c, d = seen["sync"]
    assert [a["id"], c["id"], d["id"]] == ["a", "c", "d"]
    assert a["error"] is None and c["error"] is None and d["error"] is None
    assert "must have datatype BYTES" in b["error"]
    assert a["scores"] == scores and c["scores"] == scores
    n = len(typed.detections)
    assert d["image_index"] == [0] * n + [1] * n

    # aio: the same, with an unknown model in the middle and masks and RESULT at the end
    x, y, z = seen["aio"]["answers"]
    assert (x["id"], x["error"], z["id"], z["error"]) == ("x", None, "z", None)
    assert x["scores"] == scores and z["scores"] == scores
    assert "nope" in y["error"]
    masks = [base64.b64decode(m) for m in seen["aio"]["masks"]]
    assert masks == [det.mask.png.data for det in with_masks.detections]
    assert seen["aio"]["mask_origins"] == [
        [det.mask.png.x, det.mask.png.y] for det in with_masks.detections
    ]
    (result_raw,) = seen["aio"]["result"]
    result = pb.InferResponse.FromString(base64.b64decode(result_raw))
    for message in (result, with_masks):
        message.ClearField("timings")
        message.ClearField("request_id")
    assert result == with_masks

    # statistics as tritonclient reads them (JSON: uint64 as strings, zeros left out)
    (stats,) = seen["statistics"]["model_stats"]
    assert (stats["name"], stats["version"]) == (model, version)
    images_answered = 1 + 1 + 2 + 1 + 1  # a, c, d (two images), x, z
    assert int(stats["inference_count"]) == images_answered
    inference_stats: dict[str, Any] = stats["inference_stats"]
    assert int(inference_stats["success"]["count"]) == images_answered
    assert int(inference_stats["compute_infer"]["count"]) == images_answered
    assert int(inference_stats["compute_infer"]["ns"]) > 0
    batches = stats["batch_stats"]
    assert sum(int(s["batch_size"]) * int(s["compute_infer"]["count"]) for s in batches) == (
        images_answered
    )
    assert int(stats["execution_count"]) == sum(int(s["compute_infer"]["count"]) for s in batches)
    every = [m["name"] for m in seen["all_statistics"]["model_stats"]]
    assert every == sorted(inference.repository.names) and model in every
