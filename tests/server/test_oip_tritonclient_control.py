"""tritonclient.grpc's model control (load_model, unload_model, get_model_repository_index,
is_model_ready with a version) against visionrpc, in tritonclient's own interpreter; skipped
unless ``VISIONRPC_TRITONCLIENT_PYTHON`` names one (see test_oip_tritonclient.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import StartThreadedServer, make_settings
from visionrpc.runtime.repository import packaged_models_dir
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer

PYTHON = os.environ.get("VISIONRPC_TRITONCLIENT_PYTHON", "")
PROBE = Path(__file__).with_name("oip_tritonclient_control_probe.py")

pytestmark = pytest.mark.skipif(
    not PYTHON, reason="set VISIONRPC_TRITONCLIENT_PYTHON to a Python with tritonclient[grpc]"
)


def test_tritonclient_loads_unloads_and_reloads(
    start_threaded_server: StartThreadedServer, tmp_path: Path
) -> None:
    folder = tmp_path / "models" / "defects"
    folder.mkdir(parents=True)
    shutil.copyfile(packaged_models_dir() / "defects" / "model.onnx", folder / "model.onnx")
    (folder / "model.yaml").write_text('version: "1"\n', encoding="utf-8")
    settings = {"access_log": False, "models_dir": folder.parent}
    inference = InferenceServicer(make_settings(**settings))
    running = start_threaded_server([inference, OpenInferenceServicer(inference)], **settings)
    done = subprocess.run(
        [PYTHON, str(PROBE), running.address, "defects", str(folder / "model.yaml")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    ready = {"version": "1", "state": "READY"}
    assert seen["index"] == {
        "models": [{"name": "defects", **ready}, {"name": "defects.raw", **ready}]
    }
    assert seen["ready_after_unload"] is False
    unloaded = {"version": "1", "state": "UNAVAILABLE", "reason": "unloaded by request"}
    assert seen["index_after_unload"]["models"] == [
        {"name": "defects", **unloaded},
        {"name": "defects.raw", **unloaded},
    ]
    status, message = seen["metadata_after_unload"]
    assert status == "StatusCode.NOT_FOUND" and "not loaded (unloaded by request)" in message
    status, message = seen["load_with_config"]
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "parameter(s) config are not supported" in message

    assert (seen["ready_v2"], seen["ready_v1"]) == (True, False)
    assert seen["metadata_versions"] == ["2"]
    assert seen["versions_after_reload"] == ["3"]
    assert {m["version"] for m in seen["ready_index"]["models"]} == {"3"}
