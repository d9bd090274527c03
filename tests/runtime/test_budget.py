"""Per-request budget in the runtime: stage-boundary stops, up-front refusals, mask budgets and
the memory trim, on tiny ONNX models with exactly known outputs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import wait_until
from tests.runtime.onnx_builders import constant_model
from tests.runtime.test_pipeline import NAMES, png, request, segment_outputs
from visionrpc.errors import DeadlineExpiredError, ResourceLimitError
from visionrpc.runtime import pipeline as pipeline_module
from visionrpc.runtime.budget import Deadline, trim_memory
from visionrpc.runtime.pipeline import BatchRunner, InferencePipeline, Job, resolve_options
from visionrpc.runtime.repository import ModelRepository
from visionrpc.runtime.yolo import BoxMask
from visionrpc.settings import Settings
from visionrpc.types import InferenceOptions, InferenceResult

IMAGE = png(np.zeros((640, 640, 3), np.uint8))
STAGES = ["before decode", "after decode", "before the model call", "before post-processing"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    d = tmp_path_factory.mktemp("models")
    constant_model(d / "seg.onnx", segment_outputs(), names=NAMES, task="segment")
    return ModelRepository(Settings(models_dir=d))


def make_pipeline(repo: ModelRepository, **limits: object) -> InferencePipeline:
    return InferencePipeline(repo, Settings(models_dir=repo.directory, limits=limits))


class CancelAt(Deadline):
    """Cancelled as the request reaches ``stage``: shows where the work stops, with no clock."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self.seen: list[str] = []

    def check(self, stage: str) -> None:
        self.seen.append(stage)
        if stage == self.stage:
            self.cancel()
        super().check(stage)


@pytest.mark.parametrize("stage", [*STAGES, "before masks"])
def test_work_stops_at_the_stage_boundary(repo: ModelRepository, stage: str) -> None:
    p = make_pipeline(repo)
    deadline = CancelAt(stage)
    with pytest.raises(DeadlineExpiredError, match=f"cancelled; stopped {stage}"):
        p.infer_sync(request(IMAGE, return_masks=True), deadline)
    assert deadline.seen[-1] == stage  # nothing after it ran
    assert p.stops == {stage: 1}
    p.shutdown()


def test_every_stage_is_checked_on_a_full_request(repo: ModelRepository) -> None:
    p = make_pipeline(repo)
    deadline = CancelAt("never")
    p.infer_sync(request(IMAGE, return_masks=True), deadline)
    assert deadline.seen == [*STAGES, "before masks"]
    assert not p.stops
    p.shutdown()


def test_passed_caller_deadline_is_deadline_exceeded_before_decode(repo: ModelRepository) -> None:
    p = make_pipeline(repo)
    with pytest.raises(DeadlineExpiredError, match=r"deadline passed; .* stopped its work before"):
        p.infer_sync(request(IMAGE), Deadline(caller_at=time.monotonic() - 1))
    assert p.stops == {"before decode": 1}
    p.shutdown()


async def test_async_request_with_a_passed_deadline_never_reaches_the_model(
    repo: ModelRepository,
) -> None:
    p = make_pipeline(repo)
    deadline = CancelAt("after decode")
    with pytest.raises(DeadlineExpiredError):
        await p.infer(request(IMAGE), deadline)
    assert "before the model call" not in deadline.seen
    await p.close()


def test_server_time_budget_is_resource_exhausted_naming_the_setting(
    repo: ModelRepository,
) -> None:
    p = make_pipeline(repo, max_request_seconds=1e-9)
    with pytest.raises(ResourceLimitError) as err:
        p.infer_sync(request(IMAGE))
    assert "limits.max_request_seconds" in str(err.value)
    assert "VISIONRPC_LIMITS__MAX_REQUEST_SECONDS" in str(err.value)
    p.shutdown()


def test_mask_detection_cap_refuses_before_decoding(repo: ModelRepository) -> None:
    p = make_pipeline(repo, max_mask_detections=5)
    # not an image at all: refused by the cap, so nothing was decoded
    with pytest.raises(
        ResourceLimitError, match=r"max_detections=6 .*\(limits.max_mask_detections"
    ):
        p.infer_sync(request(b"not an image", return_masks=True, max_detections=6))
    assert p.infer_sync(request(IMAGE, max_detections=6)).detections  # no masks: no cap
    assert p.infer_sync(request(IMAGE, return_masks=True, max_detections=5)).detections
    p.shutdown()


def test_mask_pixel_budget_refuses_masks_and_estimates_areas(repo: ModelRepository) -> None:
    exact = make_pipeline(repo).infer_sync(request(IMAGE))
    p = make_pipeline(repo, max_mask_pixels=1000)
    with pytest.raises(ResourceLimitError, match=r"would cover .*\(limits.max_mask_pixels"):
        p.infer_sync(request(IMAGE, return_masks=True))
    coarse = p.infer_sync(request(IMAGE))
    assert [d.class_name for d in coarse.detections] == [d.class_name for d in exact.detections]
    for a, b in zip(coarse.detections, exact.detections, strict=True):
        assert a.mask_area_px == pytest.approx(b.mask_area_px, rel=0.15)
    p.shutdown()


@pytest.mark.parametrize("step", [1, 2, 3, 7, 50])
def test_coarse_mask_area_weights_partial_blocks(step: int) -> None:
    w, h = 23, 17
    cells = np.ones((-(-h // step), -(-w // step)), bool)
    assert BoxMask(0, 0, cells, 100, 100, step, w, h).area == w * h


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_trim_memory_calls_malloc_trim_on_linux() -> None:
    assert trim_memory() is True


@pytest.mark.parametrize(("above", "trims"), [(1, 1), (0, 0), (1 << 30, 0)])
async def test_large_decodes_trim_the_heap_afterwards(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch, above: int, trims: int
) -> None:
    calls: list[int] = []

    def counting_trim() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(pipeline_module, "trim_memory", counting_trim)
    p = make_pipeline(repo, trim_memory_above_bytes=above)
    p.infer_sync(request(IMAGE))
    assert len(calls) == trims
    await p.infer(request(IMAGE))  # the async path trims on the decode pool, after answering
    await wait_until(lambda: len(calls) == 2 * trims)
    assert not p._trim_pending
    await p.close()


def test_settings_limits_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VISIONRPC_LIMITS__MAX_MASK_PIXELS", "1234")
    monkeypatch.setenv("VISIONRPC_LIMITS__MAX_REQUEST_SECONDS", "2.5")
    limits = Settings().limits
    assert (limits.max_mask_pixels, limits.max_request_seconds) == (1234, 2.5)


def test_a_batch_leaves_out_jobs_whose_caller_is_gone(repo: ModelRepository) -> None:
    """In a batch, an expired job skips the model call and fails alone; the others are served."""
    p = make_pipeline(repo)
    model = repo.get("")
    options = resolve_options(InferenceOptions(), model)
    live, gone = Deadline(), Deadline()
    jobs = [
        Job(request(IMAGE), options, p._prepare(request(IMAGE), model, d), time.perf_counter())
        for d in (live, gone)
    ]
    live.start_budget(0, p.stops)
    gone.start_budget(0, p.stops)
    gone.cancel()
    first, second = p._run_jobs(model, BatchRunner(model), jobs)
    assert isinstance(first, InferenceResult) and first.detections
    assert isinstance(second, DeadlineExpiredError)
    assert p.stops == {"before the model call": 1}
    p.shutdown()
