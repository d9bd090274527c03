"""The raw view's runtime side on tiny graphs: samples through the pipeline's batcher equal ONNX
Runtime run directly, a batch's items are grouped into model calls by shape (each call one
execution in the statistics), and image inputs of a type the vision path cannot fill are refused
at load."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from tests.runtime.onnx_builders import box_finder_model, constant_model, yolov8_detect_outputs
from visionrpc.errors import InvalidInputError, ModelLoadError, ResourceLimitError
from visionrpc.runtime import raw
from visionrpc.runtime.budget import Deadline
from visionrpc.runtime.model import OnnxModel
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.repository import ModelRepository
from visionrpc.settings import RuntimeSettings, Settings


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    box_finder_model(root / "finder.onnx", input_size=(64, 64))
    return root


@pytest.fixture
async def pipeline(models: Path) -> AsyncIterator[InferencePipeline]:
    settings = Settings(models_dir=models, batching={"max_batch_size": 4})
    async with InferencePipeline(ModelRepository(settings), settings) as pipeline:
        yield pipeline


def reference(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"images": batch})[0])


async def test_concurrent_raw_requests_equal_onnxruntime(
    pipeline: InferencePipeline, models: Path
) -> None:
    rng = np.random.default_rng(0)
    batches = [rng.random((n, 3, 64, 64), np.float32) for n in (1, 3, 2, 4, 1)]
    calls: list[int] = []
    pipeline.on_batch = lambda model, n: calls.append(n)
    results = await asyncio.gather(*(pipeline.infer_raw("finder", b) for b in batches))
    for batch, result in zip(batches, results, strict=True):
        assert list(result.outputs) == ["output0"]
        np.testing.assert_allclose(
            result.outputs["output0"], reference(models / "finder.onnx", batch), atol=1e-5
        )
    assert sum(calls) == sum(len(b) for b in batches)  # every sample ran exactly once
    assert max(calls) <= 4  # and never in a call above max_batch_size


async def test_a_batch_above_max_batch_size_is_refused(pipeline: InferencePipeline) -> None:
    with pytest.raises(InvalidInputError, match=r"'images' has a batch of 5 .* at most 4"):
        await pipeline.infer_raw("finder", np.zeros((5, 3, 64, 64), np.float32))


def test_items_are_grouped_into_calls_by_shape(models: Path) -> None:
    model = OnnxModel(models / "finder.onnx", RuntimeSettings())
    deadline = Deadline()
    own, other = (3, 64, 64), (3, 32, 32)
    items: list[object] = [
        raw.RawSample(np.zeros(own, np.float32), deadline),
        "an image",
        raw.RawSample(np.zeros(other, np.float32), deadline),
        raw.RawSample(np.ones(own, np.float32), deadline),
    ]
    calls: list[list[object]] = []

    def run(group: list[object]) -> list[raw.ItemOutputs]:
        calls.append(group)
        if group[0] is items[2]:
            raise RuntimeError("Concat: mismatched dimensions")
        return [[np.full(1, i)] for i in range(len(group))]

    sizes: list[int] = []
    results = raw.run_grouped(run, model, items, own, lambda n, seconds: sizes.append(n))
    assert calls == [[items[0], items[1], items[3]], [items[2]]]
    assert sizes == [3]  # the failed call is not counted as a model run
    kept = [results[i] for i in (0, 1, 3)]
    assert [int(r[0][0]) for r in kept if isinstance(r, list)] == [0, 1, 2]
    assert isinstance(results[2], InvalidInputError)
    assert "refused input 'images' of sample shape [3, 32, 32]" in str(results[2])


def test_an_image_input_of_another_type_is_refused_at_load(tmp_path: Path) -> None:
    out = yolov8_detect_outputs([(20, 20, 10, 10)], [0], [0.9], 1)
    path = constant_model(
        tmp_path / "int8.onnx", [out], input_size=(64, 64), input_type=TensorProto.INT8
    )
    with pytest.raises(ModelLoadError, match=r"'images' is tensor\(int8\).*float32 or float16"):
        OnnxModel(path, RuntimeSettings())


async def test_samples_above_the_pixel_limit_are_refused(models: Path) -> None:
    settings = Settings(models_dir=models, max_image_pixels=64 * 63)
    async with InferencePipeline(ModelRepository(settings), settings) as pipeline:
        with pytest.raises(ResourceLimitError, match=r"'images' is 64x64 = 4096 pixels.*4032"):
            await pipeline.infer_raw("finder", np.zeros((1, 3, 64, 64), np.float32))


ONE_BATCH = Settings(
    runtime={"instances": 1},
    batching={"max_batch_size": 4, "max_queue_delay_us": 10_000_000},
)
"""One instance, and batches that wait for every admitted request (so concurrent requests share
one batch)."""


@pytest.fixture(scope="module")
def dynamic() -> ModelRepository:
    """The packaged models, whose graphs take any height and width."""
    return ModelRepository(ONE_BATCH)


@pytest.mark.parametrize(
    ("other", "runs", "failures"),
    [(640, {2: 1, 1: 1}, 0), (100, {2: 1}, 1)],  # 100 px: a size the graph's operators refuse
    ids=["runs", "refused"],
)
async def test_statistics_count_each_model_call_of_a_batch(
    dynamic: ModelRepository, other: int, runs: dict[int, int], failures: int
) -> None:
    """Two samples of the model's size and one of another size in one batch are two model calls
    (as the batch-size metric counts them); a call the graph refuses is no execution, only its
    sample's failure."""
    model = dynamic.get("defects-fp32")
    pipeline = InferencePipeline(dynamic, ONE_BATCH)
    calls: list[int] = []
    pipeline.on_batch = lambda name, n: calls.append(n)
    rng = np.random.default_rng(2)
    own = rng.random((2, 3, 320, 320), np.float32)
    odd = rng.random((1, 3, other, other), np.float32)
    try:
        answers = await asyncio.gather(
            pipeline.infer_raw(model.name, own),
            pipeline.infer_raw(model.name, odd),
            return_exceptions=True,
        )
    finally:
        await pipeline.close()
    assert not isinstance(answers[0], BaseException)
    assert isinstance(answers[1], InvalidInputError) == bool(failures)
    got = pipeline.statistics.snapshot(model.name, model.config.version)
    assert sorted(calls) == sorted(n for n, k in runs.items() for _ in range(k))
    assert {b.batch_size: b.compute_infer.count for b in got.batches} == runs
    assert got.execution_count == sum(runs.values())
    assert (got.inference_count, got.fail.count) == (3 - failures, failures)
