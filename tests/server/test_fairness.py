"""Fairness between clients on a real server: a greedy client cannot starve a polite one.

Each client is its own connection. Channels in one process share a connection when their target
and options match (gRPC's global subchannel pool), so every channel here uses a local pool.
Load loops are bounded in count; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest

from tests.helpers import RunningServer, StartServer, make_settings, wait_until
from tests.server.test_auth import OPS, STATION, TOKENS_YAML, bearer
from visionrpc.server import auth
from visionrpc.server.fairness import client_key
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.v1 import core_pb2, core_pb2_grpc, inference_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
LIMIT = 4  # fairness.max_in_flight_per_client in these tests
POLITE_CALLS = 5


def noisy_jpeg(width: int, height: int) -> bytes:
    """A JPEG that takes a while to decode (noise does not compress)."""
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


BIG = noisy_jpeg(1280, 960)
SMALL = noisy_jpeg(64, 48)


async def serve(start_server: StartServer, **settings: Any) -> RunningServer:
    """A server with the shipped model and ``LIMIT`` calls and frames in flight per client."""
    overrides = {"access_log": False, "fairness": {"max_in_flight_per_client": LIMIT}, **settings}
    return await start_server([InferenceServicer(make_settings(**overrides))], **overrides)


async def polite_calls(address: str) -> list[grpc.StatusCode]:
    """One call at a time, each answered before the next: what a well-behaved client does."""
    codes = []
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)
        for i in range(POLITE_CALLS):
            try:
                reply = await stub.Infer(pb.InferRequest(image_bytes=SMALL, request_id=f"p{i}"))
                assert reply.request_id == f"p{i}" and reply.image_width == 64
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
    return codes


async def test_a_greedy_client_gets_resource_exhausted_and_a_polite_one_is_served(
    start_server: StartServer,
) -> None:
    running = await serve(start_server, runtime={"instances": 1})
    outcomes: collections.Counter[str] = collections.Counter()
    details: set[str] = set()
    stop = asyncio.Event()

    async with grpc.aio.insecure_channel(running.address, options=OWN_CONNECTION) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)

        async def greedy_caller() -> None:
            for _ in range(200):  # bounded; stops once the polite client is done
                if stop.is_set():
                    return
                try:
                    await stub.Infer(pb.InferRequest(image_bytes=BIG))
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1
                    details.add(exc.details() or "")

        greedy = [asyncio.create_task(greedy_caller()) for _ in range(4 * LIMIT)]
        await wait_until(lambda: sum(outcomes.values()) > 0, timeout=60)
        polite = await polite_calls(running.address)
        stop.set()
        await asyncio.gather(*greedy)

    assert polite == [grpc.StatusCode.OK] * POLITE_CALLS
    assert outcomes["OK"] > 0 and outcomes["RESOURCE_EXHAUSTED"] > 0
    assert set(outcomes) == {"OK", "RESOURCE_EXHAUSTED"}
    assert all(f"fairness.max_in_flight_per_client={LIMIT}" in d for d in details), details


async def test_a_client_with_many_streams_waits_its_turn_and_another_is_served(
    start_server: StartServer,
) -> None:
    running = await serve(start_server, runtime={"instances": 1}, stream_window=4)
    servicer = running.server.services[1]
    assert isinstance(servicer, InferenceServicer)
    frames_per_stream, streams = 12, 8
    answered: collections.Counter[str] = collections.Counter()
    most_in_flight = 0

    async with grpc.aio.insecure_channel(running.address, options=OWN_CONNECTION) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)

        async def frames(stream: int) -> AsyncIterator[pb.InferRequest]:
            for i in range(frames_per_stream):
                yield pb.InferRequest(image_bytes=BIG, request_id=f"{stream}-{i}")

        async def one_stream(stream: int) -> None:
            async for reply in stub.InferStream(frames(stream)):
                answered["error" if reply.HasField("error") else "ok"] += 1

        async def watch() -> None:
            nonlocal most_in_flight
            while True:
                slots = servicer._in_flight
                most_in_flight = max(most_in_flight, *map(slots.held, list(slots._held)), 0)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        greedy = [asyncio.create_task(one_stream(s)) for s in range(streams)]
        await wait_until(lambda: sum(answered.values()) > 0, timeout=60)
        polite = await polite_calls(running.address)
        await asyncio.wait_for(asyncio.gather(*greedy), 120)
        watcher.cancel()

    assert polite == [grpc.StatusCode.OK] * POLITE_CALLS
    # the greedy client's frames are all answered (it is slowed down, not refused) ...
    assert answered == {"ok": streams * frames_per_stream}
    # ... and never more than its share of them were in work at once
    assert 0 < most_in_flight <= LIMIT


async def test_streams_per_connection_are_limited(start_server: StartServer) -> None:
    running = await start_server(max_concurrent_streams=2)
    core = running.core
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, core.active_streams)
            await asyncio.sleep(0.005)

    async def numbers(stub: core_pb2_grpc.CoreServicesAsyncStub) -> str:
        request = core_pb2.StreamNumbersRequest(count=3, interval_ms=100)
        try:
            assert [reply.index async for reply in stub.StreamNumbers(request)] == [0, 1, 2]
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    async with grpc.aio.insecure_channel(running.address, options=OWN_CONNECTION) as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        watcher = asyncio.create_task(watch())
        outcomes = collections.Counter(await asyncio.gather(*(numbers(stub) for _ in range(6))))
        watcher.cancel()
        # grpcio's client sends streams beyond the limit anyway: the server refuses them
        # (RST_STREAM REFUSED_STREAM), which the caller sees as UNAVAILABLE, a code to retry.
        assert set(outcomes) <= {"OK", "UNAVAILABLE"} and outcomes["OK"] >= 2
        assert await numbers(stub) == "OK"  # the connection still serves
    assert 0 < most <= 2


KEYS = "visionrpc.test.ClientKey"


class ClientKeyEcho:
    """A service answering with the key its call's per-client limits are counted under."""

    name = KEYS

    def add_to_server(self, server: grpc.aio.Server) -> None:
        async def unary(_request: bytes, context: Any) -> bytes:
            return client_key(context).encode()

        handlers = {"Key": grpc.unary_unary_rpc_method_handler(unary)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(KEYS, handlers),))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def keys_of(address: str, tokens: list[str | None]) -> list[str]:
    """The client key of one call per token, each on a connection of its own."""
    keys = []
    for token in tokens:
        async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
            call = channel.unary_unary(f"/{KEYS}/Key", None, None)
            metadata = bearer(token) if token else None
            keys.append((await call(b"", metadata=metadata)).decode())
    return keys


async def test_limits_are_per_token_across_connections_and_per_connection_without_tokens(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(auth.SERVICE_SCOPES, KEYS, "inference")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS_YAML)
    with_tokens = await start_server([ClientKeyEcho()], auth={"tokens_file": tokens})
    first, second, other = await keys_of(with_tokens.address, [STATION, STATION, OPS])
    assert first == second == "token:station-7"  # two connections, one token: one set of limits
    assert other == "token:ops"

    without = await start_server([ClientKeyEcho()])
    a, b = await keys_of(without.address, [None, None])
    assert a != b and a.startswith("ipv") and b.startswith("ipv")  # each connection its own
