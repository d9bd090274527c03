"""SIGTERM on a real ``visionrpc serve`` process, with every kind of stream open.

Frames sent before the signal are all answered (and a camera that never pauses loses none: each
frame is answered or reported to the caller for resending); idle InferStream, Chat and
StreamNumbers streams end with UNAVAILABLE "draining"; health on an open channel says NOT_SERVING;
the process exits 0 well before its 30 s grace period (bounded at half of it: a generous bound,
not a timing test)."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import ChatSession, free_port
from tests.runtime.onnx_builders import tiny_models
from tests.server.drain_helpers import (
    frame,
    killed_at_exit,
    read_rest,
    start_serve,
    stream_drained,
    wait_serving,
)
from visionrpc.client import AsyncClient, Client, StreamInterruptedError
from visionrpc.server.drain import DRAINING_MESSAGE
from visionrpc.v1 import core_pb2, core_pb2_grpc, inference_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb

GRACE_S = 30.0
BOUND_S = GRACE_S / 2
FRAMES = 40
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("models"))


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    return await call.code(), await call.details()


async def test_sigterm_answers_every_frame_ends_idle_streams_and_exits_early(
    models: Path, tmp_path: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    process = start_serve(port, models, tmp_path / "serve.log", "--grace", str(GRACE_S))
    with killed_at_exit(process):
        await loop.run_in_executor(None, wait_serving, address, process)
        async with grpc.aio.insecure_channel(address) as channel:
            core = core_pb2_grpc.CoreServicesStub(channel)
            inference = inference_pb2_grpc.InferenceMethodsStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            await watch.read()  # SERVING
            numbers = core.StreamNumbers(
                core_pb2.StreamNumbersRequest(count=5, interval_ms=600_000)
            )
            await numbers.read()
            chat = ChatSession(core, "line-1", "station-a")
            await chat.join()
            idle_sent = asyncio.Event()

            async def one_frame() -> AsyncIterator[pb.InferRequest]:
                yield frame("only")
                await idle_sent.wait()  # never set: the stream stays open and idle

            idle = inference.InferStream(one_frame())
            await idle.read()
            sent_all, keep_open = asyncio.Event(), asyncio.Event()

            async def frames() -> AsyncIterator[pb.InferRequest]:
                for index in range(FRAMES):
                    yield frame(str(index))
                sent_all.set()
                await keep_open.wait()

            busy = inference.InferStream(frames())
            await asyncio.wait_for(sent_all.wait(), BOUND_S)

            started = loop.time()
            process.send_signal(signal.SIGTERM)
            assert (await watch.read()).status == NOT_SERVING
            answers = await read_rest(busy)
            assert [a.request_id for a in answers] == [str(i) for i in range(FRAMES)]
            assert await _status(busy) == (grpc.StatusCode.UNAVAILABLE, stream_drained(FRAMES))
            for call in (numbers, chat.call, idle):
                assert await read_rest(call) == []
            assert await _status(idle) == (grpc.StatusCode.UNAVAILABLE, stream_drained(1))
            for call in (numbers, chat.call):
                assert await _status(call) == (grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
            code = await loop.run_in_executor(None, process.wait, BOUND_S)
            exited_after = loop.time() - started
            keep_open.set()
            idle_sent.set()
    assert code == 0
    assert exited_after < BOUND_S
    log = (tmp_path / "serve.log").read_text()
    assert "shutdown requested" in log and "server stopped" in log


@pytest.mark.parametrize("kind", ["Client", "AsyncClient"])
def test_a_camera_sending_at_full_speed_loses_no_frame(
    kind: str, models: Path, tmp_path: Path
) -> None:
    """A sender that never pauses keeps the server reading for drain.stream_read_s, then the
    stream ends; every frame taken from the camera is either answered or in ``unanswered``, in
    order, so the caller can resend it."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    taken: list[np.ndarray] = []
    answered: list[str] = []
    errors: list[StreamInterruptedError] = []
    streaming = threading.Event()

    def camera() -> Iterator[np.ndarray]:
        for index in range(200_000):  # bounded: the drain ends the stream long before
            image = np.full((16, 16, 3), index % 256, np.uint8)
            taken.append(image)
            yield image

    def consume_blocking() -> None:
        with Client(address, timeout=60) as client:
            try:
                for result in client.infer_stream(camera()):
                    answered.append(result.request_id)
                    streaming.set()
            except StreamInterruptedError as exc:
                errors.append(exc)

    async def consume_async() -> None:
        async with AsyncClient(address, timeout=60) as client:
            try:
                async for result in client.infer_stream(camera()):
                    answered.append(result.request_id)
                    streaming.set()
            except StreamInterruptedError as exc:
                errors.append(exc)

    process = start_serve(port, models, tmp_path / "serve.log", "--grace", str(GRACE_S))
    with killed_at_exit(process):
        wait_serving(address, process)
        target = consume_blocking if kind == "Client" else lambda: asyncio.run(consume_async())
        consumer = threading.Thread(target=target)
        consumer.start()
        assert streaming.wait(BOUND_S)
        process.send_signal(signal.SIGTERM)
        consumer.join(BOUND_S)
        assert not consumer.is_alive()
        assert process.wait(BOUND_S) == 0

    [error] = errors
    done = len(answered)
    assert answered == [str(i) for i in range(done)]
    assert error.answered == done
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    unanswered = error.unanswered
    assert done + len(unanswered) == len(taken)
    assert [id(image) for image in unanswered] == [id(image) for image in taken[done:]]
