"""inference.GRPCInferenceService (Open Inference Protocol, first slice) over a real server.

The vision view's detections must equal the typed Infer's for the same image; bad tensors get
INVALID_ARGUMENT naming the input, unknown models NOT_FOUND, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from tests.helpers import StartServer, make_settings
from tests.server.test_inference_service import FOUND_SAMPLES, LOW_CONF, encode
from tests.server.test_metrics import scrape
from visionrpc import __version__
from visionrpc.runtime.repository import ModelRepository
from visionrpc.server import auth
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.synthetic import generate_sample
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc, inference_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb

JPEG_A = encode(generate_sample(*FOUND_SAMPLES[0]).image, ".jpg")
JPEG_B = encode(generate_sample(*FOUND_SAMPLES[1]).image, ".jpg")


@dataclass
class Stubs:
    oip: grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub
    typed: inference_pb2_grpc.InferenceMethodsAsyncStub
    model: str
    version: str
    channel: grpc.aio.Channel


@pytest.fixture(scope="module")
def shipped() -> ModelRepository:
    return ModelRepository(make_settings())


@pytest.fixture
async def stubs(start_server: StartServer, shipped: ModelRepository) -> AsyncIterator[Stubs]:
    settings = make_settings(access_log=False)
    inference = InferenceServicer(settings, shipped)
    running = await start_server([inference, OpenInferenceServicer(inference)], access_log=False)
    described = shipped.describe()
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Stubs(
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
            inference_pb2_grpc.InferenceMethodsStub(channel),
            described.name,
            described.version,
            channel,
        )


def framed(*images: bytes) -> bytes:
    """Triton's BYTES framing, as tritonclient packs it."""
    return b"".join(struct.pack("<I", len(i)) + i for i in images)


def infer_request(model: str, *images: bytes, raw: bool = True) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model, id="req-1")
    request.parameters["confidence"].double_param = LOW_CONF
    tensor = request.inputs.add(name="IMAGE", datatype="BYTES", shape=[len(images)])
    if raw:
        request.raw_input_contents.append(framed(*images))
    else:
        tensor.contents.bytes_contents.extend(images)
    return request


