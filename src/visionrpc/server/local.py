"""Servers on a background thread of this process: for `visionrpc eval`, `demo --local` and tests.

grpc.aio objects belong to the loop that made them, so servers are built, run and stopped on their
own loop in a daemon thread while the caller keeps using blocking code.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from visionrpc.server.app import Service, VisionServer, default_services
from visionrpc.settings import Settings

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread; ``run(coro)`` executes there and returns the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class ServerThread:
    """Starts VisionServers on one background loop and stops them all on ``close()``."""

    def __init__(self) -> None:
        self._loop = LoopThread()
        self._servers: list[VisionServer] = []

    def start(self, settings: Settings, services: Sequence[Service] | None = None) -> VisionServer:
        """A started server (the default services unless ``services`` is given)."""

        async def create() -> VisionServer:  # grpc.aio objects must be built on their loop
            chosen = default_services(settings) if services is None else services
            server = VisionServer(settings, chosen)
            await server.start()
            return server

        server = self._loop.run(create())
        self._servers.append(server)
        return server

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 120) -> T:
        """Run a coroutine on the servers' loop (e.g. to look at their state)."""
        return self._loop.run(coro, timeout)

    def close(self) -> None:
        try:
            for server in reversed(self._servers):
                self._loop.run(server.stop(0))
        finally:
            self._servers.clear()
            self._loop.close()


@contextmanager
def running_server(
    settings: Settings, services: Sequence[Service] | None = None
) -> Iterator[VisionServer]:
    """Start a VisionServer (default services unless given) in a thread; stop it on exit."""
    thread = ServerThread()
    try:
        yield thread.start(settings, services)
    finally:
        thread.close()
