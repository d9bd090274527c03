"""Running real Open Inference Protocol clients (tritonclient, KServe) from their own interpreters.

Each client pins its own protobuf, so it cannot share the project's venv: a test writes what it
needs to files, runs a probe script (``oip_*_probe.py`` beside this module, importing nothing from
visionrpc) under the client's Python, and reads back the JSON the probe printed. ``.ci/run`` makes
the interpreters (``.venv-tritonclient``, ``.venv-kserve``) and exports their paths; without them
the tests skip and say which variable to set.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.helpers import make_settings
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.local import ServerThread
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc

HERE = Path(__file__).parent
PROBE_TIMEOUT_S = 180.0


def needs_python(variable: str, install: str) -> pytest.MarkDecorator:
    """Skip mark: ``variable`` must name an existing Python that has ``install``."""
    python = os.environ.get(variable, "")
    if not python:
        reason = f"set {variable} to a Python that has {install} (.ci/run makes one)"
    elif not Path(python).is_file():
        reason = f"{variable}={python} does not exist (see .ci/run's /tmp/visionrpc-ci-*.log)"
    else:
        reason = ""
    return pytest.mark.skipif(bool(reason), reason=reason)


TRITONCLIENT_PYTHON = os.environ.get("VISIONRPC_TRITONCLIENT_PYTHON", "")
KSERVE_PYTHON = os.environ.get("VISIONRPC_KSERVE_PYTHON", "")
needs_tritonclient = needs_python("VISIONRPC_TRITONCLIENT_PYTHON", "tritonclient[grpc]")
needs_kserve = needs_python("VISIONRPC_KSERVE_PYTHON", "kserve")


def run_probe(python: str, script: str | Path, *args: str) -> dict[str, Any]:
    """Run ``script`` (a path, or a file name beside this module) under ``python`` with ``args``
    and return the JSON object it printed; fail with its stderr when it exits non-zero."""
    path = Path(script) if Path(script).is_absolute() else HERE / script
    done = subprocess.run(
        [python, str(path), *args],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{path.name} exited {done.returncode}:\n{done.stderr}"
    seen = json.loads(done.stdout)
    assert isinstance(seen, dict), done.stdout
    return seen


@contextmanager
def oip_server(**overrides: Any) -> Iterator[tuple[str, str]]:
    """A server with InferenceMethods and the Open Inference Protocol on the shipped model (for
    module-scoped fixtures, so one probe run serves several tests): (address, model name)."""
    settings = make_settings(**{"access_log": False, **overrides})
    thread = ServerThread()
    try:
        inference = InferenceServicer(settings)
        server = thread.start(settings, [inference, OpenInferenceServicer(inference)])
        yield server.address, inference.repository.default_name
    finally:
        thread.close()


def typed_infer(address: str, model: str, image: bytes, confidence: float) -> pb.InferResponse:
    """The typed ``visionrpc.v1.InferenceMethods/Infer`` answer the protocol's must equal."""
    with grpc.insecure_channel(address) as channel:
        response: pb.InferResponse = inference_pb2_grpc.InferenceMethodsStub(channel).Infer(
            pb.InferRequest(model=model, image_bytes=image, confidence_threshold=confidence)
        )
    return response


def assert_same_detections(
    outputs: dict[str, list[Any]], typed: pb.InferResponse, copies: int = 1
) -> None:
    """``outputs`` (BOXES, SCORES, CLASS_IDS, IMAGE_INDEX as lists) hold the typed detections
    once per image, for ``copies`` copies of the same image in one request."""
    n = len(typed.detections)
    assert n > 0, "the image should show detections, or the comparison proves nothing"
    assert outputs["IMAGE_INDEX"] == [i for i in range(copies) for _ in range(n)]
    for copy in range(copies):
        for d, row in zip(typed.detections, range(copy * n, (copy + 1) * n), strict=True):
            assert outputs["CLASS_IDS"][row] == d.class_id
            assert outputs["SCORES"][row] == pytest.approx(d.score, abs=1e-6)
            b = d.box
            assert outputs["BOXES"][row] == pytest.approx(
                [b.x_min, b.y_min, b.x_max, b.y_max], abs=1e-3
            )