def outputs(response: oip.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": "<f4", "INT64": "<i8"}
    return {
        t.name: np.frombuffer(raw, dtype=dtypes[t.datatype]).reshape(tuple(t.shape))
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


async def typed(stubs: Stubs, image: bytes) -> pb.InferResponse:
    request = pb.InferRequest(model=stubs.model, image_bytes=image, confidence_threshold=LOW_CONF)
    return await stubs.typed.Infer(request)


def assert_equal(out: dict[str, np.ndarray], index: int, expected: pb.InferResponse) -> None:
    rows = out["IMAGE_INDEX"] == index
    boxes, scores, classes = out["BOXES"][rows], out["SCORES"][rows], out["CLASS_IDS"][rows]
    assert len(expected.detections) == len(boxes) > 0
    for d, box, score, class_id in zip(expected.detections, boxes, scores, classes, strict=True):
        assert d.class_id == class_id
        assert d.score == pytest.approx(float(score), abs=1e-6)
        b = d.box
        assert (b.x_min, b.y_min, b.x_max, b.y_max) == pytest.approx(box.tolist(), abs=1e-3)


async def assert_still_serves(stubs: Stubs) -> None:
    response = await stubs.oip.ModelInfer(infer_request(stubs.model, JPEG_A))
    assert len(outputs(response)["SCORES"]) > 0


async def test_live_ready_and_model_ready(stubs: Stubs) -> None:
    assert (await stubs.oip.ServerLive(oip.ServerLiveRequest())).live
    assert (await stubs.oip.ServerReady(oip.ServerReadyRequest())).ready
    assert (await stubs.oip.ModelReady(oip.ModelReadyRequest(name=stubs.model))).ready
    same = oip.ModelReadyRequest(name=stubs.model, version=stubs.version)
    assert (await stubs.oip.ModelReady(same)).ready
    assert not (await stubs.oip.ModelReady(oip.ModelReadyRequest(name="nope"))).ready
    other = oip.ModelReadyRequest(name=stubs.model, version="not-" + stubs.version)
    assert not (await stubs.oip.ModelReady(other)).ready


async def test_server_metadata_lists_the_extensions_implemented(stubs: Stubs) -> None:
    reply = await stubs.oip.ServerMetadata(oip.ServerMetadataRequest())
    assert (reply.name, reply.version) == ("visionrpc", __version__)
    assert set(reply.extensions) == {
        "model_configuration",
        "parameters",
        "statistics",
        "model_repository",
    }


async def test_model_metadata_describes_the_vision_view(stubs: Stubs) -> None:
    reply = await stubs.oip.ModelMetadata(oip.ModelMetadataRequest(name=stubs.model))
    assert (reply.name, list(reply.versions), reply.platform) == (
        stubs.model,
        [stubs.version],
        "visionrpc_vision",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.inputs] == [("IMAGE", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.outputs] == [
        ("BOXES", "FP32", [-1, 4]),
        ("SCORES", "FP32", [-1]),
        ("CLASS_IDS", "INT64", [-1]),
        ("IMAGE_INDEX", "INT64", [-1]),
        ("MASKS", "BYTES", [-1]),
        ("MASK_ORIGINS", "INT64", [-1, 2]),
        ("MEASUREMENTS", "FP32", [-1, 6]),
        ("VERDICT", "BYTES", [-1]),
        ("VERDICT_HITS", "BYTES", [-1]),
        ("RESULT", "BYTES", [-1]),
    ]


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "bytes_contents"])
async def test_model_infer_equals_typed_infer(stubs: Stubs, raw: bool) -> None:
    response = await stubs.oip.ModelInfer(infer_request(stubs.model, JPEG_A, raw=raw))
    assert (response.model_name, response.model_version, response.id) == (
        stubs.model,
        stubs.version,
        "req-1",
    )
    assert_equal(outputs(response), 0, await typed(stubs, JPEG_A))


async def test_two_images_in_one_request(stubs: Stubs) -> None:
    out = outputs(await stubs.oip.ModelInfer(infer_request(stubs.model, JPEG_A, JPEG_B)))
    assert set(out["IMAGE_INDEX"].tolist()) == {0, 1}
    assert_equal(out, 0, await typed(stubs, JPEG_A))
    assert_equal(out, 1, await typed(stubs, JPEG_B))


async def test_requested_outputs_only(stubs: Stubs) -> None:
    request = infer_request(stubs.model, JPEG_A)
    request.outputs.add(name="SCORES")
    response = await stubs.oip.ModelInfer(request)
    assert [t.name for t in response.outputs] == ["SCORES"]


def wrong_datatype(model: str) -> oip.ModelInferRequest:
    request = infer_request(model, JPEG_A)
    request.inputs[0].datatype = "UINT8"
    return request


def short_prefix(model: str) -> oip.ModelInferRequest:
    request = infer_request(model, JPEG_A)
    request.raw_input_contents[0] = request.raw_input_contents[0] + b"\x01\x00"
    return request


def long_length(model: str) -> oip.ModelInferRequest:
    request = infer_request(model, JPEG_A)
    request.raw_input_contents[0] = struct.pack("<I", len(JPEG_A) + 10) + JPEG_A
    return request


def shape_mismatch(model: str) -> oip.ModelInferRequest:
    request = infer_request(model, JPEG_A)
    request.inputs[0].shape[:] = [2]
    return request


def unknown_input(model: str) -> oip.ModelInferRequest:
    request = infer_request(model, JPEG_A)
    request.inputs[0].name = "images"
    return request


def unknown_parameter(model: str) -> oip.ModelInferRequest:
    request = infer_request(model, JPEG_A)
    request.parameters["conf"].double_param = 0.5
    return request


def not_an_image(model: str) -> oip.ModelInferRequest:
    return infer_request(model, b"not an image")


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (wrong_datatype, grpc.StatusCode.INVALID_ARGUMENT, ["'IMAGE'", "BYTES", "'UINT8'"]),
        (short_prefix, grpc.StatusCode.INVALID_ARGUMENT, ["'IMAGE'", "4-byte length prefix"]),
        (long_length, grpc.StatusCode.INVALID_ARGUMENT, ["'IMAGE'", "only", "follow"]),
        (shape_mismatch, grpc.StatusCode.INVALID_ARGUMENT, ["'IMAGE'", "[2]", "1 image"]),
        (unknown_input, grpc.StatusCode.INVALID_ARGUMENT, ["'IMAGE'", "'images'"]),
        (unknown_parameter, grpc.StatusCode.INVALID_ARGUMENT, ["conf", "confidence"]),
        (not_an_image, grpc.StatusCode.INVALID_ARGUMENT, ["image"]),
    ],
)
async def test_bad_input_is_invalid_argument_naming_what_to_change(
    stubs: Stubs, make: object, code: grpc.StatusCode, words: list[str]
) -> None:
    assert callable(make)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs.oip.ModelInfer(make(stubs.model))
    assert caught.value.code() == code
    for word in words:
        assert word in (caught.value.details() or ""), caught.value.details()
    await assert_still_serves(stubs)


