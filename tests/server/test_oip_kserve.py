"""KServe's own v2 gRPC client (``kserve.InferenceGRPCClient``) against visionrpc's Open Inference
Protocol, in a separate process: health, metadata, infer with JPEGs as a BYTES tensor (framed in
raw_input_contents and as bytes_contents), results equal to the typed Infer, and errors as gRPC
statuses.

Needs ``VISIONRPC_KSERVE_PYTHON`` (a Python with ``kserve``; ``.ci/run`` makes ``.venv-kserve``);
skipped without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.server.oip_clients import (
    KSERVE_PYTHON,
    assert_same_detections,
    needs_kserve,
    oip_server,
    run_probe,
    typed_infer,
)
from tests.server.test_inference_service import FOUND_SAMPLES, encode
from visionrpc.synthetic import generate_sample
from visionrpc.v1 import inference_pb2 as pb

pytestmark = needs_kserve

CONFIDENCE = 0.01
"""Low enough to keep a weak detection of the image below that the default threshold drops, so
the test also shows the confidence parameter (sent as a string: KServe has no double_param) acts."""


@dataclass
class Probed:
    seen: dict[str, Any]
    model: str
    typed: pb.InferResponse


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probed]:
    image = encode(generate_sample(*FOUND_SAMPLES[2]).image, ".jpg")
    path = tmp_path_factory.mktemp("images") / "part.jpg"
    path.write_bytes(image)
    with oip_server() as (address, model):
        seen = run_probe(
            KSERVE_PYTHON, "oip_kserve_probe.py", address, model, str(CONFIDENCE), str(path)
        )
        typed = typed_infer(address, model, image, CONFIDENCE)
    yield Probed(seen, model, typed)


def test_kserve_health(probed: Probed) -> None:
    seen = probed.seen
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert seen["unknown_model_ready"] is False


def test_kserve_model_metadata(probed: Probed) -> None:
    metadata = probed.seen["model_metadata"]
    assert metadata["name"] == probed.model
    assert metadata["platform"] == "visionrpc_vision"
    assert metadata["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": ["-1"]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "BOXES": ("FP32", ["-1", "4"]),
        "SCORES": ("FP32", ["-1"]),
        "CLASS_IDS": ("INT64", ["-1"]),
        "IMAGE_INDEX": ("INT64", ["-1"]),
        "MASKS": ("BYTES", ["-1"]),
        "MASK_ORIGINS": ("INT64", ["-1", "2"]),
        "MEASUREMENTS": ("FP32", ["-1", "6"]),
        "VERDICT": ("BYTES", ["-1"]),
        "VERDICT_HITS": ("BYTES", ["-1"]),
        "RESULT": ("BYTES", ["-1"]),
    }


def test_kserve_infer_equals_typed_infer(probed: Probed) -> None:
    assert any(d.score < 0.25 for d in probed.typed.detections), "pick a weaker image"
    assert_same_detections(probed.seen["raw"], probed.typed, copies=2)
    assert_same_detections(probed.seen["bytes_contents"], probed.typed)


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        (
            "wrong_datatype",
            "INVALID_ARGUMENT",
            "input 'IMAGE' must have datatype BYTES (encoded images), not 'FP32'",
        ),
        ("unknown_model", "NOT_FOUND", "model 'nope' is not loaded"),
        ("not_a_number", "INVALID_ARGUMENT", "parameter 'confidence' must be a number"),
    ],
)
def test_kserve_errors_are_grpc_statuses(
    probed: Probed, case: str, status: str, message: str
) -> None:
    refused = probed.seen[case]
    assert refused is not None, f"{case} was accepted"
    assert refused[0] == status, refused
    assert message in refused[1]
