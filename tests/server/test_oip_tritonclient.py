"""tritonclient.grpc itself against visionrpc's Open Inference Protocol, in a separate process.

tritonclient pins its own protobuf, so it runs from its own interpreter: set
``VISIONRPC_TRITONCLIENT_PYTHON`` to a Python that has ``tritonclient[grpc]`` (``.ci/run`` makes
``.venv-tritonclient``); the test is skipped without it.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import StartThreadedServer, make_settings
from tests.server.oip_clients import (
    TRITONCLIENT_PYTHON,
    assert_same_detections,
    needs_tritonclient,
    run_probe,
    typed_infer,
)
from tests.server.test_inference_service import FOUND_SAMPLES, LOW_CONF, encode
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.synthetic import generate_sample

pytestmark = needs_tritonclient


def test_tritonclient_uses_visionrpc_unchanged(
    start_threaded_server: StartThreadedServer, tmp_path: Path
) -> None:
    settings = make_settings(access_log=False)
    inference = InferenceServicer(settings)
    running = start_threaded_server([inference, OpenInferenceServicer(inference)], access_log=False)
    image = encode(generate_sample(*FOUND_SAMPLES[0]).image, ".jpg")
    (tmp_path / "part.jpg").write_bytes(image)
    model = inference.repository.default_name
    seen = run_probe(
        TRITONCLIENT_PYTHON,
        "oip_tritonclient_probe.py",
        running.address,
        model,
        str(tmp_path / "part.jpg"),
        str(LOW_CONF),
    )
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert seen["unknown_model_ready"] is False
    assert seen["server_metadata"]["name"] == "visionrpc"
    assert seen["model_metadata"]["inputs"] == [
        {"name": "IMAGE", "datatype": "BYTES", "shape": ["-1"]}
    ]
    assert seen["wrong_datatype"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "must have datatype BYTES" in seen["wrong_datatype"][1]

    typed = typed_infer(running.address, model, image, LOW_CONF)
    assert_same_detections(seen["outputs"], typed, copies=2)
