"""tritonclient.grpc.aio against visionrpc's Open Inference Protocol, in a separate process:
concurrent infers equal the typed Infer, and bad input reaches the asyncio client as a clear
INVALID_ARGUMENT while the server goes on serving.

Needs ``VISIONRPC_TRITONCLIENT_PYTHON`` (a Python with ``tritonclient[grpc]``; ``.ci/run`` makes
``.venv-tritonclient``); skipped without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.server.oip_clients import (
    TRITONCLIENT_PYTHON,
    assert_same_detections,
    needs_tritonclient,
    oip_server,
    run_probe,
    typed_infer,
)
from tests.server.test_inference_service import FOUND_SAMPLES, LOW_CONF, encode
from visionrpc.synthetic import generate_sample
from visionrpc.v1 import inference_pb2 as pb

pytestmark = needs_tritonclient


@dataclass
class Probed:
    seen: dict[str, Any]
    model: str
    images: list[bytes]
    typed: list[pb.InferResponse]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probed]:
    """One run of the aio probe (two images, 8 concurrent infers, the bad requests) on one
    server, and the typed Infer's answers for the same images."""
    folder = tmp_path_factory.mktemp("images")
    images = [encode(generate_sample(*FOUND_SAMPLES[i]).image, ".jpg") for i in (0, 1)]
    paths = [folder / f"part{i}.jpg" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        path.write_bytes(image)
    with oip_server() as (address, model):
        seen = run_probe(
            TRITONCLIENT_PYTHON,
            "oip_tritonclient_aio_probe.py",
            address,
            model,
            str(LOW_CONF),
            *map(str, paths),
        )
        typed = [typed_infer(address, model, image, LOW_CONF) for image in images]
    yield Probed(seen, model, images, typed)


def test_aio_health_and_metadata(probed: Probed) -> None:
    seen = probed.seen
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert seen["model_metadata"]["name"] == probed.model
    assert seen["model_metadata"]["inputs"] == [
        {"name": "IMAGE", "datatype": "BYTES", "shape": ["-1"]}
    ]
    assert [o["name"] for o in seen["model_metadata"]["outputs"]] == [
        "BOXES",
        "SCORES",
        "CLASS_IDS",
        "IMAGE_INDEX",
        "MASKS",
        "MASK_ORIGINS",
        "MEASUREMENTS",
        "VERDICT",
        "VERDICT_HITS",
        "RESULT",
    ]


def test_aio_concurrent_infers_equal_typed_infer(probed: Probed) -> None:
    calls = probed.seen["concurrent"]
    assert len(calls) == 8
    assert {c["image"] for c in calls} == {0, 1}
    assert probed.typed[0].detections != probed.typed[1].detections
    for call in calls:
        assert_same_detections(call["outputs"], probed.typed[call["image"]])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong_datatype", "input 'IMAGE' must have datatype BYTES (encoded images), not 'UINT8'"),
        ("wrong_shape", "input 'IMAGE' has shape [3] (3 element(s)) but 1 image(s) were sent"),
        (
            "bad_framing",
            "element 0 of raw_input_contents announces {claimed} bytes but only {sent} follow",
        ),
        ("unknown_name", "the vision view takes exactly one input named 'IMAGE' (got 'PICTURE')"),
    ],
)
def test_aio_bad_input_is_invalid_argument(probed: Probed, case: str, message: str) -> None:
    sent = len(probed.images[0])
    refused = probed.seen[case]
    assert refused is not None, f"{case} was accepted"
    status, text = refused
    assert status == "StatusCode.INVALID_ARGUMENT", text
    assert message.format(claimed=sent + 100, sent=sent) in text


def test_aio_server_keeps_serving_after_bad_input(probed: Probed) -> None:
    assert_same_detections(probed.seen["after_errors"], probed.typed[0])
