"""Requests caught by the inference service's shutdown get UNAVAILABLE (retry elsewhere), not
RESOURCE_EXHAUSTED (which tells a client to slow down), over a real server and real sockets."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.helpers import StartServer, make_settings, wait_until
from tests.runtime.onnx_builders import constant_model, yolov8_detect_outputs
from visionrpc.runtime.model import OnnxModel
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc


async def test_requests_in_flight_when_the_pipeline_closes_get_unavailable(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = yolov8_detect_outputs([(40, 40, 20, 20)], [0], [0.9], num_classes=1)
    constant_model(tmp_path / "tiny.onnx", [out], input_size=(64, 64), names={0: "dent"})
    gate = threading.Event()
    calls: list[int] = []
    run_model = OnnxModel.run

    def held(self: OnnxModel, batch: np.ndarray, all_cores: bool = False) -> list[np.ndarray]:
        calls.append(len(batch))
        gate.wait(20)  # the model call of the first request never finishes in time
        return run_model(self, batch, all_cores=all_cores)

    monkeypatch.setattr(OnnxModel, "run", held)
    overrides = {"models_dir": tmp_path, "runtime": {"instances": 1}, "access_log": False}
    servicer = InferenceServicer(make_settings(**overrides))
    running = await start_server([servicer], **overrides)
    image = np.full((32, 48, 3), 128, np.uint8).tobytes()
    frame = pb.InferRequest(raw=pb.RawImage(width=48, height=32, channels=3, data=image))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = inference_pb2_grpc.InferenceMethodsStub(channel)
            running_call = asyncio.ensure_future(stub.Infer(frame))  # runs on the one instance
            await wait_until(lambda: len(calls) == 1)
            queued_call = asyncio.ensure_future(stub.Infer(frame))  # waits for the instance
            tiny = servicer.repository.get("tiny").generation  # batchers are per loaded version
            await wait_until(lambda: servicer.pipeline._batchers[tiny].queued == 1)
            await servicer.stop()  # what a draining server does once its grace is over
            for call in (running_call, queued_call):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert err.value.details() == (
                    "model 'tiny' is shutting down; retry on another server"
                )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Infer(frame, wait_for_ready=False, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in str(err.value.details())
    finally:
        gate.set()
    assert calls == [1]  # the queued request never reached the model
