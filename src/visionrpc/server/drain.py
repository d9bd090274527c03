"""Draining: what a server does between SIGTERM and exit so that no stream work is lost.

``VisionServer.stop`` drives it (see ``server.app``): health goes NOT_SERVING, the interceptor
refuses new application calls with :data:`DRAINING_MESSAGE`, every service with a ``drain()`` tells
its open streams to finish, and gRPC's own ``server.stop`` runs only once the in-flight calls
(counted by :class:`InFlight`) are done or the grace period is over, so health keeps answering
NOT_SERVING for as long as the server answers anything.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

from visionrpc.errors import NotReadyError

DRAINING_MESSAGE = "server is draining (shutting down); retry on another server"
"""What a call refused or ended by a drain says; UNAVAILABLE, which the client retries."""


class DrainingError(NotReadyError):
    """A call refused or ended because the server is draining (UNAVAILABLE, like NotReadyError)."""

    def __init__(self, message: str = DRAINING_MESSAGE) -> None:
        super().__init__(message)


@runtime_checkable
class Drains(Protocol):
    """A service with open streams to end on drain (``server.app.Service`` may also be this).

    ``drain()`` is called once, on the server's loop, when the drain starts; it must return at
    once: streams finish on their own tasks and end with a :class:`DrainingError`.
    """

    def drain(self) -> None: ...


async def drain_started(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` s; True as soon as ``event`` (the drain) is set. A sleep that wakes
    for the drain, so a stream pacing its output ends at once."""
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


class InFlight:
    """The application calls in progress, so that a drain waits for them and no longer.

    Counted by the interceptor around each call (all on the server's one event loop, so a plain
    integer is enough).
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.count += 1

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no call is in flight; False when ``timeout`` s pass first."""
        if self.count == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return self.count == 0
        finally:
            self._idle = None
        return True
