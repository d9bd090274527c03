"""What tracing costs per call: the same calls against servers with tracing off, on (every call
sampled, spans batched to an exporter that drops them) and on but sampled out, in interleaved
rounds in one process. Prints the median per-call latency of Ping and Infer (concurrency 1).

    PYTHONPATH=src:. python -m bench.tracing_cost [--rounds 7] [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import cv2
import numpy as np
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler

from visionrpc.server.app import VisionServer
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.settings import Settings
from visionrpc.v1 import core_pb2, core_pb2_grpc, inference_pb2, inference_pb2_grpc


class Dropping(SpanExporter):
    """Receives the batches like a real exporter would, sends nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def provider(sampler: Sampler) -> TracerProvider:
    made = TracerProvider(sampler=sampler)
    made.add_span_processor(BatchSpanProcessor(Dropping()))
    return made


def image() -> bytes:
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", rgb)
    assert ok
    return buf.tobytes()


async def timed(call: object, request: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call(request)  # type: ignore[operator]
        out.append((time.perf_counter() - t0) * 1e6)
    return out


async def main(rounds: int, calls: int) -> None:
    import grpc

    settings = Settings(host="127.0.0.1", port=0, access_log=False)
    variants = {
        "off": None,
        "on (all sampled)": provider(ALWAYS_ON),
        "on (sampled out)": provider(ALWAYS_OFF),
    }
    servers = {}
    for name, chosen in variants.items():
        server = VisionServer(settings, [InferenceServicer(settings)], tracer_provider=chosen)
        await server.start()
        servers[name] = server
    ping = core_pb2.PingRequest()
    infer = inference_pb2.InferRequest(image_bytes=image())
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        channels = {n: grpc.aio.insecure_channel(s.address) for n, s in servers.items()}
        for channel in channels.values():  # warm up
            await timed(core_pb2_grpc.CoreServicesStub(channel).Ping, ping, 50)
            await timed(inference_pb2_grpc.InferenceMethodsStub(channel).Infer, infer, 20)
        for _ in range(rounds):
            for name, channel in channels.items():
                core = core_pb2_grpc.CoreServicesStub(channel)
                inference = inference_pb2_grpc.InferenceMethodsStub(channel)
                samples.setdefault((name, "Ping"), []).extend(await timed(core.Ping, ping, calls))
                samples.setdefault((name, "Infer"), []).extend(
                    await timed(inference.Infer, infer, calls // 4)
                )
        for channel in channels.values():
            await channel.close(None)
    finally:
        for server in servers.values():
            await server.stop(0)
    print("| tracing | Ping p50 µs | Infer p50 µs |")
    print("|---|---|---|")
    for name in variants:
        p = statistics.median(samples[(name, "Ping")])
        i = statistics.median(samples[(name, "Infer")])
        print(f"| {name} | {p:.0f} | {i:.0f} |")


def client_cost() -> None:
    """The client's per-call cost of looking for a trace context when OpenTelemetry is not
    imported (a fresh interpreter), and when it is but no span is current."""
    code = (
        "import timeit; from visionrpc.client.tracing import trace_metadata as t; "
        "print(min(timeit.repeat(t, number=100000, repeat=5)) * 10)"
    )
    for label, prefix in (
        ("not imported", ""),
        ("imported, no span", "import opentelemetry.trace; "),
    ):
        done = subprocess.run(
            [sys.executable, "-c", prefix + code], capture_output=True, text=True, check=True
        )
        print(f"client trace_metadata(), OpenTelemetry {label}: {float(done.stdout):.2f} µs/call")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.calls))
    client_cost()
