"""What the per-model statistics (ModelStatistics) cost per request: the accounting calls the
pipeline makes for one image (``succeeded`` plus the ``executed`` of a batch of one), timed alone
and with threads recording at once (the instance threads of a busy server), next to the time of one
request through the pipeline with the shipped model for scale. Prints medians of interleaved rounds.

    PYTHONPATH=src:. python -m bench.statistics_cost [--rounds 7] [--calls 20000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import cv2
import numpy as np

from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.statistics import InferenceStatistics
from visionrpc.settings import Settings
from visionrpc.types import InferenceInput, InferenceOptions, Timings

TIMINGS = Timings(
    decode_ms=1.5, preprocess_ms=0.4, inference_ms=17.0, postprocess_ms=0.2, queue_ms=0.1
)


def per_request_ns(stats: InferenceStatistics, calls: int) -> float:
    """Nanoseconds of one request's accounting (one image, run alone)."""
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        stats.executed("m", "1", 1, 0.0004, 0.017, 0.0002)
        stats.succeeded("m", "1", TIMINGS)
    return (time.perf_counter_ns() - t0) / calls


def contended_ns(threads: int, calls: int) -> float:
    """The same with ``threads`` threads recording into one object at once (per request)."""
    stats = InferenceStatistics()
    results: list[float] = []
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        results.append(per_request_ns(stats, calls))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return statistics.median(results)


def _nothing(*args: object) -> None:
    return None


def empty_calls_ns(calls: int) -> float:
    """Two Python calls that do nothing, with the same arguments, for scale (how fast this
    machine runs Python right now)."""
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        _nothing("m", "1", 1, 0.0004, 0.017, 0.0002)
        _nothing("m", "1", TIMINGS)
    return (time.perf_counter_ns() - t0) / calls


def infer_us(pipeline: InferencePipeline, item: InferenceInput, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        pipeline.infer_sync(item)
    return (time.perf_counter() - t0) / calls * 1e6


def main(rounds: int, calls: int) -> None:
    settings = Settings(access_log=False)
    pipeline = InferencePipeline.from_settings(settings)
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", rgb)
    assert ok
    item = InferenceInput(InferenceOptions(), image_bytes=jpeg.tobytes())
    infer_us(pipeline, item, 5)  # warm up
    alone, two, four, infer, empty = [], [], [], [], []
    for _ in range(rounds):
        empty.append(empty_calls_ns(calls))
        alone.append(per_request_ns(InferenceStatistics(), calls))
        two.append(contended_ns(2, calls // 2))
        four.append(contended_ns(4, calls // 4))
        infer.append(infer_us(pipeline, item, 10))
    pipeline.shutdown()
    request_ns = statistics.median(alone)
    infer_ns = statistics.median(infer) * 1000
    print(f"statistics accounting per request, {rounds} rounds (median):")
    print(f"  one thread           {request_ns:8.0f} ns")
    print(f"  2 threads at once    {statistics.median(two):8.0f} ns")
    print(f"  4 threads at once    {statistics.median(four):8.0f} ns")
    print(f"  (two empty calls     {statistics.median(empty):8.0f} ns, for scale)")
    print(
        f"one request through the pipeline (shipped model, 640x480 JPEG): {infer_ns / 1e3:.0f} us"
    )
    print(f"accounting share of that request: {request_ns / infer_ns:.4%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    main(args.rounds, args.calls)
