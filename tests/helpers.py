"""Helpers for tests: settings for test servers, a handle on a running server, polling, chat.

Fixtures that use these live in the conftest files; tests import helpers from here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from visionrpc.server.app import VisionServer
from visionrpc.server.reference.chat import ChatHub
from visionrpc.server.reference.core_services import CoreServicesServicer
from visionrpc.settings import Settings
from visionrpc.v1 import core_pb2, core_pb2_grpc

SERVER_SIDE = ("visionrpc.runtime", "visionrpc.server", "onnxruntime", "cv2", "pycocotools")
"""Modules a client-side import must not pull in (a client-only install has none of them)."""

TEST_DEFAULTS: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "grace_period_s": 1.0}
EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


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
        return self.server.core


StartServer = Callable[..., Awaitable[RunningServer]]
StartThreadedServer = Callable[..., RunningServer]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (cheap, on the test loop) until true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


class ChatSession:
    """A raw Chat stream driven step by step: ``send`` queues a message, ``read`` returns one."""

    def __init__(self, stub: core_pb2_grpc.CoreServicesAsyncStub, room: str, sender: str) -> None:
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
        assert isinstance(message, core_pb2.ChatMessage), "stream ended"
        return message

    async def join(self) -> core_pb2.ChatMessage:
        """Join with an empty message and wait for its echo: from then on we are in the room."""
        self.send("")
        return await self.read()

    async def read_rest(self, timeout: float = 5.0) -> list[core_pb2.ChatMessage]:
        out = []
        while isinstance(
            message := await asyncio.wait_for(self.call.read(), timeout), core_pb2.ChatMessage
        ):
            out.append(message)
        assert message is EOF
        return out


@asynccontextmanager
async def reader_and_non_reader(
    address: str, room: str
) -> AsyncIterator[tuple[ChatSession, ChatSession]]:
    """Two members of chat ``room`` on channels of their own, both joined (the first has read
    the second's join): ``fast`` reads, ``slow`` never will. Without BDP probing the slow one's
    flow-control window stays small, so the server-side buffer fills instead of gRPC's."""
    async with (
        grpc.aio.insecure_channel(address) as fast_channel,
        grpc.aio.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)]) as slow_channel,
    ):
        fast = ChatSession(core_pb2_grpc.CoreServicesStub(fast_channel), room, "fast")
        slow = ChatSession(core_pb2_grpc.CoreServicesStub(slow_channel), room, "slow")
        await fast.join()
        await slow.join()
        await fast.read()  # slow's join
        yield fast, slow


async def post_until_dropped(fast: ChatSession, hub: ChatHub) -> None:
    """``fast`` posts large messages, reading each back (it keeps up and is never blocked), until
    ``hub`` has dropped a reader; at most 500."""
    big = "x" * 64 * 1024  # large messages fill the never-reading client's windows quickly
    posted = 0
    while hub.dropped_total == 0:
        assert posted < 500, "the reader that never reads was never dropped"
        fast.send(big)
        await fast.read()
        posted += 1


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def modules_imported_by(module: str, prefixes: tuple[str, ...] = SERVER_SIDE) -> list[str]:
    """The modules starting with one of ``prefixes`` that importing ``module`` loads, in a fresh
    interpreter (what a user's ``import`` really costs)."""
    code = (
        f"import json, sys, {module}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    found: list[str] = json.loads(done.stdout)
    return found
