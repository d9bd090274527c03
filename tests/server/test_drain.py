"""The drain (VisionServer.stop, what SIGTERM runs) on real servers over real sockets.

- idle InferStream, Chat and StreamNumbers streams end at once with UNAVAILABLE "draining", so the
  drain does not wait for the grace period;
- health answers NOT_SERVING (Watch and Check, on an open channel) while a call is in flight; new
  calls are refused with the draining message; the in-flight unary call finishes OK;
- every frame an InferStream client sent before the drain is answered, and a client whose frames
  could not all be read is told exactly which ones to resend (and resending them loses none).

The grace period is long on purpose (30 s): a drain that waited for idle streams would take all of
it, so each stop is bounded by half of it (a generous bound, far above scheduling noise).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import ChatSession, RunningServer, StartServer, make_settings, wait_until
from tests.runtime.onnx_builders import tiny_models
from tests.server.drain_helpers import frame, read_rest, stream_drained
from visionrpc.client import AsyncClient, StreamInterruptedError
from visionrpc.runtime.model import OnnxModel
from visionrpc.server.drain import DRAINING_MESSAGE, DrainingError
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.reference.chat import ChatHub
from visionrpc.v1 import core_pb2, core_pb2_grpc, inference_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb

GRACE_S = 30.0
BOUND_S = GRACE_S / 2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CORE = "visionrpc.v1.CoreServices"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def held_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Model calls wait until the returned event is set (so frames pile up unread)."""
    gate = threading.Event()
    run_model = OnnxModel.run

    def held(self: OnnxModel, batch: np.ndarray, all_cores: bool = False) -> list[np.ndarray]:
        gate.wait(60)
        return run_model(self, batch, all_cores=all_cores)

    monkeypatch.setattr(OnnxModel, "run", held)
    yield gate
    gate.set()


class HoldService:
    """``test.v1.Hold/Hold``: a unary call that runs until the test releases it (raw bytes)."""

    name = "test.v1.Hold"
    method = "/test.v1.Hold/Hold"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        async def hold(request: bytes, context: Any) -> bytes:
            await self.release.wait()
            return request

        handler = grpc.unary_unary_rpc_method_handler(hold)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(self.name, {"Hold": handler}),)
        )

    async def start(self) -> None:
        """Nothing to load."""

    async def stop(self) -> None:
        """Nothing to free."""


async def _serve(
    start_server: StartServer, models: Path, *extra: Any, **overrides: Any
) -> RunningServer:
    settings: dict[str, Any] = {
        "models_dir": models,
        "runtime": {"instances": 1},
        "grace_period_s": GRACE_S,
        **overrides,
    }
    servicer = InferenceServicer(make_settings(**settings))
    return await start_server([servicer, *extra], **settings)


