"""The raw view (``NAME.raw``) in ModelStreamInfer, over a real server with the generated stubs.

One stream may mix vision and raw requests: answers come in request order, a raw answer equals
ONNX Runtime run directly on the same tensor, and a bad raw request is answered with the message
ModelInfer would give (naming the tensor) while the stream goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np
import pytest

from tests.helpers import StartServer, make_settings
from tests.server.test_oip_raw import (
    LARGE,
    assert_same,
    model_path,
    onnxruntime_outputs,
    pixels,
    raw_outputs,
    raw_request,
    serve,
    size_the_graph_refuses,
    too_large_batch,
    wrong_channels,
    wrong_datatype,
)
from tests.server.test_oip_stream import JPEG_A, JPEG_B, stream_all, tensors
from tests.server.test_oip_stream import request as vision_request
from visionrpc.runtime.repository import ModelRepository
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc

MAX_BATCH = 4  # so that a raw request may carry several samples


@pytest.fixture(scope="module")
def packaged() -> ModelRepository:
    return ModelRepository(make_settings(batching={"max_batch_size": MAX_BATCH}))


@pytest.fixture
async def stub(
    start_server: StartServer, packaged: ModelRepository
) -> AsyncIterator[grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub]:
    running = await serve(start_server, packaged)
    async with grpc.aio.insecure_channel(running.address, options=LARGE) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def raw(request_id: str, array: np.ndarray, model: str = "defects") -> oip.ModelInferRequest:
    out = raw_request(f"{model}.raw", array)
    out.id = request_id
    return out


async def test_a_stream_mixes_vision_and_raw_requests_in_order(
    stub: grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    one, two, other = pixels(1, seed=0), pixels(2, seed=1), pixels(1, seed=2)
    requests = [
        vision_request("defects", "v1", JPEG_A),
        raw("r1", one),
        raw("r2", two),
        vision_request("defects", "v2", JPEG_A, JPEG_B),
        raw("r3", other, model="defects-fp32"),
    ]
    answers, code = await stream_all(stub, requests)
    assert code == grpc.StatusCode.OK
    assert [a.infer_response.id for a in answers] == ["v1", "r1", "r2", "v2", "r3"]
    assert [a.error_message for a in answers] == [""] * 5
    v1, r1, r2, v2, r3 = (a.infer_response for a in answers)
    assert [r.model_name for r in (v1, r1, r2, v2, r3)] == [
        "defects",
        "defects.raw",
        "defects.raw",
        "defects",
        "defects-fp32.raw",
    ]
    for response, array, model in (
        (r1, one, "defects"),
        (r2, two, "defects"),
        (r3, other, "defects-fp32"),
    ):
        assert raw_outputs(response)["output0"].shape[0] == len(array)
        assert_same(raw_outputs(response), onnxruntime_outputs(model_path(model), array))
    for sent, answer in ((requests[0], v1), (requests[3], v2)):
        got, expected = tensors(answer), tensors(await stub.ModelInfer(sent))
        assert got.keys() == expected.keys()
        assert len(got["SCORES"]) > 0
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-3)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (wrong_datatype, ["'images'", "FP16", "FP32"]),
        (wrong_channels, ["'images'", "[1, 4, 320, 320]", "[-1, 3, -1, -1]"]),
        (too_large_batch, ["'images'", f"batch of {MAX_BATCH + 1}", f"at most {MAX_BATCH}"]),
        (size_the_graph_refuses, ["'images'", "[3, 100, 100]", "3x320x320"]),
    ],
)
async def test_a_bad_raw_request_gets_its_error_and_the_stream_goes_on(
    stub: grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub,
    make: Callable[[], oip.ModelInferRequest],
    words: list[str],
) -> None:
    before, after = pixels(1, seed=3), pixels(2, seed=4)
    bad = make()
    bad.id = "bad"
    answers, code = await stream_all(
        stub,
        [
            raw("before", before),
            vision_request("defects", "image", JPEG_A),
            bad,
            raw("after", after),
            vision_request("defects", "last", JPEG_B),
        ],
    )
    assert code == grpc.StatusCode.OK
    assert [a.infer_response.id for a in answers] == ["before", "image", "bad", "after", "last"]
    failed = answers[2]
    for word in words:
        assert word in failed.error_message, failed.error_message
    # as Triton answers a failed stream request: nothing but its id
    assert not failed.infer_response.outputs and not failed.infer_response.model_name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(make())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.error_message == caught.value.details()
    good = [answers[i] for i in (0, 1, 3, 4)]
    assert [a.error_message for a in good] == [""] * 4
    expected = onnxruntime_outputs(model_path("defects"), before)
    assert_same(raw_outputs(answers[0].infer_response), expected)
    expected = onnxruntime_outputs(model_path("defects"), after)
    assert_same(raw_outputs(answers[3].infer_response), expected)
    assert len(tensors(answers[4].infer_response)["SCORES"]) > 0
