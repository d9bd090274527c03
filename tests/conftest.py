"""Shared fixtures: real visionrpc servers on free loopback ports (no gRPC mocks).

- ``start_server(services=(), **settings_overrides)`` (async factory) starts a VisionServer on the
  test's event loop and returns a RunningServer; every server is stopped at teardown.
- ``server``: one default server (CoreServices only) started with ``start_server``.
- ``start_threaded_server`` / ``threaded_server``: the same, on an event loop in a background
  thread, for blocking code (the sync Client, the CLI) that would otherwise block the test loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from visionrpc.server.app import Service, VisionServer
from visionrpc.server.core_services import CoreServicesServicer
from visionrpc.settings import Settings

T = TypeVar("T")

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


class LoopThread:
    """An asyncio loop in a daemon thread; ``run(coro)`` executes there and returns the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


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

        server = loop.run(create())
        started.append(server)
        return RunningServer(server, settings)

    yield _start
    for server in reversed(started):
        loop.run(server.stop(0))
    loop.close()


@pytest.fixture
def threaded_server(start_threaded_server: Callable[..., RunningServer]) -> RunningServer:
    return start_threaded_server()
