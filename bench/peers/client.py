"""Closed-loop KServe v2 gRPC load generator (tritonclient.grpc), one client per thread.

Sends the encoded images of --images-dir (written by bench.harness.images.save_images) as a
BYTES tensor to a KServe v2 server, cycling through them; thread i starts at image i. For each
concurrency: a warm-up, then --duration seconds measured. Two kinds of model:

* a peer's (MLServer, Triton; the default): input ``image`` of shape [1, 1], output ``result``,
  one JSON document per image (bench/peers/peer_model.py);
* ``--vision``: visionrpc's Open Inference Protocol vision view, input ``IMAGE`` of shape [1],
  the detection tensors ``BOXES``, ``SCORES``, ``CLASS_IDS``, ``IMAGE_INDEX`` asked for and read
  back into the same answer shape as a peer's JSON.

Prints JSON to stdout:

    {"answers": [<each image's answer, {"detections": [{"class_id", "score", "box"}, ...]},
                  sent once before the load>],
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bench.harness.images import load_images

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
VISION_OUTPUTS = ("BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX")


@dataclass(frozen=True)
class Kind:
    """How to talk to one kind of model: its input, its shape per image, the outputs to ask for,
    and how to read one image's answer from a result."""

    input: str
    shape: list[int]
    outputs: tuple[str, ...]
    answer: Callable[[grpcclient.InferResult], dict[str, Any]]


def _json_answer(result: grpcclient.InferResult) -> dict[str, Any]:
    value = result.as_numpy("result")
    if value is None or value.size != 1:
        raise InferenceServerException(f"unexpected output 'result': {value!r}")
    answer: dict[str, Any] = json.loads(bytes(value.reshape(-1)[0]))
    return answer


def _vision_answer(result: grpcclient.InferResult) -> dict[str, Any]:
    boxes, scores, classes = (result.as_numpy(n) for n in ("BOXES", "SCORES", "CLASS_IDS"))
    if boxes is None or scores is None or classes is None:
        raise InferenceServerException("the vision view answered without its detection tensors")
    detections = [
        {"class_id": int(c), "score": float(s), "box": [float(v) for v in box]}
        for c, s, box in zip(classes, scores, boxes.reshape(-1, 4), strict=True)
    ]
    return {"detections": detections}


PEER = Kind("image", [1, 1], ("result",), _json_answer)
VISION = Kind("IMAGE", [1], VISION_OUTPUTS, _vision_answer)


@dataclass
class Tally:
    """What one worker thread saw: (finish time, latency ms) per success, failure times."""

    done: list[tuple[float, float]] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)
    first_error: str = ""


def make_inputs(images: list[bytes], kind: Kind) -> list[grpcclient.InferInput]:
    """One ready-to-send input tensor per image (serialised once, outside the timed loop)."""
    inputs = []
    for data in images:
        tensor = grpcclient.InferInput(kind.input, kind.shape, "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_).reshape(kind.shape))
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
    kind: Kind,
    timeout_s: float,
) -> grpcclient.InferResult:
    """One request asking for the kind's outputs; the first one is read, as a caller would."""
    outputs = [grpcclient.InferRequestedOutput(name) for name in kind.outputs]
    result = client.infer(model, [tensor], outputs=outputs, client_timeout=timeout_s)
    if result.as_numpy(kind.outputs[0]) is None:
        raise InferenceServerException(f"the answer lacks output {kind.outputs[0]!r}")
    return result


def run_point(
    args: argparse.Namespace,
    clients: list[grpcclient.InferenceServerClient],
    inputs: list,
    kind: Kind,
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
                infer_once(client, args.model, inputs[k % len(inputs)], kind, args.timeout)
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
    parser.add_argument(
        "--vision", action="store_true", help="visionrpc's vision view (IMAGE in, detections out)"
    )
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
    kind = VISION if args.vision else PEER
    inputs = make_inputs(images, kind)

    # First warm-up and the answers for the sanity check: every image once.
    answers = [
        kind.answer(infer_once(clients[0], args.model, t, kind, args.timeout)) for t in inputs
    ]
    points = [run_point(args, clients[:c], inputs, kind) for c in levels]
    for client in clients:
        client.close()
    print(json.dumps({"answers": answers, "points": points}))


if __name__ == "__main__":
    main()