async def _stop(running: RunningServer) -> float:
    """Drain with the settings' grace; the seconds it took (bounded by half the grace)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(running.server.stop(), BOUND_S)
    return loop.time() - started


async def test_idle_streams_end_at_once_with_the_draining_status(
    start_server: StartServer, models: Path
) -> None:
    running = await _serve(start_server, models)
    async with grpc.aio.insecure_channel(running.address) as channel:
        core = core_pb2_grpc.CoreServicesStub(channel)
        numbers = core.StreamNumbers(core_pb2.StreamNumbersRequest(count=5, interval_ms=600_000))
        first = await numbers.read()
        assert isinstance(first, core_pb2.NumberReply) and first.index == 0
        chat = ChatSession(core, "line-1", "station-a")
        await chat.join()
        outbox: asyncio.Queue[pb.InferRequest] = asyncio.Queue()

        async def frames() -> AsyncIterator[pb.InferRequest]:
            while True:
                yield await outbox.get()

        stream = inference_pb2_grpc.InferenceMethodsStub(channel).InferStream(frames())
        outbox.put_nowait(frame("only"))
        answer = await stream.read()
        assert isinstance(answer, pb.InferResponse) and answer.request_id == "only"
        assert running.server.in_flight == 3

        await _stop(running)

        assert await read_rest(numbers) == []
        assert await read_rest(chat.call) == []
        assert await read_rest(stream) == []
        assert (await numbers.code(), await numbers.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            DRAINING_MESSAGE,
        )
        assert (await chat.call.code(), await chat.call.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            DRAINING_MESSAGE,
        )
        assert (await stream.code(), await stream.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            stream_drained(1),
        )
    assert running.server.in_flight == 0
    assert running.core.active_streams == 0
    assert running.core.hub.rooms() == []


async def test_health_says_not_serving_while_a_call_runs_new_calls_are_refused(
    start_server: StartServer, models: Path
) -> None:
    hold = HoldService()
    running = await _serve(start_server, models, hold)
    async with grpc.aio.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING
        hold_call = channel.unary_unary(hold.method, None, None)
        held = asyncio.ensure_future(hold_call(b"work", timeout=60))
        await wait_until(lambda: running.server.in_flight == 1)

        stopping = asyncio.create_task(running.server.stop())
        assert (await watch.read()).status == NOT_SERVING
        for service in ("", CORE, HoldService.name):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == NOT_SERVING
        core = core_pb2_grpc.CoreServicesStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await core.Ping(core_pb2.PingRequest(), timeout=10)
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            DRAINING_MESSAGE,
        )
        inference = inference_pb2_grpc.InferenceMethodsStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inference.Infer(frame("late"), timeout=10)
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            DRAINING_MESSAGE,
        )
        # Still draining: the held call runs, and health still answers.
        assert not held.done() and not stopping.done()
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == NOT_SERVING
        assert running.server.in_flight == 1

        hold.release.set()
        assert await held == b"work"
        await asyncio.wait_for(stopping, BOUND_S)
    assert running.server.in_flight == 0


async def test_every_frame_sent_before_the_drain_is_answered(
    start_server: StartServer, models: Path, held_model: threading.Event
) -> None:
    count = 40  # small frames: all fit in the transport's buffers while the model is held
    running = await _serve(start_server, models, access_log=False)
    sent_all, keep_open = asyncio.Event(), asyncio.Event()

    async def frames() -> AsyncIterator[pb.InferRequest]:
        for index in range(count):
            yield frame(str(index))
        sent_all.set()
        await keep_open.wait()  # a camera that stopped: the stream stays open

    async with grpc.aio.insecure_channel(running.address) as channel:
        stream = inference_pb2_grpc.InferenceMethodsStub(channel).InferStream(frames())
        await asyncio.wait_for(sent_all.wait(), BOUND_S)
        stopping = asyncio.create_task(running.server.stop())
        await wait_until(lambda: not running.server.ready)
        held_model.set()  # the server has read at most a window of frames; the rest wait
        answers = await read_rest(stream)
        assert [a.request_id for a in answers] == [str(i) for i in range(count)]
        assert all(not a.HasField("error") for a in answers)
        assert (await stream.code(), await stream.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            stream_drained(count),
        )
        await asyncio.wait_for(stopping, BOUND_S)
        keep_open.set()
    assert running.server.in_flight == 0


async def test_a_client_is_told_which_frames_to_resend_and_resending_loses_none(
    start_server: StartServer, models: Path, held_model: threading.Event
) -> None:
    """stream_read_s=0: the drain stops reading at once, so frames stay unread; the client says
    which, and sending them to another server answers every frame exactly once."""
    count = 30
    images = [np.full((16, 16, 3), i, np.uint8) for i in range(count)]  # all fit in buffers
    draining = await _serve(start_server, models, drain={"stream_read_s": 0})
    other = await _serve(start_server, models)
    taken, keep_open = asyncio.Event(), asyncio.Event()

    async def camera() -> AsyncIterator[np.ndarray]:
        for image in images:
            yield image
        taken.set()
        await keep_open.wait()

    answered: list[str] = []
    async with AsyncClient(draining.address, timeout=None) as client:
        results = client.infer_stream(camera())
        pulling = asyncio.ensure_future(anext(results))  # starts the call
        await asyncio.wait_for(taken.wait(), BOUND_S)
        stopping = asyncio.create_task(draining.server.stop())
        await wait_until(lambda: not draining.server.ready)
        held_model.set()
        with pytest.raises(StreamInterruptedError) as err:
            answered.append((await pulling).request_id)
            async for result in results:
                answered.append(result.request_id)
        await asyncio.wait_for(stopping, BOUND_S)
    keep_open.set()

    error = err.value
    done = len(answered)
    assert answered == [str(i) for i in range(done)]
    assert 0 < done < count
    assert error.answered == done
    assert [id(image) for image in error.unanswered] == [id(image) for image in images[done:]]
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == (
        f"{stream_drained(done)}; {count - done} frame(s) sent were not answered (frames "
        f"{done} to {count - 1} of the stream, 0-based): resend them (error.unanswered)"
    )
    assert isinstance(error, grpc.RpcError)

    async with AsyncClient(other.address) as client:
        resent = [r async for r in client.infer_stream(error.unanswered)]
    assert len(resent) == count - done and all(r.ok for r in resent)


async def test_chat_hub_end_all_ends_every_participant_at_once() -> None:
    hub = ChatHub(buffer_size=4)
    alice, bob = hub.join("line-1", "alice"), hub.join("line-2", "bob")
    alice.post("queued but not read")
    hub.end_all(DrainingError)
    for participant in (alice, bob):
        with pytest.raises(DrainingError, match="draining"):
            await participant.receive()
        with pytest.raises(DrainingError):
            participant.post("too late")
    with pytest.raises(DrainingError):
        hub.join("line-1", "carol")
    assert hub.rooms() == []
