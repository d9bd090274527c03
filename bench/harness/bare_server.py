"""A bare grpc.aio server with CoreServices' Ping and StreamNumbers: the reference for section d.

Same proto, same reply contents (Ping: echo, timestamp, version, instance id; StreamNumbers: index
and value), but no interceptors, health, reflection, validation or counters: what "grpc.aio
itself" costs. Run: ``python -m bench.harness.bare_server --port N`` (SIGTERM stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from visionrpc import __version__
from visionrpc.v1 import core_pb2, core_pb2_grpc


class BareCoreServicer(core_pb2_grpc.CoreServicesServicer):
    def __init__(self) -> None:
        self.instance_id = str(uuid.uuid4())

    async def Ping(self, request: core_pb2.PingRequest, context: Any) -> core_pb2.PingReply:
        now = Timestamp()
        now.FromDatetime(datetime.now(UTC))
        return core_pb2.PingReply(
            message=request.message,
            server_time=now,
            server_version=__version__,
            instance_id=self.instance_id,
        )

    async def UploadNumbers(
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> core_pb2.UploadSummary:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "the bare server has Ping and StreamNumbers only"
        )

    async def Chat(
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[core_pb2.ChatMessage]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "the bare server has Ping and StreamNumbers only"
        )
        yield core_pb2.ChatMessage()  # never reached: makes this a stream handler

    async def StreamNumbers(
        self, request: core_pb2.StreamNumbersRequest, context: Any
    ) -> AsyncIterator[core_pb2.NumberReply]:
        step = request.step or 1
        for index in range(request.count):
            yield core_pb2.NumberReply(index=index, value=request.start + index * step)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    core_pb2_grpc.add_CoreServicesServicer_to_server(BareCoreServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare grpc.aio server on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
