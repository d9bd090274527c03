"""InferStream when reading the request stream fails: the call ends promptly with a status, and
the frames answered before the failure stay answered. Real servers, real sockets.

Each case bounds the call with a long deadline (60 s) and checks it ends with something other than
DEADLINE_EXCEEDED well before it; the bound is generous on purpose (no timing assertions).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from tests.helpers import RunningServer, StartServer, StartThreadedServer, make_settings
from tests.server.drain_helpers import JPEG, frame
from visionrpc.client import Client
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.settings import Settings
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc

DEADLINE_S = 60.0
PROMPT_S = 20.0  # "promptly": far below the deadline, far above any scheduling noise
INFER_STREAM = "/visionrpc.v1.InferenceMethods/InferStream"


class BrokenReader(InferenceServicer):
    """A servicer whose request stream breaks (RuntimeError) after ``good`` frames, as a reader
    task that dies would."""

    def __init__(self, settings: Settings, good: int) -> None:
        super().__init__(settings)
        self.good = good

    async def InferStream(
        self, request_iterator: AsyncIterator[pb.InferRequest], context: Any
    ) -> AsyncIterator[pb.InferResponse]:
        async def breaking() -> AsyncIterator[pb.InferRequest]:
            count = 0
            async for request in request_iterator:
                if count == self.good:
                    raise RuntimeError("the request stream broke")
                count += 1
                yield request

        async for reply in super().InferStream(breaking(), context):
            yield reply


async def _serve(start_server: StartServer, servicer: InferenceServicer) -> RunningServer:
    return await start_server([servicer], access_log=False)


async def _still_serving(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)
        reply = await stub.Infer(frame("after"), timeout=DEADLINE_S)
        assert (reply.request_id, reply.image_width) == ("after", 64)


async def test_a_frame_that_does_not_parse_ends_the_stream_with_invalid_argument(
    start_server: StartServer,
) -> None:
    running = await _serve(start_server, InferenceServicer(make_settings(access_log=False)))
    async with grpc.aio.insecure_channel(running.address) as channel:
        # raw bytes on the wire: two good frames, then bytes that are no InferRequest
        call = channel.stream_stream(
            INFER_STREAM,
            request_serializer=lambda b: b,
            response_deserializer=pb.InferResponse.FromString,
        )

        async def requests() -> AsyncIterator[bytes]:
            yield frame("a").SerializeToString()
            yield frame("b").SerializeToString()
            yield b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length far beyond the message
            await asyncio.sleep(DEADLINE_S)  # the client keeps the stream open

        started = time.monotonic()
        stream = call(requests(), timeout=DEADLINE_S)
        answered = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for reply in stream:
                answered.append(reply.request_id)
        elapsed = time.monotonic() - started
    assert answered == ["a", "b"]  # the frames before the bad one were answered
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "frame 3 of the stream is not an InferRequest" in (err.value.details() or "")
    assert elapsed < PROMPT_S
    await _still_serving(running.address)


async def test_a_reader_that_dies_ends_the_stream_with_internal(
    start_server: StartServer,
) -> None:
    running = await _serve(start_server, BrokenReader(make_settings(access_log=False), good=3))
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)

        async def requests() -> AsyncIterator[pb.InferRequest]:
            for i in range(5):
                yield frame(str(i))
            await asyncio.sleep(DEADLINE_S)

        started = time.monotonic()
        answered = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for reply in stub.InferStream(requests(), timeout=DEADLINE_S):
                answered.append(reply.request_id)
        elapsed = time.monotonic() - started
    assert answered == ["0", "1", "2"]
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal server error"  # no internals leak to the client
    assert elapsed < PROMPT_S
    await _still_serving(running.address)


def test_a_client_whose_iterator_raises_gets_its_own_error_and_the_server_goes_on(
    start_threaded_server: StartThreadedServer,
) -> None:
    settings = make_settings(access_log=False)
    running = start_threaded_server([InferenceServicer(settings)], access_log=False)

    def frames() -> Iterator[bytes]:
        yield JPEG
        yield JPEG
        raise OSError("camera disconnected")

    started = time.monotonic()
    answered = []
    with Client(running.address) as client:
        with pytest.raises(OSError, match="camera disconnected"):
            for item in client.infer_stream(frames(), timeout=DEADLINE_S):
                answered.append(item.request_id)
        assert time.monotonic() - started < PROMPT_S
        assert answered == ["0", "1"][: len(answered)]  # in order, as far as it got
        # the server ended that call and serves the next one
        again = list(client.infer_stream([JPEG, JPEG], timeout=DEADLINE_S))
        assert [r.request_id for r in again] == ["0", "1"] and all(r.ok for r in again)
