"""Tiled requests through InferencePipeline on a model that really looks at the image: geometry
in frame pixels, merging across tile borders, the thumbnail, batching, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.runtime.onnx_builders import box_finder_model
from visionrpc.errors import DeadlineExpiredError, InvalidInputError, ResourceLimitError
from visionrpc.runtime.budget import Deadline
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.repository import ModelRepository
from visionrpc.settings import Settings
from visionrpc.types import InferenceInput, InferenceOptions, TilingMode, TilingOptions


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    box_finder_model(d / "finder.onnx")
    return d


def make_pipeline(repo_dir: Path, **settings: object) -> InferencePipeline:
    s = Settings(models_dir=repo_dir, **settings)  # type: ignore[arg-type]
    return InferencePipeline(ModelRepository(s), s)


@pytest.fixture
def pipeline(repo_dir: Path):
    p = make_pipeline(repo_dir)
    yield p
    p.shutdown()


def png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", rgb)
    assert ok
    return buf.tobytes()


def request(image: np.ndarray, **tiling: object) -> InferenceInput:
    options = InferenceOptions(model="finder", tiling=TilingOptions(**tiling))  # type: ignore[arg-type]
    return InferenceInput(options, image_bytes=png(image))


def boxes(result) -> list[tuple[float, ...]]:
    return [(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max) for d in result.detections]


def test_a_bright_bar_across_six_tiles_is_one_detection_in_frame_pixels(pipeline) -> None:
    """1600x1200 in 320 px tiles overlapping by 64: columns start at 0, 256, ... 1280 and rows
    at 0, 220, 440, ...; the bar x 500..900, y 300..340 falls in three columns and two rows,
    each tile boxing only its piece of it."""
    frame = np.zeros((1200, 1600, 3), np.uint8)
    frame[300:340, 500:900] = 255
    result = pipeline.infer_sync(request(frame, mode=TilingMode.ON, thumbnail=False))
    assert result.tiling is not None
    assert (result.tiling.columns, result.tiling.rows, result.tiling.tiles) == (6, 5, 30)
    assert boxes(result) == [(500.0, 300.0, 900.0, 340.0)]
    assert (result.image_width, result.image_height) == (1600, 1200)


def test_the_thumbnail_and_the_tiles_report_a_large_defect_once(pipeline) -> None:
    frame = np.zeros((1200, 1600, 3), np.uint8)
    frame[300:340, 500:900] = 255
    result = pipeline.infer_sync(request(frame, mode=TilingMode.ON, thumbnail=True))
    assert result.tiling is not None and result.tiling.thumbnail
    (box,) = boxes(result)
    np.testing.assert_allclose(box, (500, 300, 900, 340), atol=6)


def test_a_small_spot_is_found_only_with_tiles(pipeline) -> None:
    frame = np.zeros((2400, 3200, 3), np.uint8)
    frame[1001:1004, 2001:2004] = 255  # 3 px: a tenth of a pixel in the letterboxed frame
    plain = pipeline.infer_sync(request(frame, mode=TilingMode.OFF))
    assert plain.tiling is None
    assert not any(
        b[0] <= 2001 and b[2] >= 2004 and b[1] <= 1001 and b[3] >= 1004 for b in boxes(plain)
    )
    tiled = pipeline.infer_sync(request(frame, mode=TilingMode.ON))
    assert boxes(tiled) == [(2001.0, 1001.0, 2004.0, 1004.0)]


def test_auto_tiles_only_frames_much_larger_than_a_tile(pipeline) -> None:
    small = np.zeros((480, 640, 3), np.uint8)
    small[100:120, 100:140] = 255
    assert pipeline.infer_sync(request(small, mode=TilingMode.AUTO)).tiling is None
    large = np.zeros((800, 1000, 3), np.uint8)
    large[100:120, 100:140] = 255
    result = pipeline.infer_sync(request(large, mode=TilingMode.AUTO, thumbnail=False))
    assert result.tiling is not None and result.tiling.tiles == 12
    assert boxes(result) == [(100.0, 100.0, 140.0, 120.0)]


def test_a_larger_tile_size_is_scaled_into_the_model_input(pipeline) -> None:
    frame = np.zeros((1200, 1600, 3), np.uint8)
    frame[300:340, 500:900] = 255
    result = pipeline.infer_sync(
        request(frame, mode=TilingMode.ON, tile_size=640, overlap=0.0, thumbnail=False)
    )
    assert result.tiling is not None and (result.tiling.columns, result.tiling.rows) == (3, 2)
    (box,) = boxes(result)
    np.testing.assert_allclose(box, (500, 300, 900, 340), atol=2)


def test_tiles_share_batches(repo_dir: Path) -> None:
    """With one instance taking batches of up to 4, a tiled request's tiles queue behind the
    first and run several to a model call."""
    frame = np.zeros((1200, 1600, 3), np.uint8)
    frame[300:340, 500:900] = 255
    sizes: list[int] = []

    async def main() -> None:
        p = make_pipeline(
            repo_dir,
            batching={"max_batch_size": 4},
            runtime={"instances": 1},
        )
        p.on_batch = lambda model, n: sizes.append(n)
        try:
            result = await p.infer(request(frame, mode=TilingMode.ON, thumbnail=True))
            other = await p.infer(request(frame, mode=TilingMode.OFF))
        finally:
            await p.close()
        assert boxes(result)[0][0] == pytest.approx(500, abs=6)
        assert len(other.detections) == 1

    asyncio.run(main())
    assert sum(sizes[:-1]) == 31  # 30 tiles and the thumbnail, then the plain request
    assert max(sizes) > 1


def test_too_many_tiles_is_refused_before_the_model_runs(repo_dir: Path) -> None:
    p = make_pipeline(repo_dir, limits={"max_tiles": 10})
    calls: list[int] = []
    p.on_batch = lambda model, n: calls.append(n)
    try:
        with pytest.raises(InvalidInputError, match=r"30 tiles.*limits\.max_tiles"):
            p.infer_sync(request(np.zeros((1200, 1600, 3), np.uint8), mode=TilingMode.ON))
    finally:
        p.shutdown()
    assert calls == []


@pytest.mark.parametrize(
    ("stop", "error", "words"),
    [
        ("budget", ResourceLimitError, r"limits\.max_request_seconds.*before the model call"),
        ("cancel", DeadlineExpiredError, r"cancelled; stopped before the model call"),
    ],
)
def test_a_request_stopped_between_tiles_runs_no_more_of_them(
    repo_dir: Path, stop: str, error: type[Exception], words: str
) -> None:
    """The server's time budget running out (or the caller going away) after the first model
    call: the remaining tiles are not run, the request fails naming why, nothing stays queued,
    and the next request is served."""
    frame = np.zeros((1200, 1600, 3), np.uint8)
    frame[300:340, 500:900] = 255
    sizes: list[int] = []
    deadline = Deadline()

    def after_call(model: str, n: int) -> None:
        sizes.append(n)
        if stop == "budget":
            deadline.budget_s, deadline.budget_at = 30.0, 0.0  # the budget ran out
        else:
            deadline.cancel()

    async def main() -> None:
        p = make_pipeline(repo_dir, batching={"max_batch_size": 4}, runtime={"instances": 1})
        p.on_batch = after_call
        try:
            with pytest.raises(error, match=words):
                await p.infer(request(frame, mode=TilingMode.ON), deadline)
            assert p.load()["finder"].queue_depth == 0
            p.on_batch = None
            again = await p.infer(request(frame, mode=TilingMode.ON, thumbnail=False))
            assert boxes(again) == [(500.0, 300.0, 900.0, 340.0)]
        finally:
            await p.close()

    asyncio.run(main())
    assert 1 <= sum(sizes) <= 4  # one model call of at most a batch, of the 31 items


def test_tiles_share_batches_with_other_clients_requests(repo_dir: Path) -> None:
    """A plain request of another client, sent while a tiled frame's tiles are queued, is served
    in the tiles' batches (one item per client per turn) instead of after all of them."""
    frame = np.zeros((2400, 3200, 3), np.uint8)
    frame[300:340, 500:900] = 255
    small = np.zeros((240, 320, 3), np.uint8)
    small[100:120, 100:140] = 255
    batches: list[list[str]] = []

    async def main() -> None:
        p = make_pipeline(repo_dir, batching={"max_batch_size": 4}, runtime={"instances": 1})
        run_jobs = p._run_jobs

        def recording(model, runner, jobs):
            batches.append([type(j).__name__ for j in jobs])
            return run_jobs(model, runner, jobs)

        p._run_jobs = recording  # type: ignore[method-assign]
        try:
            tiled = asyncio.create_task(p.infer(request(frame, mode=TilingMode.ON), client="a"))
            while not batches:  # the tiles are queued and running
                await asyncio.sleep(0.001)
            plain = await asyncio.gather(
                *(p.infer(request(small, mode=TilingMode.OFF), client="b") for _ in range(3))
            )
            result = await tiled
        finally:
            await p.close()
        assert all(boxes(r) == [(100.0, 100.0, 140.0, 120.0)] for r in plain)
        assert result.tiling is not None and result.tiling.tiles == 130
        assert not tiled.cancelled()

    asyncio.run(main())
    mixed = [b for b in batches if "TileJob" in b and "Job" in b]
    assert mixed, batches
    tiles_after = sum(b.count("TileJob") for b in batches[batches.index(mixed[-1]) + 1 :])
    assert tiles_after > 0  # the plain requests did not wait for the last tile
