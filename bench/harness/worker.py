"""In-process measurements, run in a child process (``python -m bench.harness.worker SPEC``).

A child of its own per phase gives each pipeline a clean process: its peak RSS is comparable with
the server's, and the parent (which later drives gRPC load) does not carry its threads or
arenas. Phases:

* ``baseline``: the straightforward pipeline on one fp32 model, batch sizes 1, 2, 4, 8 one after
  another in one thread (batch 1 gives the baseline's p50 latency).
* ``inprocess``: visionrpc's InferencePipeline with the server's settings (VISIONRPC_* env, the
  same model directory): ``infer_sync`` one image at a time (p50 latency), then the async
  ``infer`` with N concurrent tasks (dynamic batching, thread pools) for throughput.

The spec is a JSON file; each finished point prints ``{"progress": label}``; the result
(``{"rows": [...], "peak_rss_mb": x}``) is written to ``spec["result_path"]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench.harness.images import load_images
from bench.harness.loadgen import row, sync_loop
from bench.harness.procs import peak_rss_mb
from bench.harness.report import ResultRow, Section
from visionrpc.client.loadtest import closed_loop, plain_caller

BASELINE_NAME = "straightforward baseline"
INPROCESS_NAME = "visionrpc pipeline in-process"


def progress(label: str) -> None:
    print(json.dumps({"progress": label}), flush=True)


def run_baseline(spec: dict[str, Any]) -> list[ResultRow]:
    from bench.harness.baseline import StraightforwardPipeline

    data = [i.data for i in load_images(Path(spec["images_dir"]))]
    b = spec["baseline"]
    pipe = StraightforwardPipeline(
        Path(b["onnx"]),
        confidence=b["confidence"],
        iou=b["iou"],
        max_detections=b["max_detections"],
    )
    rows = []
    for size in spec["batch_sizes"]:
        batches = [
            [data[(k * size + j) % len(data)] for j in range(size)] for k in range(len(data))
        ]

        def call(i: int, batches: list[list[bytes]] = batches) -> None:
            pipe(batches[i])

        sync_loop(call, len(batches), spec["warmup_s"], 4)
        result = sync_loop(
            call, len(batches), spec["duration_s"], max(1, spec["max_requests"] // size)
        )
        rows.append(
            row(
                result,
                BASELINE_NAME,
                Section.BASELINE,
                b["name"],
                "batch",
                size,
                images_per_call=size,
                batch_size=size,
                notes=f"{b['precision']}, full-size decode, ORT default session options",
            )
        )
        progress(f"baseline batch {size}")
    return rows


async def _inprocess(pipeline: Any, spec: dict[str, Any], data: list[bytes]) -> list[ResultRow]:
    """All in-process points on one event loop (the pipeline's batchers bind to it)."""
    from visionrpc.types import InferenceInput, InferenceOptions

    rows: list[ResultRow] = []
    for model in spec["models"]:
        items = [InferenceInput(InferenceOptions(model=model), image_bytes=d) for d in data]

        def sync_call(i: int, items: list[Any] = items) -> None:
            pipeline.infer_sync(items[i])

        async def call(i: int, items: list[Any] = items) -> None:
            await pipeline.infer(items[i % len(items)])

        # Nothing else runs on the loop during the synchronous loop, so blocking it is harmless.
        sync_loop(sync_call, len(items), spec["warmup_s"], 8)
        result = sync_loop(sync_call, len(items), spec["duration_s"], spec["max_requests"])
        rows.append(row(result, INPROCESS_NAME, Section.INPROCESS, model, "infer_sync", 1))
        progress(f"in-process {model} infer_sync")
        await closed_loop(
            plain_caller(call), concurrency=4, duration_s=spec["warmup_s"], max_requests=64
        )
        for concurrency in spec["concurrency"]:
            result = await closed_loop(
                plain_caller(call),
                concurrency=concurrency,
                duration_s=spec["duration_s"],
                max_requests=spec["max_requests"],
            )
            rows.append(row(result, INPROCESS_NAME, Section.INPROCESS, model, "infer", concurrency))
            progress(f"in-process {model} infer c{concurrency}")
    return rows


def run_inprocess(spec: dict[str, Any]) -> list[ResultRow]:
    from visionrpc.runtime.pipeline import InferencePipeline
    from visionrpc.settings import Settings

    data = [i.data for i in load_images(Path(spec["images_dir"]))]
    settings = Settings(models_dir=Path(spec["models_dir"]), default_model=spec["models"][0])
    pipeline = InferencePipeline.from_settings(settings)

    async def go() -> list[ResultRow]:
        async with pipeline:
            return await _inprocess(pipeline, spec, data)

    return asyncio.run(go())


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    runners = {"baseline": run_baseline, "inprocess": run_inprocess}
    rows = runners[spec["phase"]](spec)
    result = {"rows": rows, "peak_rss_mb": peak_rss_mb()}
    Path(spec["result_path"]).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
