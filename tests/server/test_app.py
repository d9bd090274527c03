"""VisionServer: health, reflection, message limits, access log, start-up and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.helpers import EOF, RunningServer, StartServer, make_settings, wait_until
from visionrpc.server.app import StartupError, VisionServer
from visionrpc.server.interceptors import ACCESS_LOGGER
from visionrpc.v1 import core_pb2, core_pb2_grpc

CORE = "visionrpc.v1.CoreServices"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MiB = 1024 * 1024
REFLECTION_PATHS = [
    f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    for version in ("v1", "v1alpha")
]


class SlowService:
    """A Service whose start() waits for the test, like model loading; records its stop()."""

    name = "test.v1.Slow"

    def __init__(self, fail: bool = False) -> None:
        self.release = asyncio.Event()
        self.fail = fail
        self.stopped = False

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Nothing to register: only its life cycle matters here."""

    async def start(self) -> None:
        await self.release.wait()
        if self.fail:
            raise RuntimeError("model file is broken")

    async def stop(self) -> None:
        self.stopped = True


async def _read_all(call: grpc.aio.UnaryStreamCall) -> list:
    """Rest of a stream read with read() (iteration and read() cannot be mixed on one call)."""
    out = []
    while (reply := await call.read()) is not EOF:
        out.append(reply)
    return out


async def _check(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), wait_for_ready=True)
    return reply.status


async def test_health_is_not_serving_until_services_started() -> None:
    slow = SlowService()
    server = VisionServer(make_settings(), [slow])
    starting = asyncio.create_task(server.start())
    try:
        await wait_until(lambda: server.port != 0)
        async with grpc.aio.insecure_channel(server.address) as channel:
            for name in ("", CORE, slow.name):
                assert await _check(channel, name) == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:  # the gate keeps calls out meanwhile
                await core_pb2_grpc.CoreServicesStub(channel).Ping(core_pb2.PingRequest())
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            for path in REFLECTION_PATHS:  # tools can look at the server while it starts
                reflect = channel.stream_stream(
                    path,
                    request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                    response_deserializer=rpb.ServerReflectionResponse.FromString,
                )
                (listed,) = [
                    r async for r in reflect(iter([rpb.ServerReflectionRequest(list_services="")]))
                ]
                assert CORE in {s.name for s in listed.list_services_response.service}
            assert not starting.done()

            slow.release.set()
            await starting
            for name in ("", CORE, slow.name):
                assert await _check(channel, name) == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _check(channel, "no.such.Service")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            await core_pb2_grpc.CoreServicesStub(channel).Ping(core_pb2.PingRequest())
    finally:
        slow.release.set()
        await server.stop(0)


async def test_failed_service_start_stops_the_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="visionrpc.server.app")
    slow = SlowService(fail=True)
    slow.release.set()
    server = VisionServer(make_settings(), [slow])
    with pytest.raises(RuntimeError, match="broken"):
        await server.start()
    await asyncio.wait_for(server.wait_for_termination(), 5)
    # the caller reports the error once; the traceback is there at DEBUG only
    records = [r for r in caplog.records if r.name == "visionrpc.server.app"]
    assert [r.levelname for r in records if r.levelno > logging.INFO] == []
    (failed,) = [r for r in records if r.exc_info]
    assert failed.levelno == logging.DEBUG and "broken" in str(failed.exc_info[1])  # type: ignore[index]


async def test_port_in_use_is_one_clear_error(server: RunningServer) -> None:
    """The port of a running server: refused before gRPC binds, and the first keeps serving."""
    second = VisionServer(make_settings(port=server.server.port))
    with pytest.raises(StartupError) as err:
        await second.start()
    assert str(err.value) == (
        f"port {server.server.port} on 127.0.0.1 is in use; "
        "stop the other server or choose another with --port"
    )
    await asyncio.wait_for(second.wait_for_termination(), 5)
    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await core_pb2_grpc.CoreServicesStub(channel).Ping(
            core_pb2.PingRequest(message="x")
        )
    assert reply.message == "x"


async def test_unknown_host_is_one_clear_error() -> None:
    server = VisionServer(make_settings(host="no-such-host.invalid"))
    with pytest.raises(StartupError, match=r"^cannot listen on 'no-such-host.invalid': .*--host$"):
        await server.start()


@pytest.mark.parametrize(
    ("host", "said"),
    [("0.0.0.0", "0.0.0.0:{port} (all interfaces)"), ("127.0.0.1", "127.0.0.1:{port}")],
)
async def test_log_says_where_it_listens(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, host: str, said: str
) -> None:
    caplog.set_level(logging.INFO, logger="visionrpc.server.app")
    running = await start_server(host=host)
    port = running.server.port
    assert running.address == f"127.0.0.1:{port}"  # what a client on this machine dials
    messages = [r.getMessage() for r in caplog.records if r.name == "visionrpc.server.app"]
    assert f"listening on {said.format(port=port)}; starting services" in messages
    assert f"serving {CORE} on {said.format(port=port)}" in messages


