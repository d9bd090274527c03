"""The vision view's opt-in outputs over a real server: MASKS / MASK_ORIGINS (parameter ``masks``)
and RESULT (named in ``outputs``), each compared with what the typed Infer returns for the same
image; models that only detect refuse masks and do not list them."""

from __future__ import annotations

import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from tests.helpers import StartServer, make_settings
from tests.runtime.onnx_builders import dent_model
from tests.server.test_inference_service import FOUND_SAMPLES, LOW_CONF, encode
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.synthetic import generate_sample
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc, inference_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb

JPEG_A = encode(generate_sample(*FOUND_SAMPLES[0]).image, ".jpg")
JPEG_B = encode(generate_sample(*FOUND_SAMPLES[1]).image, ".jpg")
SEGMENT, DETECT = "defects", "dent"


@dataclass
class Stubs:
    oip: grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub
    typed: inference_pb2_grpc.InferenceMethodsAsyncStub


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped segmentation model and a tiny model that only detects."""
    root = tmp_path_factory.mktemp("models")
    shipped = resources.files("visionrpc") / "models" / SEGMENT
    with resources.as_file(shipped) as folder:
        shutil.copytree(folder, root / SEGMENT)
    dent_model(root / f"{DETECT}.onnx")
    return root


@pytest.fixture
async def stubs(start_server: StartServer, models: Path) -> AsyncIterator[Stubs]:
    overrides = {"models_dir": models, "access_log": False, "default_model": SEGMENT}
    inference = InferenceServicer(make_settings(**overrides))
    running = await start_server([inference, OpenInferenceServicer(inference)], **overrides)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Stubs(
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
            inference_pb2_grpc.InferenceMethodsStub(channel),
        )


def unframe(raw: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(raw):
        (size,) = struct.unpack_from("<I", raw, at)
        out.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return out


def infer_request(
    model: str, *images: bytes, masks: bool = False, outputs: tuple[str, ...] = ()
) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model, id="req-7")
    request.parameters["confidence"].double_param = LOW_CONF
    if masks:
        request.parameters["masks"].bool_param = True
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[len(images)])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in images))
    for name in outputs:
        request.outputs.add(name=name)
    return request


def by_name(
    response: oip.ModelInferResponse,
) -> dict[str, tuple[oip.ModelInferResponse.InferOutputTensor, bytes]]:
    return {
        t.name: (t, raw)
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


async def typed(stubs: Stubs, image: bytes, masks: bool) -> pb.InferResponse:
    return await stubs.typed.Infer(
        pb.InferRequest(
            model=SEGMENT,
            image_bytes=image,
            confidence_threshold=LOW_CONF,
            return_masks=masks,
            mask_format=pb.MASK_FORMAT_PNG,
        )
    )


async def test_masks_are_the_typed_apis_png_masks_with_their_origins(stubs: Stubs) -> None:
    response = await stubs.oip.ModelInfer(infer_request(SEGMENT, JPEG_A, JPEG_B, masks=True))
    out = by_name(response)
    assert list(out) == ["BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX", "MASKS", "MASK_ORIGINS"]
    masks_tensor, masks_raw = out["MASKS"]
    origins_tensor, origins_raw = out["MASK_ORIGINS"]
    pngs = unframe(masks_raw)
    origins = np.frombuffer(origins_raw, "<i8").reshape(tuple(origins_tensor.shape))
    index = np.frombuffer(out["IMAGE_INDEX"][1], "<i8")
    assert (masks_tensor.datatype, list(masks_tensor.shape)) == ("BYTES", [len(index)])
    assert (origins_tensor.datatype, origins.shape) == ("INT64", (len(index), 2))
    expected = [
        d for image in (JPEG_A, JPEG_B) for d in (await typed(stubs, image, True)).detections
    ]
    assert len(expected) == len(pngs) > 0
    for detection, png, origin in zip(expected, pngs, origins, strict=True):
        assert png == detection.mask.png.data
        assert origin.tolist() == [detection.mask.png.x, detection.mask.png.y]
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and set(np.unique(decoded)) <= {0, 255}
        box = detection.box  # the PNG covers the box region
        assert decoded.shape[1] <= int(np.ceil(box.x_max)) - int(box.x_min) + 1


@pytest.mark.parametrize("masks", [False, True], ids=["detections", "with masks"])
async def test_result_is_what_infer_returns_for_each_image(stubs: Stubs, masks: bool) -> None:
    outputs = ("RESULT", "SCORES")
    response = await stubs.oip.ModelInfer(
        infer_request(SEGMENT, JPEG_A, JPEG_B, masks=masks, outputs=outputs)
    )
    out = by_name(response)
    assert list(out) == ["SCORES", "RESULT"]  # the order ModelMetadata lists them in
    tensor, raw = out["RESULT"]
    assert (tensor.datatype, list(tensor.shape)) == ("BYTES", [2])
    results = [pb.InferResponse.FromString(element) for element in unframe(raw)]
    for result, image in zip(results, (JPEG_A, JPEG_B), strict=True):
        expected = await typed(stubs, image, masks)
        assert result.request_id == "req-7"  # the protocol request's id
        for message in (result, expected):
            message.ClearField("timings")
            message.ClearField("request_id")
        assert result == expected
        assert len(result.detections) > 0
        assert all(d.HasField("mask") == masks for d in result.detections)


async def test_the_default_answer_holds_neither_masks_nor_result(stubs: Stubs) -> None:
    response = await stubs.oip.ModelInfer(infer_request(SEGMENT, JPEG_A))
    assert [t.name for t in response.outputs] == ["BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX"]


async def test_metadata_lists_exactly_the_outputs_each_model_can_return(stubs: Stubs) -> None:
    segment = await stubs.oip.ModelMetadata(oip.ModelMetadataRequest(name=SEGMENT))
    detect = await stubs.oip.ModelMetadata(oip.ModelMetadataRequest(name=DETECT))
    detections = ["BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX"]
    inspection = ["MEASUREMENTS", "VERDICT", "VERDICT_HITS"]
    masks = ["MASKS", "MASK_ORIGINS"]
    assert [t.name for t in segment.outputs] == [*detections, *masks, *inspection, "RESULT"]
    assert [t.name for t in detect.outputs] == [*detections, *inspection, "RESULT"]
    # and each can come back: ask for all the segmentation model lists
    names = tuple(t.name for t in segment.outputs)
    response = await stubs.oip.ModelInfer(infer_request(SEGMENT, JPEG_A, masks=True, outputs=names))
    assert [(t.name, t.datatype) for t in response.outputs] == [
        (t.name, t.datatype) for t in segment.outputs
    ]


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (infer_request(DETECT, JPEG_A, masks=True), ["'masks'", "'dent' only detects"]),
        (infer_request(DETECT, JPEG_A, outputs=("MASKS",)), ["MASKS", "only detects"]),
        (infer_request(SEGMENT, JPEG_A, outputs=("MASKS",)), ["MASKS", "'masks'", "true"]),
        (infer_request(SEGMENT, JPEG_A, outputs=("MASK",)), ["MASK", "MASK_ORIGINS", "RESULT"]),
    ],
    ids=["masks on a detector", "MASKS of a detector", "MASKS without masks", "unknown output"],
)
async def test_masks_that_cannot_come_back_are_invalid_argument(
    stubs: Stubs, request_: oip.ModelInferRequest, words: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs.oip.ModelInfer(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in (caught.value.details() or ""), caught.value.details()
    response = await stubs.oip.ModelInfer(infer_request(DETECT, JPEG_A))  # still serving
    assert len(response.outputs) == 4
