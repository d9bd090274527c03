"""Closed-loop load on one channel, bounded by a request count and a wall-clock duration.

``closed_loop`` runs N workers; each opens a caller (a context manager, e.g. one InferStream
call), then takes the next request index, awaits the call and records its latency, until the
duration or the request budget is spent. ``visionrpc bench --target`` and the project's
comparison benchmark (bench/harness) both measure with it, so their numbers mean the same thing.

The Infer drivers use the AsyncClient's channel (its retry and message-size options) and
pre-built requests, and do not convert answers: the client's own CPU use, which may share the
machine with the server, stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from visionrpc.client.aio import AsyncClient
from visionrpc.v1 import inference_pb2, inference_pb2_grpc
from visionrpc.wire.codes import code_name

Call = Callable[[int], Awaitable[Any]]
CallerFactory = Callable[[int], AbstractAsyncContextManager[Call]]


class CallFailed(Exception):
    """A call answered with a gRPC status ``code`` (a name such as ``"NOT_FOUND"``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class StreamEnded(CallFailed, ConnectionError):
    """The worker's stream is over (a status, or an end before the answer): the worker stops."""


def error_code(exc: BaseException) -> str:
    """The status code name of a failed call; the exception's type name when it has none."""
    if isinstance(exc, CallFailed):
        return exc.code
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return str(exc.code().name)
    return type(exc).__name__


def error_text(exc: BaseException) -> str:
    """One line for a report: ``CODE: details`` for a failed call, else ``Type: message``."""
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "details", None)):
        text = f"{error_code(exc)}: {exc.details()}"
    elif isinstance(exc, CallFailed):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


@dataclass
class LoadResult:
    """What one measurement point produced: successes' latencies and failures by status code."""

    count: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    error_codes: Counter[str] = field(default_factory=Counter)

    def add(self, part: LoadResult) -> None:
        """Pool another slice of the same measurement into this one."""
        self.count += part.count
        self.elapsed_s += part.elapsed_s
        self.latencies_ms += part.latencies_ms
        self.errors += part.errors
        self.first_error = self.first_error or part.first_error
        self.error_codes.update(part.error_codes)

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.asarray(self.latencies_ms), q))

    @property
    def p50_ms(self) -> float | None:
        return self.percentile(50)

    @property
    def p90_ms(self) -> float | None:
        return self.percentile(90)

    @property
    def p99_ms(self) -> float | None:
        return self.percentile(99)


def plain_caller(call: Call) -> CallerFactory:
    """A caller factory for calls that need no per-worker state."""

    @contextlib.asynccontextmanager
    async def factory(_worker: int) -> AsyncIterator[Call]:
        yield call

    return factory


async def closed_loop(
    make_caller: CallerFactory, *, concurrency: int, duration_s: float, max_requests: int
) -> LoadResult:
    """Run ``concurrency`` workers until ``duration_s`` passes or ``max_requests`` are issued.

    A failed call is counted (by status code) and the worker goes on, except after a
    ``ConnectionError`` (its stream is gone), which ends that worker.
    """
    latencies: list[float] = []
    next_index = 0
    errors = 0
    first_error = ""
    codes: Counter[str] = Counter()
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
                    codes[error_code(exc)] += 1
                    first_error = first_error or error_text(exc)
                    if isinstance(exc, ConnectionError):  # this worker's stream is gone
                        return
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    return LoadResult(len(latencies), elapsed, latencies, errors, first_error, codes)


def infer_requests(images: Sequence[bytes], model: str) -> list[inference_pb2.InferRequest]:
    """One pre-built request per encoded image (default thresholds, no masks returned)."""
    return [inference_pb2.InferRequest(model=model, image_bytes=data) for data in images]


async def infer_load(
    client: AsyncClient,
    requests: Sequence[inference_pb2.InferRequest],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
) -> LoadResult:
    """Unary Infer, ``concurrency`` calls in flight on the client's channel, each with the
    client's deadline and metadata (its token)."""
    stub = inference_pb2_grpc.InferenceMethodsStub(client.channel)
    options = client._call_options(client.timeout)

    async def call(i: int) -> None:
        await stub.Infer(requests[i % len(requests)], **options)

    return await closed_loop(
        plain_caller(call),
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
    )


async def infer_stream_load(
    client: AsyncClient,
    requests: Sequence[inference_pb2.InferRequest],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
) -> LoadResult:
    """InferStream: ``concurrency`` streams on the channel, one frame in flight on each.

    A frame's latency is write → its answer, so the numbers compare with unary Infer at the same
    concurrency; the stream saves the per-call HTTP/2 stream set-up and headers. A stream's
    deadline is the duration plus the client's deadline, so a server that stops answering
    cannot hold the run.
    """
    stub = inference_pb2_grpc.InferenceMethodsStub(client.channel)
    timeout = None if client.timeout is None else duration_s + client.timeout
    options = client._call_options(timeout)

    @contextlib.asynccontextmanager
    async def open_stream(_worker: int) -> AsyncIterator[Call]:
        stream = stub.InferStream(None, **options)

        async def call(i: int) -> None:
            try:
                await stream.write(requests[i % len(requests)])
                reply = await stream.read()
            except grpc.aio.AioRpcError as exc:  # the stream is over: stop this worker
                raise StreamEnded(exc.code().name, f"InferStream failed: {exc.details()}") from exc
            if not isinstance(reply, inference_pb2.InferResponse):  # EOF
                raise StreamEnded("UNKNOWN", "InferStream ended before the answer")
            if reply.HasField("error") and reply.error.code:
                raise CallFailed(code_name(reply.error.code), f"frame: {reply.error.message}")

        try:
            yield call
        finally:
            # Half-close and wait for the server to end the stream with its status: never cancel
            # a stream (cancelled streams have crashed servers under test).
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stream.done_writing()
                while isinstance(await stream.read(), inference_pb2.InferResponse):
                    pass
                await stream.code()

    return await closed_loop(
        open_stream, concurrency=concurrency, duration_s=duration_s, max_requests=max_requests
    )
