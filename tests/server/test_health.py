"""grpc.health.v1: known services report their status; an unknown one is NOT_FOUND, saying why."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from tests.helpers import RunningServer
from visionrpc.cli.main import app

CORE = "visionrpc.v1.CoreServices"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN_NOPE = (
    "unknown service 'nope'; this server reports health for: '' (overall), "
    "visionrpc.v1.CoreServices"
)


async def test_check_of_an_unknown_service_says_which_are_known(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == UNKNOWN_NOPE
        for name in ("", CORE):  # the known ones still answer on the same channel
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == SERVING


async def test_watch_of_an_unknown_service_follows_the_protocol(server: RunningServer) -> None:
    """grpc.health.v1: Watch answers SERVICE_UNKNOWN and stays open (client-side health checking
    in gRPC libraries relies on it), unlike Check."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        reply = await watch.read()
        assert isinstance(reply, health_pb2.HealthCheckResponse)
        assert reply.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        watch.cancel()


async def test_watch_of_a_known_service_follows_its_status(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=CORE)
        )
        assert (await watch.read()).status == SERVING
        await server.server.health.set(CORE, NOT_SERVING)
        assert (await watch.read()).status == NOT_SERVING
        watch.cancel()


def test_health_cli_prints_the_reason(threaded_server: RunningServer) -> None:
    args = ["health", "--service", "nope", "--target", threaded_server.address]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr == f"error: NOT_FOUND: {UNKNOWN_NOPE}\n"
    ok = CliRunner().invoke(app, ["health", "--target", threaded_server.address])
    assert (ok.exit_code, ok.stdout) == (0, "SERVING\n")
