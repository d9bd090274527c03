"""A server with several models and no default: ListModels says so, and a request that names no
model gets INVALID_ARGUMENT saying which names to send, over a real server and real sockets."""

from __future__ import annotations

from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from tests.helpers import StartServer, make_settings
from tests.runtime.onnx_builders import constant_model, yolov8_detect_outputs
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc


async def test_no_default_model_is_reported_and_explained(
    start_server: StartServer, tmp_path: Path
) -> None:
    out = yolov8_detect_outputs([(40, 40, 20, 20)], [0], [0.9], num_classes=1)
    for name in ("alpha", "beta"):
        constant_model(tmp_path / f"{name}.onnx", [out], input_size=(64, 64), names={0: "dent"})
    overrides = {"models_dir": tmp_path, "access_log": False}
    running = await start_server([InferenceServicer(make_settings(**overrides))], **overrides)
    ok, png = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))
    assert ok
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)
        listed = await stub.ListModels(pb.ListModelsRequest())
        assert listed.default_model == "" and [m.name for m in listed.models] == ["alpha", "beta"]
        for call in (
            stub.Infer(pb.InferRequest(image_bytes=png.tobytes())),
            stub.GetModelInfo(pb.GetModelInfoRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == (
                "this server has several models and none is the default; name one of: "
                "alpha, beta (or set default_model / repository.yaml)"
            )
        named = await stub.Infer(pb.InferRequest(image_bytes=png.tobytes(), model="beta"))
        assert named.model == "beta" and len(named.detections) == 1
