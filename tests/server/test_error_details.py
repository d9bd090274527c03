"""Statuses clients can act on: google.rpc details (BadRequest, RetryInfo) read by the client, and
messages small enough for the trailers whatever the request echoed. Real servers, real sockets;
each case asserts the code, the message and that the server still serves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.helpers import RunningServer, StartServer, StartThreadedServer, make_settings
from visionrpc.client import AsyncClient, CallError, Client, FieldViolation, StreamResult
from visionrpc.errors import InvalidInputError
from visionrpc.runtime.batching import RETRY_AFTER_S
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.status import MAX_MESSAGE_BYTES, Context, map_errors
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc

DEADLINE_S = 60.0
TRAILER_BUDGET = 8 * 1024  # gRPC clients refuse trailers between 8 and 16 KiB


def _jpeg(width: int = 64, height: int = 48) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((height, width, 3), 120, np.uint8))
    assert ok
    return buf.tobytes()


GOOD = _jpeg()


@pytest.fixture
async def served(start_server: StartServer) -> RunningServer:
    return await start_server([InferenceServicer(make_settings())], access_log=False)


async def _still_serves(address: str) -> None:
    async with AsyncClient(address) as client:
        result = await client.infer(GOOD, request_id="after")
    assert (result.request_id, result.image_width) == ("after", 64)


def _trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    """About what the trailers take on the wire: the metadata plus the percent-encoded message."""
    trailers: Any = error.trailing_metadata() or ()
    pairs = sum(len(key) + len(value) for key, value in trailers)
    return pairs + len((error.details() or "").encode()) * 3


async def _infer_error(address: str, request: pb.InferRequest) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await inference_pb2_grpc.InferenceMethodsStub(channel).Infer(
                request, timeout=DEADLINE_S
            )
    return caught.value


async def test_an_invalid_parameter_names_its_field_in_a_bad_request(served: RunningServer) -> None:
    error = await _infer_error(
        served.address, pb.InferRequest(image_bytes=GOOD, confidence_threshold=2.0)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "confidence_threshold is 2.0; send a value in (0, 1], or 0 for the default"
    )
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None and len(status.details) == 1
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("confidence_threshold", error.details())
    ]
    await _still_serves(served.address)


async def test_the_client_surfaces_field_violations(served: RunningServer) -> None:
    async with AsyncClient(served.address) as client:
        with pytest.raises(CallError) as caught:
            await client.infer(GOOD, max_detections=100_000)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("max_detections is 100000; model 'defects'")
        assert error.field_violations == (FieldViolation("max_detections", error.details() or ""),)
        assert error.retry_after is None
        assert isinstance(error, grpc.RpcError)  # existing `except grpc.RpcError` still catch it
        # an error without details stays gRPC's own
        with pytest.raises(grpc.aio.AioRpcError) as plain:
            await client.infer(GOOD, model="nope")
        assert plain.value.code() == grpc.StatusCode.NOT_FOUND
        assert not isinstance(plain.value, CallError)
    await _still_serves(served.address)


async def test_infer_stream_frame_errors_carry_the_same_details(served: RunningServer) -> None:
    frames = [
        pb.InferRequest(image_bytes=GOOD, request_id="ok"),
        pb.InferRequest(image_bytes=GOOD, request_id="bad", iou_threshold=-1.0),
    ]
    async with grpc.aio.insecure_channel(served.address) as channel:
        call = inference_pb2_grpc.InferenceMethodsStub(channel).InferStream(
            iter(frames), timeout=DEADLINE_S
        )
        results = [StreamResult.from_proto(reply) async for reply in call]
    assert [(r.request_id, r.ok) for r in results] == [("ok", True), ("bad", False)]
    bad = results[1]
    assert bad.error_code == "INVALID_ARGUMENT"
    assert (
        bad.error_message == "iou_threshold is -1.0; send a value in (0, 1], or 0 for the default"
    )
    assert bad.field_violations == (FieldViolation("iou_threshold", bad.error_message),)
    await _still_serves(served.address)


async def test_ten_thousand_unknown_classes_are_invalid_argument_with_a_short_message(
    served: RunningServer,
) -> None:
    classes = [f"no-such-class-{i}" for i in range(10_000)]
    error = await _infer_error(served.address, pb.InferRequest(image_bytes=GOOD, classes=classes))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith("unknown class name(s) ['no-such-class-0', ")
    assert "more] for model 'defects'; valid names: scratch, spot, crack" in details
    assert len(details) < 400
    assert _trailer_bytes(error) < TRAILER_BUDGET
    await _still_serves(served.address)


@pytest.mark.parametrize("method", ["Infer", "GetModelInfo"])
async def test_a_one_megabyte_model_name_is_not_found_with_a_short_message(
    served: RunningServer, method: str
) -> None:
    name = "m" * 1_000_000
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if method == "Infer":
                await stub.Infer(pb.InferRequest(image_bytes=GOOD, model=name), timeout=DEADLINE_S)
            else:
                await stub.GetModelInfo(pb.GetModelInfoRequest(name=name), timeout=DEADLINE_S)
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    details = error.details() or ""
    assert details.startswith("model 'mmmm")
    assert "… (1,000,002 characters) is not loaded; available models: defects" in details
    assert len(details) < 300
    await _still_serves(served.address)


class HugeErrors(InferenceServicer):
    """ListModels fails with a message no site shortened: the last-resort cap must hold."""

    def __init__(self, text: str) -> None:
        super().__init__(make_settings())
        self.text = text

    @map_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        raise InvalidInputError(self.text, field="name" * 1000)


@pytest.mark.parametrize("text", ["x" * 100_000, "é" * 100_000, "瑕" * 50_000])
async def test_any_status_message_is_capped_so_the_client_sees_the_real_code(
    start_server: StartServer, text: str
) -> None:
    running = await start_server([HugeErrors(text)], access_log=False)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListModels(pb.ListModelsRequest(), timeout=DEADLINE_S)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert len(details.encode()) <= MAX_MESSAGE_BYTES
    assert details.startswith(text[:10])
    assert details.endswith(f"… (message cut from {len(text.encode()):,} bytes)")
    assert _trailer_bytes(error) < TRAILER_BUDGET
    await _still_serves(running.address)


async def test_a_full_queue_says_when_to_retry(start_server: StartServer) -> None:
    """One instance, a queue of one: most of 24 concurrent requests are shed with RetryInfo."""
    settings = make_settings(
        runtime={"instances": 1, "lone_request_all_cores": False},
        batching={"max_queue_size": 1, "max_batch_size": 1},
    )
    running = await start_server([InferenceServicer(settings)], access_log=False)
    big = _jpeg(1024, 768)
    async with AsyncClient(running.address) as client:

        async def one(i: int) -> BaseException | None:
            try:
                await client.infer(big, request_id=str(i))
            except grpc.RpcError as exc:
                return exc
            return None

        outcomes = await asyncio.gather(*(one(i) for i in range(24)))
    shed = [e for e in outcomes if e is not None]
    assert shed, "nothing was shed"
    for error in shed:
        assert isinstance(error, CallError)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "requests queued (max_queue_size=1); retry later" in (error.details() or "")
        assert error.retry_after == pytest.approx(RETRY_AFTER_S)
        assert error.field_violations == ()
    await _still_serves(running.address)


def test_the_blocking_client_surfaces_field_violations_too(
    start_threaded_server: StartThreadedServer,
) -> None:
    settings = make_settings(access_log=False)
    running = start_threaded_server([InferenceServicer(settings)], access_log=False)
    with Client(running.address) as client:
        with pytest.raises(CallError) as caught:
            client.infer(GOOD, classes=["rust"])
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == (
            "unknown class name(s) ['rust'] for model 'defects'; valid names: scratch, spot, crack"
        )
        assert error.field_violations == (FieldViolation("classes", error.details() or ""),)
        assert client.infer(GOOD, request_id="after").request_id == "after"
