"""ClientSlots: at most ``limit`` holders at once per client, each client's waiters in FIFO order.

A client is any plain string (the server passes its connection or identity). One client using all
its slots never delays another client, which is the point: the pipeline bounds each client's
images being decoded at once, so a request from a quiet client queues behind a few decodes instead
of behind everything a busy client sent; the server bounds each client's calls and stream frames
in flight. Bound to one event loop (the grpc.aio server's), not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class ClientSlots:
    """Per-client counting semaphores, created on first use and freed when idle."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._held: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    @property
    def clients(self) -> int:
        """Clients holding at least one slot now."""
        return len(self._held)

    def held(self, client: str) -> int:
        """Slots ``client`` holds now."""
        return self._held.get(client, 0)

    def try_acquire(self, client: str) -> bool:
        """Take a slot if one is free at once (and nobody of this client waits for one)."""
        held = self._held.get(client, 0)
        if held >= self.limit or client in self._waiters:
            return False
        self._held[client] = held + 1
        return True

    async def acquire(self, client: str) -> None:
        """Take a slot, waiting behind this client's earlier waiters when all are held."""
        if self.try_acquire(client):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(client, deque()).append(waiter)
        try:
            await waiter  # release() hands its slot over by resolving the future
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(client)  # handed over just as we gave up: pass it on
            else:
                self._forget(client, waiter)
            raise

    def release(self, client: str) -> None:
        """Give a slot back: to this client's next waiter, else free it."""
        waiters = self._waiters.get(client)
        while waiters:
            waiter = waiters.popleft()
            if not waiters:
                del self._waiters[client]
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; the count stays
                return
            waiters = self._waiters.get(client)
        held = self._held[client] - 1
        if held:
            self._held[client] = held
        else:
            del self._held[client]

    def _forget(self, client: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(client)
        if waiters is not None:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                del self._waiters[client]
