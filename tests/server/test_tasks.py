"""Classify, pose and oriented-box models over a real server: the typed API through the client
library, and the Open Inference Protocol's vision view, on tiny graphs with exactly known
outputs."""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from tests.helpers import StartServer, make_settings
from tests.runtime.onnx_builders import task_models
from visionrpc.client import AsyncClient, CallError, Task
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc


@dataclass
class Server:
    address: str
    oip: grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return task_models(tmp_path_factory.mktemp("tasks"))


@pytest.fixture
async def server(start_server: StartServer, models: Path) -> AsyncIterator[Server]:
    overrides = {"models_dir": models, "access_log": False, "default_model": "pose"}
    inference = InferenceServicer(make_settings(**overrides))
    running = await start_server([inference, OpenInferenceServicer(inference)], **overrides)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Server(running.address, grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel))


def png(width: int = 128, height: int = 128) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 90, np.uint8))
    assert ok
    return buf.tobytes()


async def test_typed_results_carry_every_task(server: Server) -> None:
    async with AsyncClient(server.address, timeout=10) as client:
        info = {m.name: m for m in (await client.list_models())[0]}
        assert info["classify"].task is Task.CLASSIFY
        assert info["pose"].task is Task.POSE and info["pose"].keypoint_shape == (2, 3)
        assert info["obb"].task is Task.OBB and info["obb"].keypoint_shape == ()

        pose = await client.infer(png(), model="pose")
        (det,) = pose.detections
        got = [(k.x, k.y, k.visibility) for k in det.keypoints]
        np.testing.assert_allclose(got, [(60, 40, 0.95), (68, 88, 0.2)], rtol=1e-6)

        rotated = await client.infer(png(), model="obb-e2e")
        a, b = rotated.detections
        assert a.rotated_box is not None and b.rotated_box is not None
        ra = a.rotated_box
        assert (ra.cx, ra.cy, ra.width, ra.height) == pytest.approx((64, 64, 20, 60), abs=1e-3)
        assert ra.angle_deg == pytest.approx(math.degrees(2.0 - math.pi / 2), abs=1e-3)
        assert len(ra.corners) == 4
        assert b.rotated_box.width == pytest.approx(16)

        top = await client.infer(png(300, 200), model="classify", top_k=3)
        assert top.detections == ()
        assert [(c.class_name, c.class_id) for c in top.classifications] == [
            ("scratch", 1),
            ("spot", 2),
            ("ok", 0),
        ]
        assert [c.score for c in top.classifications] == pytest.approx([0.55, 0.25, 0.1])


async def test_bad_top_k_is_invalid_argument_and_the_server_goes_on(server: Server) -> None:
    async with AsyncClient(server.address, timeout=10) as client:
        with pytest.raises(CallError) as info:
            await client.infer(png(), model="classify", top_k=9)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has 4 classes, send 1..4" in (info.value.details() or "")
        assert [v.field for v in info.value.field_violations] == ["top_k"]
        with pytest.raises(CallError) as info:
            await client.infer(png(), model="obb", top_k=2)
        assert "top_k is for classification models" in (info.value.details() or "")
        assert len((await client.infer(png(), model="classify")).classifications) == 4


async def test_tiling_is_refused_for_tasks_that_do_not_find_things_and_auto_skips_it(
    server: Server,
) -> None:
    async with AsyncClient(server.address, timeout=10) as client:
        for model in ("classify", "pose", "obb"):
            with pytest.raises(CallError) as info:
                await client.infer(png(), model=model, tiling="on")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "tiling is for detection and segmentation models" in (info.value.details() or "")
        big = await client.infer(png(2048, 2048), model="pose", tiling="auto")
        assert big.tiling is None and len(big.detections) > 0


def vision_request(model: str, *images: bytes, **params: float) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model)
    for key, value in params.items():
        request.parameters[key].int64_param = int(value)
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[len(images)])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in images))
    return request


def tensors(reply: oip.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": "<f4", "INT64": "<i8"}
    return {
        out.name: np.frombuffer(raw, dtypes[out.datatype]).reshape(tuple(out.shape))
        for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
        if out.datatype in dtypes
    }


async def test_vision_view_tensors_per_task(server: Server) -> None:
    pose = tensors(await server.oip.ModelInfer(vision_request("pose", png(), png(64, 64))))
    assert set(pose) == {"BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX", "KEYPOINTS"}
    assert pose["KEYPOINTS"].shape == (2, 2, 3)
    np.testing.assert_allclose(pose["KEYPOINTS"][0], [[60, 40, 0.95], [68, 88, 0.2]], atol=1e-5)
    np.testing.assert_allclose(pose["KEYPOINTS"][1], [[30, 20, 0.95], [34, 44, 0.2]], atol=1e-5)
    assert pose["IMAGE_INDEX"].tolist() == [0, 1]

    obb = tensors(await server.oip.ModelInfer(vision_request("obb", png())))
    assert obb["ROTATED_BOXES"].shape == (2, 5) and obb["CORNERS"].shape == (2, 4, 2)
    np.testing.assert_allclose(
        obb["ROTATED_BOXES"][0], [64, 64, 20, 60, math.degrees(2.0 - math.pi / 2)], atol=1e-3
    )
    np.testing.assert_allclose(obb["BOXES"][0][:2], obb["CORNERS"][0].min(axis=0), atol=1e-3)

    classify = tensors(
        await server.oip.ModelInfer(vision_request("classify", png(), png(50, 90), top_k=2))
    )
    assert set(classify) == {"CLASS_IDS", "SCORES"}
    assert classify["CLASS_IDS"].tolist() == [[1, 2], [1, 2]]
    np.testing.assert_allclose(classify["SCORES"], [[0.55, 0.25], [0.55, 0.25]], atol=1e-6)


async def test_vision_metadata_lists_the_task_outputs(server: Server) -> None:
    def outputs(meta: oip.ModelMetadataResponse) -> dict[str, list[int]]:
        return {t.name: list(t.shape) for t in meta.outputs}

    pose = outputs(await server.oip.ModelMetadata(oip.ModelMetadataRequest(name="pose")))
    assert pose["KEYPOINTS"] == [-1, -1, 3]
    obb = outputs(await server.oip.ModelMetadata(oip.ModelMetadataRequest(name="obb")))
    assert obb["ROTATED_BOXES"] == [-1, 5] and obb["CORNERS"] == [-1, 4, 2]
    classify = outputs(await server.oip.ModelMetadata(oip.ModelMetadataRequest(name="classify")))
    assert classify == {"CLASS_IDS": [-1, -1], "SCORES": [-1, -1], "RESULT": [-1]}


async def test_vision_view_refuses_a_bad_top_k(server: Server) -> None:
    request = vision_request("classify", png())
    request.parameters["top_k"].double_param = 1.5
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.oip.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_k" in (info.value.details() or "")