async def test_graceful_shutdown_ends_streams_and_stops_services() -> None:
    """The drain itself is tested in test_drain.py; here: its order around the services.

    An upload in flight keeps the drain waiting while the test checks the refusal of a new call
    (once nothing is in flight the gRPC server stops, and a call arriving then is CANCELLED by
    gRPC's core instead; our client retries both).
    """
    slow = SlowService()
    slow.release.set()
    server = VisionServer(make_settings(grace_period_s=5), [slow])
    await server.start()
    uploaded = asyncio.Event()

    async def numbers() -> AsyncIterator[core_pb2.NumberRequest]:
        yield core_pb2.NumberRequest(value=7)
        await uploaded.wait()

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING
        in_flight = stub.StreamNumbers(core_pb2.StreamNumbersRequest(count=5, interval_ms=100))
        first = await in_flight.read()
        assert isinstance(first, core_pb2.NumberReply) and first.index == 0
        upload = stub.UploadNumbers(numbers())
        await wait_until(lambda: server.in_flight == 2)

        stopping = asyncio.create_task(server.stop())  # grace from settings: 5 s
        assert (await watch.read()).status == NOT_SERVING  # health flips first
        with pytest.raises(grpc.aio.AioRpcError) as err:  # new calls are refused
            await stub.Ping(core_pb2.PingRequest(), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:  # the stream is told to end
            await _read_all(in_flight)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        uploaded.set()  # the call in flight finishes normally
        assert (await upload).count == 1
        await asyncio.wait_for(stopping, 5)  # the open Watch does not hold the drain
    assert slow.stopped


async def test_calls_longer_than_the_grace_period_are_cancelled(start_server: StartServer) -> None:
    """An upload whose client never half-closes is not told to finish: the grace ends it."""
    running = await start_server()
    sent, never = asyncio.Event(), asyncio.Event()

    async def numbers() -> AsyncIterator[core_pb2.NumberRequest]:
        yield core_pb2.NumberRequest(value=1)
        sent.set()
        await never.wait()

    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        call = stub.UploadNumbers(numbers())
        await sent.wait()
        await wait_until(lambda: running.server.in_flight == 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await running.server.stop(0.2)
        assert loop.time() - started < 2
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        never.set()
    assert running.server.in_flight == 0


def test_reflection_lists_all_services(threaded_server: RunningServer) -> None:
    with grpc.insecure_channel(threaded_server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert services == {
            CORE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        core = DescriptorPool(database).FindServiceByName(CORE)
        assert [m.name for m in core.methods] == ["Ping", "StreamNumbers", "UploadNumbers", "Chat"]


async def test_oversized_request_is_resource_exhausted(start_server: StartServer) -> None:
    running = await start_server(max_receive_message_bytes=1024)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        await stub.Ping(core_pb2.PingRequest(message="x" * 900))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Ping(core_pb2.PingRequest(message="x" * 2000))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_oversized_response_is_resource_exhausted(start_server: StartServer) -> None:
    running = await start_server(max_send_message_bytes=1024)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Ping(core_pb2.PingRequest(message="x" * 2000))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_default_limit_is_64_mib(server: RunningServer) -> None:
    options = [("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UploadNumbers(_one_big_request(64 * MiB + 1))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def _one_big_request(size: int):
    # a NumberRequest with an unknown field padded to ``size`` bytes: cheap for the server to
    # reject, and only the size matters
    request = core_pb2.NumberRequest(value=1)
    payload = request.SerializeToString() + _unknown_bytes_field(99, size)
    yield core_pb2.NumberRequest.FromString(payload)


def _unknown_bytes_field(number: int, size: int) -> bytes:
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    return varint(number << 3 | 2) + varint(size) + b"\0" * size


async def test_access_log_line_per_call(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    server = await start_server(access_log=True)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        await stub.Ping(core_pb2.PingRequest(message="log me"))
        ok = stub.StreamNumbers(core_pb2.StreamNumbersRequest(count=3))
        assert len([r async for r in ok]) == 3
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.StreamNumbers(core_pb2.StreamNumbersRequest(count=10**6)).read()
        cancelled = stub.StreamNumbers(core_pb2.StreamNumbersRequest(count=100, interval_ms=50))
        await cancelled.read()
        await cancelled.read()  # after one 50 ms pause
        cancelled.cancel()

        def access() -> list[dict]:
            return [r.__dict__["fields"] for r in caplog.records if r.name == ACCESS_LOGGER]

        await wait_until(lambda: len(access()) == 4)
    lines = access()
    assert [(f["grpc_method"].rsplit("/", 1)[1], f["grpc_code"]) for f in lines] == [
        ("Ping", "OK"),
        ("StreamNumbers", "OK"),
        ("StreamNumbers", "INVALID_ARGUMENT"),
        ("StreamNumbers", "CANCELLED"),
    ]
    assert all(f["peer"].startswith("ipv4:127.0.0.1:") for f in lines)
    assert all(isinstance(f["duration_ms"], float) and f["duration_ms"] >= 0 for f in lines)
    assert lines[3]["duration_ms"] >= 40  # logged when the stream ended, not when it started


async def test_no_access_log_by_default(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with grpc.aio.insecure_channel(server.address) as channel:
        await core_pb2_grpc.CoreServicesStub(channel).Ping(core_pb2.PingRequest(message="quiet"))
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]
