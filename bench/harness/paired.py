"""Paired, interleaved A/B points: visionrpc's pipeline in-process against the same pipeline served.

On a shared 2-core VM the speed of the machine drifts by ±15% over minutes, more than the gaps the
targets are about (5% of throughput, 1 ms of p50). Measuring the in-process pipeline and the
server minutes apart therefore compares the machine's moods as much as the two set-ups. Here both
run from this process, in alternating short slices (in-process, then served, then in-process...),
so drift hits both sides alike; counts and latencies are pooled per side over all rounds.

While one side runs the other is idle: the in-process pipeline's threads wait for work during a
served slice, and the server waits for requests during an in-process slice. CPU time is counted
per slice: this process during in-process slices, the server process (and this process, the
load generator) during served slices, so the table can say where the served overhead goes.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness.loadgen import row, sync_loop
from bench.harness.procs import cpu_seconds
from bench.harness.report import ResultRow, Section
from visionrpc.client import AsyncClient
from visionrpc.client.loadtest import (
    LoadResult,
    closed_loop,
    infer_load,
    infer_requests,
    plain_caller,
)

INPROCESS_NAME = "visionrpc pipeline in-process"
SERVER_NAME = "visionrpc gRPC"


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class _Side:
    """One side of a pair, pooled over its slices."""

    result: LoadResult = field(default_factory=lambda: LoadResult(0, 0.0))
    cpu_s: float = 0.0  # the process doing the work
    client_cpu_s: float = 0.0  # the load generator, served side only

    def add(self, result: LoadResult, cpu_s: float, client_cpu_s: float = 0.0) -> None:
        self.result.add(result)
        self.cpu_s += cpu_s
        self.client_cpu_s += client_cpu_s

    def per_image_ms(self, seconds: float) -> float | None:
        return seconds * 1000 / self.result.count if self.result.count else None

    def row(self, name: str, model: str, method: str, concurrency: int, **extra: Any) -> ResultRow:
        out = row(self.result, name, Section.PAIRED, model, method, concurrency, **extra)
        out["cpu_ms_per_image"] = self.per_image_ms(self.cpu_s)
        if name == SERVER_NAME:
            out["client_cpu_ms_per_image"] = self.per_image_ms(self.client_cpu_s)
        return out


async def paired_points(
    pipeline: Any,
    server_address: str,
    server_pid: int,
    model: str,
    data: Sequence[bytes],
    *,
    rounds: int,
    slice_s: float,
    concurrency: int,
    timeout_s: float,
    on_slice: Callable[[str], None] = lambda label: None,
) -> list[ResultRow]:
    """In-process ``infer_sync`` vs served Infer at concurrency 1, and in-process ``infer`` vs
    served Infer at ``concurrency``, alternating slices of ``slice_s`` for ``rounds`` rounds."""
    from visionrpc.types import InferenceInput, InferenceOptions

    items = [InferenceInput(InferenceOptions(model=model), image_bytes=d) for d in data]
    requests = infer_requests(data, model)
    budget = 10**9  # slices end on time, not on a request count

    async def call(i: int) -> None:
        await pipeline.infer(items[i % len(items)])

    sides = {key: _Side() for key in ("sync", "served1", "async", "servedN")}
    async with AsyncClient(server_address, timeout=timeout_s) as client:

        async def served(c: int) -> tuple[LoadResult, float, float]:
            server0, self0 = cpu_seconds(server_pid), self_cpu_seconds()
            result = await infer_load(
                client, requests, concurrency=c, duration_s=slice_s, max_requests=budget
            )
            return result, cpu_seconds(server_pid) - server0, self_cpu_seconds() - self0

        await closed_loop(plain_caller(call), concurrency=4, duration_s=slice_s, max_requests=64)
        for r in range(rounds):
            t0 = self_cpu_seconds()
            result = sync_loop(
                lambda i: pipeline.infer_sync(items[i % len(items)]), len(items), slice_s, budget
            )
            sides["sync"].add(result, self_cpu_seconds() - t0)
            on_slice(f"paired {model} round {r + 1}/{rounds}: in-process c1")
            sides["served1"].add(*await served(1))
            on_slice(f"paired {model} round {r + 1}/{rounds}: served c1")
            t0 = self_cpu_seconds()
            result = await closed_loop(
                plain_caller(call), concurrency=concurrency, duration_s=slice_s, max_requests=budget
            )
            sides["async"].add(result, self_cpu_seconds() - t0)
            on_slice(f"paired {model} round {r + 1}/{rounds}: in-process c{concurrency}")
            sides["servedN"].add(*await served(concurrency))
            on_slice(f"paired {model} round {r + 1}/{rounds}: served c{concurrency}")
    common = {"rounds": rounds, "slice_s": slice_s}
    return [
        sides["sync"].row(INPROCESS_NAME, model, "infer_sync", 1, **common),
        sides["served1"].row(SERVER_NAME, model, "Infer", 1, **common),
        sides["async"].row(INPROCESS_NAME, model, "infer", concurrency, **common),
        sides["servedN"].row(SERVER_NAME, model, "Infer", concurrency, **common),
    ]


def load_pipeline(models_dir: Path) -> Any:
    """visionrpc's pipeline over ``models_dir`` with the server's settings (VISIONRPC_* env)."""
    from visionrpc.runtime.pipeline import InferencePipeline
    from visionrpc.settings import Settings

    settings = Settings(models_dir=models_dir)
    return InferencePipeline.from_settings(settings)
