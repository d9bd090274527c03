"""Loading, reloading and unloading models while the pipeline serves, and the directory watch."""

from __future__ import annotations

import asyncio
import gc
import shutil
import threading
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import wait_until
from tests.runtime.onnx_builders import broken_model_file, dent_model
from visionrpc.errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    NotReadyError,
)
from visionrpc.runtime.control import ModelControl
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.runtime.repository import (
    LoadedModel,
    ModelRepository,
    packaged_models_dir,
    scan_repository,
)
from visionrpc.runtime.watch import ModelWatch
from visionrpc.settings import ModelControlSettings, RuntimeSettings, Settings
from visionrpc.types import InferenceInput, InferenceOptions, ModelState

PACKAGED = packaged_models_dir() / "defects"


def versioned(folder: Path, version: str, *, onnx: Path | None = None) -> Path:
    """A model folder holding a copy of ``onnx`` (the packaged model by default) at ``version``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx or PACKAGED / "model.onnx", folder / "model.onnx")
    (folder / "model.yaml").write_text(f'version: "{version}"\n', encoding="utf-8")
    return folder


def jpeg() -> bytes:
    image = np.full((96, 128, 3), 127, np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def settings_for(directory: Path, **overrides: object) -> Settings:
    runtime = RuntimeSettings(device="cpu", instances=1)
    return Settings(models_dir=directory, runtime=runtime, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """Two tiny models: ``tiny`` (a file) and ``dent`` (a folder at version 1)."""
    root = tmp_path / "models"
    dent_model(root / "tiny.onnx")
    dent_model(root / "dent" / "model.onnx")
    (root / "dent" / "model.yaml").write_text('version: "1"\n', encoding="utf-8")
    (root / "repository.yaml").write_text("default_model: dent\n", encoding="utf-8")
    return root


@pytest.fixture
async def control(repo_dir: Path) -> AsyncIterator[ModelControl]:
    settings = settings_for(repo_dir)
    pipeline = InferencePipeline(ModelRepository(settings), settings)
    control = ModelControl(pipeline, ModelControlSettings(retire_timeout_s=10))
    yield control
    await control.close()
    await pipeline.close()


def infer(pipeline: InferencePipeline, model: str = "") -> InferenceInput:
    return InferenceInput(InferenceOptions(model=model), image_bytes=jpeg())


def states(repository: ModelRepository) -> dict[str, tuple[ModelState, str]]:
    return {s.name: (s.state, s.version) for s in repository.index()}


async def test_reload_serves_the_new_version_and_retires_the_old(
    control: ModelControl, repo_dir: Path
) -> None:
    pipeline, repository = control.pipeline, control.repository
    first = await pipeline.infer(infer(pipeline, "dent"))
    assert first.model_version == "1"
    old = weakref.ref(repository.get("dent").onnx)

    (repo_dir / "dent" / "model.yaml").write_text('version: "2"\n', encoding="utf-8")
    new = await control.load("dent")  # loading a loaded model reloads it

    assert new.config.version == "2" and repository.get("dent") is new
    assert (await pipeline.infer(infer(pipeline, "dent"))).model_version == "2"
    assert states(repository)["dent"] == (ModelState.READY, "2")
    await control.settled()
    gc.collect()
    assert old() is None, "the old version's ORT sessions are still referenced"
    alive = [t.name for t in threading.enumerate() if "-g" in t.name and "dent" in t.name]
    assert all(f"-g{new.generation}-" in name for name in alive), alive


async def test_requests_holding_the_old_version_finish_on_it(
    control: ModelControl, repo_dir: Path
) -> None:
    """A request that got the old version before the swap is answered by it, not failed."""
    pipeline, repository = control.pipeline, control.repository
    model = repository.get("dent")
    gate = threading.Event()
    run = model.onnx.run

    def slow_run(batch: np.ndarray, *, all_cores: bool = False) -> list[np.ndarray]:
        gate.wait(10)
        return run(batch, all_cores=all_cores)

    model.onnx.run = slow_run  # type: ignore[method-assign]
    in_flight = asyncio.create_task(pipeline.infer(infer(pipeline, "dent")))
    await wait_until(lambda: pipeline.load()["dent"].instances_busy == 1)
    (repo_dir / "dent" / "model.yaml").write_text('version: "2"\n', encoding="utf-8")
    await control.reload("dent")
    assert (await pipeline.infer(infer(pipeline, "dent"))).model_version == "2"
    assert not in_flight.done()
    gate.set()
    assert (await in_flight).model_version == "1"
    await control.settled()


async def test_failed_reload_keeps_the_old_version_serving(
    control: ModelControl, repo_dir: Path
) -> None:
    pipeline, repository = control.pipeline, control.repository
    served = repository.get("dent")
    broken = broken_model_file(repo_dir / "dent" / "model.onnx")
    with pytest.raises(ModelLoadError, match=str(broken)):
        await control.reload("dent")
    assert repository.get("dent") is served
    assert (await pipeline.infer(infer(pipeline, "dent"))).model_version == "1"
    entry = repository.status("dent")
    assert entry.state is ModelState.READY and entry.version == "1"
    assert "reload failed, version 1 still serving" in entry.reason and str(broken) in entry.reason

    dent_model(repo_dir / "dent" / "model.onnx")
    (repo_dir / "dent" / "model.yaml").write_text("version: 3\nconfidence: 0.5\n", "utf-8")
    with pytest.raises(ModelLoadError, match=r"model\.yaml.*confidence"):
        await control.reload("dent")
    assert repository.get("dent") is served

    (repo_dir / "dent" / "model.yaml").write_text("version: 3\n", "utf-8")
    assert (await control.reload("dent")).config.version == "3"
    assert repository.status("dent").reason == ""  # a good reload clears the failure


async def test_unload_then_load(control: ModelControl) -> None:
    pipeline, repository = control.pipeline, control.repository
    entry = await control.unload("tiny")
    assert entry.state is ModelState.UNAVAILABLE and entry.reason == "unloaded by request"
    with pytest.raises(ModelNotFoundError, match=r"'tiny' is not loaded \(unloaded by request\)"):
        await pipeline.infer(infer(pipeline, "tiny"))
    assert "tiny" not in repository.names and "tiny" not in pipeline.load()
    assert (await control.unload("tiny")).state is ModelState.UNAVAILABLE  # again: no-op
    with pytest.raises(ModelNotFoundError, match="nothing to reload"):
        await control.reload("tiny")
    await control.load("tiny")
    assert (await pipeline.infer(infer(pipeline, "tiny"))).model == "tiny"
    assert states(repository)["tiny"] == (ModelState.READY, "1")


async def test_unloading_the_default_model(control: ModelControl) -> None:
    """Requests naming no model fail with NOT_FOUND naming the default until it is back."""
    pipeline = control.pipeline
    await control.unload("dent")
    with pytest.raises(ModelNotFoundError, match=r"the default model 'dent' is not loaded"):
        await pipeline.infer(infer(pipeline))
    await control.load("dent")
    assert (await pipeline.infer(infer(pipeline))).model == "dent"


async def test_bad_names_and_unknown_models(control: ModelControl, repo_dir: Path) -> None:
    for name in ("", "../etc", "a/b", ".hidden", "dent.raw"):
        with pytest.raises(InvalidInputError):
            await control.load(name)
    with pytest.raises(ModelNotFoundError, match=r"has no model 'nope'.*nope\.onnx"):
        await control.load("nope")
    with pytest.raises(ModelNotFoundError, match="neither loaded nor in"):
        await control.unload("nope")
    assert "nope" not in states(control.repository)


async def test_index_lists_every_model_of_the_directory(
    control: ModelControl, repo_dir: Path
) -> None:
    repository = control.repository
    dent_model(repo_dir / "late.onnx")
    broken_model_file(repo_dir / "broken.onnx")
    index = {s.name: s for s in repository.index()}
    assert index["late"].state is ModelState.UNAVAILABLE
    assert "after start-up" in index["late"].reason
    with pytest.raises(ModelLoadError, match=r"broken\.onnx"):
        await control.load("broken")
    broken = repository.status("broken")
    assert broken.state is ModelState.UNAVAILABLE and "broken.onnx" in broken.reason
    with pytest.raises(ModelNotFoundError, match=r"'broken' is not loaded \(load failed"):
        repository.get("broken")
    await control.load("late")
    assert states(repository)["late"] == (ModelState.READY, "1")


def test_scan_refuses_raw_names(tmp_path: Path) -> None:
    dent_model(tmp_path / "ok.onnx")
    dent_model(tmp_path / "ok.raw.onnx")
    with pytest.raises(ModelLoadError, match=r"ok\.raw\.onnx\) ends in '\.raw'"):
        scan_repository(tmp_path)


async def test_concurrent_loads_of_one_model_run_one_at_a_time(control: ModelControl) -> None:
    versions = await asyncio.gather(*(control.load("dent") for _ in range(3)))
    assert len({v.generation for v in versions}) == 3
    assert control.repository.get("dent") is max(versions, key=lambda m: m.generation)


async def test_watch_loads_reloads_and_unloads(control: ModelControl, repo_dir: Path) -> None:
    repository = control.repository
    watch = ModelWatch(control, interval_s=0.05)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0.1)  # the first poll notes what is there
        dent_model(repo_dir / "added.onnx")
        await wait_until(lambda: "added" in repository, timeout=20)

        (repo_dir / "dent" / "model.yaml").write_text('version: "2"\n', encoding="utf-8")
        await wait_until(lambda: repository.get("dent").config.version == "2", timeout=20)

        broken_model_file(repo_dir / "dent" / "model.onnx")  # a failed reload: 2 keeps serving
        await wait_until(lambda: "reload failed" in repository.status("dent").reason, 20)
        assert repository.get("dent").config.version == "2"

        (repo_dir / "tiny.onnx").unlink()
        await wait_until(lambda: "tiny" not in repository, timeout=20)
        assert repository.status("tiny").state is ModelState.UNAVAILABLE
    finally:
        task.cancel()


async def test_reload_of_the_packaged_model_changes_its_version(tmp_path: Path) -> None:
    folder = versioned(tmp_path / "models" / "defects", "1")
    settings = settings_for(folder.parent)
    async with InferencePipeline(ModelRepository(settings), settings) as pipeline:
        control = ModelControl(pipeline, ModelControlSettings())
        before = await pipeline.infer(infer(pipeline))
        (folder / "model.yaml").write_text('version: "2"\n', encoding="utf-8")
        loaded: LoadedModel = await control.reload("defects")
        after = await pipeline.infer(infer(pipeline))
        assert (before.model_version, after.model_version) == ("1", "2")
        assert after.detections == before.detections
        assert loaded.load_seconds > 0
        await control.close()


async def test_a_request_outliving_the_retire_timeout_fails_unavailable(
    repo_dir: Path,
) -> None:
    """A request still running on a replaced version after ``retire_timeout_s`` is answered
    NotReadyError (UNAVAILABLE: a retry reaches the new version), not left hanging."""
    settings = settings_for(repo_dir)
    async with InferencePipeline(ModelRepository(settings), settings) as pipeline:
        control = ModelControl(pipeline, ModelControlSettings(retire_timeout_s=0.2))
        model = pipeline.repository.get("dent")
        gate = threading.Event()
        run = model.onnx.run

        def stuck(batch: np.ndarray, *, all_cores: bool = False) -> list[np.ndarray]:
            gate.wait(10)
            return run(batch, all_cores=all_cores)

        model.onnx.run = stuck  # type: ignore[method-assign]
        in_flight = asyncio.create_task(pipeline.infer(infer(pipeline, "dent")))
        await wait_until(lambda: pipeline.load()["dent"].instances_busy == 1)
        await control.reload("dent")
        with pytest.raises(NotReadyError, match=r"'dent' version 1 stopped serving .* retry it"):
            await in_flight
        gate.set()
        await control.close()
        assert (await pipeline.infer(infer(pipeline, "dent"))).model == "dent"


async def test_a_first_load_in_progress_is_loading_and_unavailable(
    control: ModelControl, repo_dir: Path
) -> None:
    """While a model's first load runs, requests for it get NotReadyError (UNAVAILABLE: retry
    shortly) and the index says LOADING; a reload keeps the old version READY meanwhile."""
    pipeline, repository = control.pipeline, control.repository
    dent_model(repo_dir / "late.onnx")
    gate = threading.Event()
    warm = pipeline.warm

    def slow_warm(model: LoadedModel) -> None:
        gate.wait(10)
        warm(model)

    pipeline.warm = slow_warm  # type: ignore[method-assign]
    loading = asyncio.create_task(control.load("late"))
    reloading = asyncio.create_task(control.reload("dent"))
    await wait_until(lambda: repository.status("late").state is ModelState.LOADING)
    with pytest.raises(NotReadyError, match="model 'late' is loading; retry shortly"):
        repository.get("late")
    assert repository.status("dent").state is ModelState.READY
    assert (await pipeline.infer(infer(pipeline, "dent"))).model == "dent"
    gate.set()
    await asyncio.gather(loading, reloading)
    assert states(repository)["late"] == (ModelState.READY, "1")


async def test_loads_of_different_models_run_side_by_side(
    control: ModelControl, repo_dir: Path
) -> None:
    for i in range(4):
        dent_model(repo_dir / f"extra{i}.onnx")
    await asyncio.gather(*(control.load(f"extra{i}") for i in range(4)), control.load("dent"))
    assert {f"extra{i}" for i in range(4)} | {"dent", "tiny"} == set(control.repository.names)
