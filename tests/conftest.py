"""Shared fixtures: real visionrpc servers on free loopback ports (no gRPC mocks).

- ``start_server(services=(), **settings_overrides)`` (async factory) starts a VisionServer on the
  test's event loop and returns a RunningServer; every server is stopped at teardown.
- ``server``: one default server (CoreServices only) started with ``start_server``.
- ``start_threaded_server`` / ``threaded_server``: the same, on an event loop in a background
  thread, for blocking code (the sync Client, the CLI) that would otherwise block the test loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from visionrpc.server.app import Service, VisionServer
from visionrpc.server.core_services import CoreServicesServicer
from visionrpc.server.local import LoopThread
from visionrpc.settings import Settings

TEST_DEFAULTS: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "grace_period_s": 1.0}


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test server: loopback, free port, short grace, then the overrides."""
    return Settings(**{**TEST_DEFAULTS, **overrides})


@dataclass
class RunningServer:
    server: VisionServer
    settings: Settings

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def core(self) -> CoreServicesServicer:
        """The CoreServices servicer (counters, chat hub) for white-box assertions."""
        return self.server.core_servicer


StartServer = Callable[..., Awaitable[RunningServer]]


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
def start_threaded_server() -> Iterator[Callable[..., RunningServer]]:
    loop = LoopThread()
    started: list[VisionServer] = []

    def _start(services: Sequence[Service] = (), **overrides: Any) -> RunningServer:
        settings = make_settings(**overrides)

        async def create() -> VisionServer:  # grpc.aio objects must be built on their loop
            server = VisionServer(settings, services)
            await server.start()
            return server

        server = loop.run(create(), timeout=30)
        started.append(server)
        return RunningServer(server, settings)

    yield _start
    for server in reversed(started):
        loop.run(server.stop(0), timeout=30)
    loop.close()


@pytest.fixture
def threaded_server(start_threaded_server: Callable[..., RunningServer]) -> RunningServer:
    return start_threaded_server()
