"""Closed-loop KServe v2 gRPC load generator (tritonclient.grpc), one client per thread.

Sends the encoded images of --images-dir (written by bench.harness.images.save_images) as a
BYTES tensor of shape [1, 1] to a KServe v2 server (MLServer or Triton), cycling through them;
thread i starts at image i. For each concurrency: a warm-up, then --duration seconds measured.
Prints JSON to stdout:

    {"answers": [<the decoded JSON result of each image, sent once before the load>],
     "points": [{"concurrency": 1, "images_per_s": ..., "p50_ms": ..., "p99_ms": ...,
                 "errors": 0, "requests": ...}, ...]}

Run it in a virtualenv with tritonclient[grpc] (bench/peers/.venv-triton), never in the server's
process: mlserver and tritonclient.grpc cannot be imported into one process.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bench.harness.images import load_images

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class Tally:
    """What one worker thread saw: (finish time, latency ms) per success, failure times."""

    done: list[tuple[float, float]] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)
    first_error: str = ""


def make_inputs(images: list[bytes], input_name: str) -> list[grpcclient.InferInput]:
    """One ready-to-send input tensor per image (serialised once, outside the timed loop)."""
    inputs = []
    for data in images:
        tensor = grpcclient.InferInput(input_name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        inputs.append(tensor)
    return inputs


def connect(url: str) -> grpcclient.InferenceServerClient:
    """A client with its own channel and message limits large enough for big PNGs."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    return grpcclient.InferenceServerClient(url, channel_args=options)


def infer_once(
    client: grpcclient.InferenceServerClient,
    model: str,
    tensor: grpcclient.InferInput,
    output_name: str,
    timeout_s: float,
) -> bytes:
    """One request; returns the first element of the BYTES output."""
    outputs = [grpcclient.InferRequestedOutput(output_name)]
    result = client.infer(model, [tensor], outputs=outputs, client_timeout=timeout_s)
    value = result.as_numpy(output_name)
    if value is None or value.size != 1:
        raise InferenceServerException(f"unexpected output {output_name!r}: {value!r}")
    return bytes(value.reshape(-1)[0])


def run_point(
    args: argparse.Namespace, clients: list[grpcclient.InferenceServerClient], inputs: list
) -> dict[str, Any]:
    """Closed loop with len(clients) threads, measured over a window in steady state.

    The window opens once --warmup seconds have passed and every thread has had an answer (so
    the server's queue is full), and lasts --duration seconds. Throughput counts the requests that
    finished inside it; p50/p99 are their latencies.
    """
    concurrency = len(clients)
    tallies = [Tally() for _ in range(concurrency)]
    answered = threading.Semaphore(0)
    stop = threading.Event()

    def worker(i: int) -> None:
        client, tally, k = clients[i], tallies[i], i
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                infer_once(client, args.model, inputs[k % len(inputs)], args.output, args.timeout)
                t1 = time.perf_counter()
                tally.done.append((t1, (t1 - t0) * 1000))
            except InferenceServerException as exc:
                tally.failed.append(time.perf_counter())
                tally.first_error = tally.first_error or str(exc)[:300]
                time.sleep(0.01)  # a failing server is not a reason to spin
            if k == i:
                answered.release()
            k += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    warm_until = time.perf_counter() + args.warmup
    for t in threads:
        t.start()
    for _ in threads:
        answered.acquire(timeout=args.timeout + args.warmup)
    time.sleep(max(0.0, warm_until - time.perf_counter()))
    opened = time.perf_counter()
    time.sleep(args.duration)
    closed = time.perf_counter()
    stop.set()
    for t in threads:
        t.join(args.timeout + 5)

    latencies = [ms for t in tallies for end, ms in t.done if opened <= end <= closed]
    errors = sum(opened <= end <= closed for t in tallies for end in t.failed)
    first_errors = [t.first_error for t in tallies if t.first_error]
    point: dict[str, Any] = {
        "concurrency": concurrency,
        "images_per_s": round(len(latencies) / (closed - opened), 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
        "errors": errors,
        "requests": len(latencies),
    }
    if first_errors:
        point["first_error"] = first_errors[0]
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="host:port of the KServe v2 gRPC endpoint")
    parser.add_argument("--images-dir", type=Path, required=True)
    parser.add_argument("--model", default="yolo")
    parser.add_argument("--input", default="image")
    parser.add_argument("--output", default="result")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per point")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per request (s)")
    parser.add_argument("--quick", action="store_true", help="1 s per point, 0.5 s warm-up")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 1.0, 0.5

    images = [image.data for image in load_images(args.images_dir)]
    if not images:
        raise SystemExit(f"no images in {args.images_dir}")
    levels = [int(c) for c in args.concurrency.split(",")]
    clients = [connect(args.url) for _ in range(max(levels))]
    inputs = make_inputs(images, args.input)

    # First warm-up and the answers for the sanity check: every image once.
    answers = [infer_once(clients[0], args.model, t, args.output, args.timeout) for t in inputs]
    points = [run_point(args, clients[:c], inputs) for c in levels]
    for client in clients:
        client.close()
    print(json.dumps({"answers": [json.loads(a) for a in answers], "points": points}))


if __name__ == "__main__":
    main()
