"""Closed-loop load drivers, bounded by a request count and a wall-clock duration.

``closed_loop`` runs N workers; each opens a caller (a context manager, e.g. one InferStream
call) and then repeatedly takes the next request index, awaits the call and records its
latency, until the duration or the request budget is spent. The gRPC drivers below all use one
grpc.aio channel (the AsyncClient's, with its retry and message-size options) and pre-built
requests, and they do not convert answers, to keep the client's own CPU use, which shares the
machine with the server, low.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from bench.harness.report import ResultRow, Section
from visionrpc.client import AsyncClient
from visionrpc.v1 import core_pb2, core_pb2_grpc, inference_pb2, inference_pb2_grpc

Call = Callable[[int], Awaitable[Any]]
CallerFactory = Callable[[int], AbstractAsyncContextManager[Call]]


@dataclass
class LoadResult:
    """What one measurement point produced."""

    count: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def add(self, part: LoadResult) -> None:
        """Pool another slice of the same measurement into this one."""
        self.count += part.count
        self.elapsed_s += part.elapsed_s
        self.latencies_ms += part.latencies_ms
        self.errors += part.errors
        self.first_error = self.first_error or part.first_error

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.asarray(self.latencies_ms), q))

    @property
    def p50_ms(self) -> float | None:
        return self.percentile(50)

    @property
    def p99_ms(self) -> float | None:
        return self.percentile(99)

    def row(
        self,
        name: str,
        section: Section,
        model: str,
        method: str,
        concurrency: int,
        *,
        images_per_call: int = 1,
        **extra: Any,
    ) -> ResultRow:
        """This point as a report row; ``images_per_call`` > 1 for batched calls."""
        row: ResultRow = {
            "name": name,
            "section": section.value,
            "model": model,
            "method": method,
            "concurrency": concurrency,
            "images_per_s": self.rate * images_per_call,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "requests": self.count,
            "errors": self.errors,
            "duration_s": round(self.elapsed_s, 3),
        }
        if self.first_error:
            row["notes"] = self.first_error
        row.update(extra)  # type: ignore[typeddict-item]
        return row


def plain_caller(call: Call) -> CallerFactory:
    """A caller factory for calls that need no per-worker state."""

    @contextlib.asynccontextmanager
    async def factory(_worker: int) -> AsyncIterator[Call]:
        yield call

    return factory


async def closed_loop(
    make_caller: CallerFactory, *, concurrency: int, duration_s: float, max_requests: int
) -> LoadResult:
    """Run ``concurrency`` workers until ``duration_s`` passes or ``max_requests`` are issued."""
    latencies: list[float] = []
    next_index = 0
    errors = 0
    first_error = ""
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker(w: int) -> None:
        nonlocal next_index, errors, first_error
        async with make_caller(w) as call:
            while next_index < max_requests and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                t0 = time.perf_counter()
                try:
                    await call(index)
                except Exception as exc:  # counted and reported, not fatal
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                    if isinstance(exc, ConnectionError):  # this worker's stream is gone
                        return
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return LoadResult(len(latencies), time.perf_counter() - start, latencies, errors, first_error)


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


def infer_requests(images: Sequence[bytes], model: str) -> list[inference_pb2.InferRequest]:
    """One pre-built request per image (default thresholds, no masks returned)."""
    return [inference_pb2.InferRequest(model=model, image_bytes=data) for data in images]


async def grpc_infer(
    client: AsyncClient,
    requests: Sequence[inference_pb2.InferRequest],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
) -> LoadResult:
    """Unary Infer, ``concurrency`` calls in flight on the client's channel."""
    stub = inference_pb2_grpc.InferenceMethodsStub(client.channel)
    timeout = client.timeout

    async def call(i: int) -> None:
        await stub.Infer(requests[i % len(requests)], timeout=timeout)

    return await closed_loop(
        plain_caller(call),
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
    )


async def grpc_infer_stream(
    client: AsyncClient,
    requests: Sequence[inference_pb2.InferRequest],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
) -> LoadResult:
    """InferStream: ``concurrency`` streams on the channel, one frame in flight on each.

    A frame's latency is write → its answer, so the numbers compare with unary Infer at the same
    concurrency; the stream saves the per-call HTTP/2 stream set-up and headers.
    """
    stub = inference_pb2_grpc.InferenceMethodsStub(client.channel)

    @contextlib.asynccontextmanager
    async def open_stream(_worker: int) -> AsyncIterator[Call]:
        stream = stub.InferStream()

        async def call(i: int) -> None:
            try:
                await stream.write(requests[i % len(requests)])
                reply = await stream.read()
            except grpc.aio.AioRpcError as exc:  # the stream is over: stop this worker
                raise ConnectionError(f"InferStream failed: {exc.code().name}") from exc
            if reply is EOF:
                raise ConnectionError("InferStream ended early")
            if reply.HasField("error") and reply.error.code:
                raise RuntimeError(f"frame failed: {reply.error.message}")

        try:
            yield call
        finally:
            # Half-close and wait for the server to end the stream with its status: the bench
            # never cancels a stream (cancelled streams have crashed servers under test).
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stream.done_writing()
                while await stream.read() is not EOF:
                    pass
                await stream.code()

    return await closed_loop(
        open_stream, concurrency=concurrency, duration_s=duration_s, max_requests=max_requests
    )


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
