"""Greedy vs polite client against a subprocess server: does one client starve another?

A greedy client opens ``--streams`` InferStreams on ONE channel and keeps every one of them full of
frames; after ``--warmup`` seconds a polite client on its own channel makes ``--calls`` unary Infer
calls one after another. Printed: the polite client's codes and p50 latency, the greedy client's
frame outcomes, and the server's peak RSS (VmHWM of the subprocess). Loopback only, bounded in
time: ``python -m bench.fairness_probe --streams 200 --calls 17``; extra ``--env NAME=VALUE``
settings go to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import grpc
import numpy as np

from bench.harness.procs import free_port, stop_process
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_image(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


async def wait_ready(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)
        while True:
            try:
                await stub.ListModels(pb.ListModelsRequest(), timeout=2)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)


async def greedy(
    address: str, streams: int, image: bytes, stop: asyncio.Event, codes: collections.Counter[str]
) -> None:
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)

        async def frames() -> AsyncIterator[pb.InferRequest]:
            n = 0
            while not stop.is_set():
                n += 1
                yield pb.InferRequest(image_bytes=image, request_id=str(n))

        async def one() -> None:
            call = stub.InferStream(frames())
            try:
                async for reply in call:
                    codes["frame_error" if reply.HasField("error") else "frame_ok"] += 1
                    if stop.is_set():
                        call.cancel()
                        break
            except grpc.aio.AioRpcError as exc:
                codes[f"stream_{exc.code().name}"] += 1
            except asyncio.CancelledError:
                pass

        tasks = [asyncio.create_task(one()) for _ in range(streams)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def polite(address: str, calls: int, image: bytes, out: list[tuple[str, float, str]]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)
        for i in range(calls):
            t0 = time.perf_counter()
            try:
                await stub.Infer(pb.InferRequest(image_bytes=image, request_id=f"p{i}"), timeout=30)
                code, detail = "OK", ""
            except grpc.aio.AioRpcError as exc:
                code, detail = exc.code().name, exc.details() or ""
            out.append((code, (time.perf_counter() - t0) * 1000, detail))
            await asyncio.sleep(0.2)


async def probe(args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    env = {**os.environ, "VISIONRPC_PORT": str(port), "VISIONRPC_HOST": "127.0.0.1"}
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    server = subprocess.Popen(
        [sys.executable, "-m", "visionrpc", "serve", "--log-level", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    address = f"127.0.0.1:{port}"
    try:
        await wait_ready(address)
        base_rss = vm_hwm_mb(server.pid)
        greedy_image = make_image(args.width, args.height)
        polite_image = make_image(640, 480)
        stop = asyncio.Event()
        codes: collections.Counter[str] = collections.Counter()
        greedy_task = asyncio.create_task(greedy(address, args.streams, greedy_image, stop, codes))
        await asyncio.sleep(args.warmup)
        results: list[tuple[str, float, str]] = []
        polite_task = asyncio.create_task(polite(address, args.calls, polite_image, results))
        done, _ = await asyncio.wait({polite_task}, timeout=args.budget)
        if not done:
            polite_task.cancel()
        peak = vm_hwm_mb(server.pid)
        stop.set()
        await asyncio.wait_for(greedy_task, 30)
        ok = [ms for code, ms, _ in results if code == "OK"]
        failures = collections.Counter(code for code, _, _ in results if code != "OK")
        details = sorted({d for code, _, d in results if code != "OK"})
        return {
            "streams": args.streams,
            "greedy_image_kb": len(greedy_image) // 1024,
            "polite_ok": len(ok),
            "polite_calls": args.calls,
            "polite_answered": len(results),
            "polite_failures": dict(failures),
            "polite_failure_details": details[:3],
            "polite_p50_ms": round(statistics.median(ok), 1) if ok else None,
            "greedy": dict(codes),
            "server_rss_idle_mb": round(base_rss),
            "server_peak_rss_mb": round(peak),
        }
    finally:
        stop_process(server, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--calls", type=int, default=17)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--budget", type=float, default=90.0, help="max seconds for the calls")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    print(json.dumps(asyncio.run(probe(parser.parse_args())), indent=1))


if __name__ == "__main__":
    main()
