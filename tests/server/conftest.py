"""Server-test helpers on top of the shared server fixtures in tests/conftest.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from tests.conftest import RunningServer
from visionrpc.v1 import core_pb2, core_pb2_grpc

EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (cheap, on the test loop) until true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> core_pb2_grpc.CoreServicesStub:
    return core_pb2_grpc.CoreServicesStub(channel)


class ChatSession:
    """A raw Chat stream driven step by step: ``send`` queues a message, ``read`` returns one."""

    def __init__(self, stub: core_pb2_grpc.CoreServicesStub, room: str, sender: str) -> None:
        self.room, self.sender = room, sender
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.call = stub.Chat(self._requests())

    async def _requests(self) -> AsyncIterator[core_pb2.ChatMessage]:
        while (text := await self._outbox.get()) is not None:
            yield core_pb2.ChatMessage(room=self.room, sender=self.sender, text=text)

    def send(self, text: str) -> None:
        self._outbox.put_nowait(text)

    def close(self) -> None:
        """Half-close: no more messages from this side."""
        self._outbox.put_nowait(None)

    async def read(self, timeout: float = 5.0) -> core_pb2.ChatMessage:
        message = await asyncio.wait_for(self.call.read(), timeout)
        assert message is not EOF, "stream ended"
        return message

    async def join(self) -> core_pb2.ChatMessage:
        """Join with an empty message and wait for its echo: from then on we are in the room."""
        self.send("")
        return await self.read()

    async def read_rest(self, timeout: float = 5.0) -> list[core_pb2.ChatMessage]:
        out = []
        while (message := await asyncio.wait_for(self.call.read(), timeout)) is not EOF:
            out.append(message)
        return out
