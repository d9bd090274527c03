"""Shared fixtures: real visionrpc servers on free loopback ports (no gRPC mocks).

- ``start_server(services=(), **settings_overrides)`` (async factory) starts a VisionServer on the
  test's event loop and returns a RunningServer; every server is stopped at teardown.
- ``server``: one default server (CoreServices only) started with ``start_server``.
- ``start_threaded_server`` / ``threaded_server``: the same, on an event loop in a background
  thread (``visionrpc.server.local.ServerThread``), for blocking code (the sync Client, the CLI).
- ``channel`` / ``stub``: an aio channel and a CoreServices stub to ``server``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import pytest

from tests.helpers import RunningServer, StartServer, StartThreadedServer, make_settings
from visionrpc.server.app import Service, VisionServer
from visionrpc.server.local import ServerThread
from visionrpc.v1 import core_pb2_grpc


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    started: list[VisionServer] = []

    async def _start(services: Sequence[Service] = (), **overrides: Any) -> RunningServer:
        settings = make_settings(**overrides)
        server = VisionServer(settings, services)
        started.append(server)
        await server.start()
        return RunningServer(server, settings)

    yield _start
    for server in reversed(started):
        await server.stop(0)


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()


@pytest.fixture
def start_threaded_server() -> Iterator[StartThreadedServer]:
    thread = ServerThread()

    def _start(services: Sequence[Service] = (), **overrides: Any) -> RunningServer:
        settings = make_settings(**overrides)
        return RunningServer(thread.start(settings, services), settings)

    yield _start
    thread.close()


@pytest.fixture
def threaded_server(start_threaded_server: StartThreadedServer) -> RunningServer:
    return start_threaded_server()


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> core_pb2_grpc.CoreServicesAsyncStub:
    return core_pb2_grpc.CoreServicesStub(channel)
