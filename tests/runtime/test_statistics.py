"""Per-model statistics (Triton's ModelStatistics figures): the counters, and the pipeline feeding
them for every request, batched or alone, answered or failed."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.runtime.onnx_builders import constant_model, yolov8_detect_outputs
from visionrpc.errors import InvalidInputError, ModelNotFoundError
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.repository import ModelRepository
from visionrpc.runtime.statistics import Duration, InferenceStatistics, ModelStatistics
from visionrpc.settings import Settings
from visionrpc.types import InferenceInput, InferenceOptions, Timings

# -- the counters ---------------------------------------------------------------------------------


def test_a_model_that_served_nothing_has_zeros() -> None:
    assert InferenceStatistics().snapshot("m", "1") == ModelStatistics("m", "1")


def test_requests_and_executions_add_up_as_triton_reports_them() -> None:
    stats = InferenceStatistics()
    before_ms = time.time_ns() // 1_000_000
    timings = Timings(
        decode_ms=1, preprocess_ms=0.5, inference_ms=4, postprocess_ms=0.25, queue_ms=2, total_ms=8
    )
    stats.succeeded("m", "1", timings)
    stats.succeeded("m", "1", timings)
    stats.failed("m", "1", 0.003)
    stats.executed("m", "1", 2, 0.001, 0.004, 0.0005)
    stats.executed("m", "1", 1, 0.001, 0.003, 0.0002)
    stats.executed("m", "1", 2, 0.001, 0.004, 0.0005)
    got = stats.snapshot("m", "1")
    assert got.last_inference_ms >= before_ms
    assert (got.inference_count, got.execution_count) == (2, 3)
    assert got.success == Duration(2, 16_000_000)
    assert got.fail == Duration(1, 3_000_000)
    assert got.queue == Duration(2, 4_000_000)
    assert got.compute_input == Duration(2, 3_000_000)  # decode + letterbox
    assert got.compute_infer == Duration(2, 8_000_000)
    assert got.compute_output == Duration(2, 500_000)
    assert [(b.batch_size, b.compute_infer) for b in got.batches] == [
        (1, Duration(1, 3_000_000)),
        (2, Duration(2, 8_000_000)),
    ]
    assert [(b.compute_input.count, b.compute_output.ns) for b in got.batches] == [
        (1, 200_000),
        (2, 1_000_000),
    ]


def test_each_version_has_its_own_counters() -> None:
    """A reloaded model's new version starts from zero; the old one's figures stay its own."""
    stats = InferenceStatistics()
    stats.succeeded("m", "1", Timings(total_ms=1))
    stats.succeeded("m", "2", Timings(total_ms=1))
    stats.succeeded("m", "2", Timings(total_ms=1))
    assert stats.snapshot("m", "1").inference_count == 1
    assert stats.snapshot("m", "2").inference_count == 2
    assert stats.snapshot("other", "1").inference_count == 0


def test_counting_from_many_threads_loses_nothing() -> None:
    stats = InferenceStatistics()
    per_thread, threads = 2000, 4

    def work() -> None:
        for _ in range(per_thread):
            stats.succeeded("m", "1", Timings(total_ms=1))
            stats.executed("m", "1", 1, 0.0, 0.001, 0.0)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    got = stats.snapshot("m", "1")
    assert got.inference_count == got.execution_count == per_thread * threads
    assert got.success == Duration(per_thread * threads, per_thread * threads * 1_000_000)


# -- fed by the pipeline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    out = yolov8_detect_outputs([(100, 100, 20, 20)], [0], [0.9], 1)
    (d / "detect").mkdir()
    constant_model(d / "detect" / "model.onnx", [out], names={0: "dent"})
    (d / "detect" / "model.yaml").write_text('version: "7"\n')
    return d


def png() -> bytes:
    ok, buf = cv2.imencode(".png", np.zeros((40, 60, 3), np.uint8))
    assert ok
    return buf.tobytes()


def item(data: bytes, model: str = "detect") -> InferenceInput:
    return InferenceInput(InferenceOptions(model=model), image_bytes=data)


def assert_consistent(got: ModelStatistics) -> None:
    """What must hold whatever the batching did."""
    assert got.inference_count == got.success.count
    assert got.queue.count == got.compute_input.count == got.success.count
    assert got.compute_infer.count == got.compute_output.count == got.success.count
    assert got.execution_count == sum(b.compute_infer.count for b in got.batches)
    images_run = sum(b.batch_size * b.compute_infer.count for b in got.batches)
    assert images_run == got.inference_count  # every image answered ran in exactly one batch


async def test_the_pipeline_counts_every_request_under_the_models_version(repo_dir: Path) -> None:
    settings = Settings(models_dir=repo_dir, runtime={"instances": 1})
    repository = ModelRepository(settings)
    version = repository.get("detect").config.version
    pipeline = InferencePipeline(repository, settings)
    data = png()
    try:
        pipeline.infer_sync(item(data))
        await pipeline.infer(item(data))
        await asyncio.gather(*(pipeline.infer(item(data)) for _ in range(5)))
        with pytest.raises(InvalidInputError):
            await pipeline.infer(item(b"not an image"))
        with pytest.raises(InvalidInputError):
            pipeline.infer_sync(item(b"not an image"))
        with pytest.raises(ModelNotFoundError):
            await pipeline.infer(item(data, model="nope"))  # no such model: nothing to count
    finally:
        await pipeline.close()
    got = pipeline.statistics.snapshot("detect", version)
    assert version == "7"
    assert (got.inference_count, got.fail.count) == (7, 2)
    assert got.success.ns > 0 and got.compute_infer.ns > 0 and got.fail.ns > 0
    assert_consistent(got)
    assert pipeline.statistics.snapshot("nope", "") == ModelStatistics("nope", "")
