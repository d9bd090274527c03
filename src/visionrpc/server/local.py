"""A server on a background thread of this process: for `visionrpc eval`, `demo --local`, `bench`.

grpc.aio objects belong to the loop that made them, so the server is built and stopped on its own
loop in a daemon thread while the caller keeps using blocking code.
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


@contextmanager
def running_server(
    settings: Settings, services: Sequence[Service] | None = None
) -> Iterator[VisionServer]:
    """Start a VisionServer (default services unless given) in a thread; stop it on exit."""
    loop = LoopThread()

    async def create() -> VisionServer:
        server = VisionServer(
            settings, default_services(settings) if services is None else services
        )
        await server.start()
        return server

    try:
        server = loop.run(create())
        try:
            yield server
        finally:
            loop.run(server.stop(0))
    finally:
        loop.close()
