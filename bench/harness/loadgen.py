"""The harness's load drivers on top of visionrpc's closed loop (visionrpc.client.loadtest).

Infer and InferStream load is the package's own (``infer_load``, ``infer_stream_load``), the
load ``visionrpc bench --target`` generates. Here: the report row of a point, the synchronous
loop of the in-process pipelines, and the CoreServices drivers (Ping, Ping after idle,
StreamNumbers), all on one grpc.aio channel (the AsyncClient's) with pre-built requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench.harness.report import ResultRow, Section
from visionrpc.client import AsyncClient
from visionrpc.client.loadtest import LoadResult, closed_loop, plain_caller
from visionrpc.v1 import core_pb2, core_pb2_grpc


def row(
    result: LoadResult,
    name: str,
    section: Section,
    model: str,
    method: str,
    concurrency: int,
    *,
    images_per_call: int = 1,
    **extra: Any,
) -> ResultRow:
    """A point as a report row; ``images_per_call`` > 1 for batched calls."""
    out: ResultRow = {
        "name": name,
        "section": section.value,
        "model": model,
        "method": method,
        "concurrency": concurrency,
        "images_per_s": result.rate * images_per_call,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "requests": result.count,
        "errors": result.errors,
        "duration_s": round(result.elapsed_s, 3),
    }
    if result.first_error:
        out["notes"] = result.first_error
    out.update(extra)  # type: ignore[typeddict-item]
    return out


def sync_loop(
    call: Callable[[int], Any], n_items: int, duration_s: float, max_calls: int
) -> LoadResult:
    """Call ``call(i)`` one after another until the duration or the call budget is spent."""
    latencies = []
    start = time.perf_counter()
    deadline = start + duration_s
    i = 0
    while i < max_calls and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        call(i % n_items)
        latencies.append((time.perf_counter() - t0) * 1000)
        i += 1
    return LoadResult(len(latencies), time.perf_counter() - start, latencies)


# -- gRPC drivers ---------------------------------------------------------------------------------


async def grpc_ping(
    client: AsyncClient, *, concurrency: int, duration_s: float, max_requests: int
) -> LoadResult:
    """Unary Ping with a short message, ``concurrency`` calls in flight."""
    stub = core_pb2_grpc.CoreServicesStub(client.channel)
    request = core_pb2.PingRequest(message="bench")
    timeout = client.timeout

    async def call(_i: int) -> None:
        await stub.Ping(request, timeout=timeout)

    return await closed_loop(
        plain_caller(call),
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
    )


async def grpc_ping_after_idle(
    client: AsyncClient, *, duration_s: float, idle_s: float = 0.010
) -> LoadResult:
    """One Ping at a time, each after ``idle_s`` of silence: the round trip a request pays when
    the server has been idle, e.g. while an Infer computes for ~10 ms. On a VM that wake-up costs
    more than a back-to-back call, so this is the floor of served p50 at concurrency 1 minus
    in-process p50."""
    stub = core_pb2_grpc.CoreServicesStub(client.channel)
    request = core_pb2.PingRequest(message="bench")
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s:
        await asyncio.sleep(idle_s)
        t0 = time.perf_counter()
        await stub.Ping(request, timeout=client.timeout)
        latencies.append((time.perf_counter() - t0) * 1000)
    return LoadResult(len(latencies), time.perf_counter() - start, latencies)


async def grpc_stream_numbers(
    client: AsyncClient,
    *,
    streams: int,
    duration_s: float,
    max_messages: int,
    count_per_call: int = 5_000,
) -> LoadResult:
    """StreamNumbers messages/s: ``streams`` calls at a time, a new one when one completes.

    Calls always run to completion (never cancelled), so the bench also works against servers
    that mishandle cancelled streams; the duration may be overrun by one call (~0.5 s). Latencies
    are not per message (meaningless for a stream), so p50/p99 stay empty.
    """
    stub = core_pb2_grpc.CoreServicesStub(client.channel)
    request = core_pb2.StreamNumbersRequest(start=0, count=count_per_call)
    received = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        nonlocal received
        while received < max_messages and time.perf_counter() < deadline:
            async for _ in stub.StreamNumbers(request):
                received += 1

    await asyncio.gather(*(worker() for _ in range(streams)))
    return LoadResult(received, time.perf_counter() - start)