async def test_unknown_model_is_not_found(stubs: Stubs) -> None:
    for call in (
        stubs.oip.ModelInfer(infer_request("nope", JPEG_A)),
        stubs.oip.ModelMetadata(oip.ModelMetadataRequest(name="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in (caught.value.details() or "")
    await assert_still_serves(stubs)


async def test_rpcs_outside_the_slice_are_unimplemented(stubs: Stubs) -> None:
    def same(data: bytes) -> bytes:
        return data

    call = stubs.channel.unary_unary(
        "/inference.GRPCInferenceService/SystemSharedMemoryStatus", same, same
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_every_rpc_of_the_service_needs_the_inference_scope_but_model_control() -> None:
    methods = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    scopes = {
        m.name: auth.required_scope(f"/inference.GRPCInferenceService/{m.name}") for m in methods
    }
    control = {"RepositoryModelLoad", "RepositoryModelUnload"}
    assert {scopes[name] for name in control} == {"models"}
    assert {scope for name, scope in scopes.items() if name not in control} == {"inference"}


async def test_each_image_is_counted_like_one_infer(
    start_server: StartServer, shipped: ModelRepository
) -> None:
    settings: dict[str, Any] = {"access_log": False, "metrics": {"port": 0}}
    inference = InferenceServicer(make_settings(**settings), shipped)
    running = await start_server([inference, OpenInferenceServicer(inference)], **settings)
    model = shipped.describe().name
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(infer_request(model, JPEG_A, JPEG_B))
    scraped = await asyncio.to_thread(scrape, running.server.metrics_url)
    assert scraped.value("visionrpc_inference_requests_total", model=model) == 2
    assert scraped.value("visionrpc_inference_images_total", model=model) == 2
    calls = scraped.value(
        "visionrpc_grpc_requests_total",
        service="inference.GRPCInferenceService",
        method="ModelInfer",
        code="OK",
    )
    assert calls == 1


async def test_numeric_parameters_may_be_strings_as_kserve_sends_them(stubs: Stubs) -> None:
    """KServe's v2 proto has no double_param, so its clients send a fractional confidence as a
    string; it must act exactly as the double does (the image has a detection only a low
    threshold keeps), and a string that is no number is refused naming the parameter."""
    image = encode(generate_sample(*FOUND_SAMPLES[2]).image, ".jpg")
    as_double = infer_request(stubs.model, image)
    as_double.parameters["confidence"].double_param = 0.01
    as_string = infer_request(stubs.model, image)
    as_string.parameters["confidence"].string_param = "0.01"
    default = infer_request(stubs.model, image)
    del default.parameters["confidence"]
    low = outputs(await stubs.oip.ModelInfer(as_double))
    assert len(low["SCORES"]) > len(outputs(await stubs.oip.ModelInfer(default))["SCORES"])
    from_string = outputs(await stubs.oip.ModelInfer(as_string))
    for name, values in low.items():
        np.testing.assert_array_equal(from_string[name], values)

    as_string.parameters["confidence"].string_param = "high"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs.oip.ModelInfer(as_string)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'confidence' must be a number" in (caught.value.details() or "")
    await assert_still_serves(stubs)
