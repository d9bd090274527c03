"""OnnxModel loading/metadata and the ModelRepository directory layout, defaults and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from pydantic import ValidationError

from tests.runtime.onnx_builders import broken_model_file, constant_model, yolov8_detect_outputs
from visionrpc.errors import InvalidInputError, ModelLoadError, ModelNotFoundError
from visionrpc.runtime.model import (
    OnnxModel,
    cpu_cores,
    parse_imgsz,
    parse_names,
    plan_instances,
    select_providers,
)
from visionrpc.runtime.repository import ModelRepository, scan_repository
from visionrpc.settings import RuntimeSettings, Settings
from visionrpc.types import Layout, Task, TilingMode, TilingOptions

NAMES = {0: "scratch", 1: "dent", 2: "stain"}


def detect_model(path: Path, **kwargs) -> Path:
    out = yolov8_detect_outputs([(100, 100, 20, 20)], [1], [0.9], num_classes=3)
    return constant_model(path, [out], names=NAMES, **kwargs)


def test_onnx_model_reads_metadata_and_shapes(tmp_path: Path) -> None:
    model = OnnxModel(detect_model(tmp_path / "m.onnx", input_size=(320, 256)), RuntimeSettings())
    assert model.names == NAMES and model.input_size == (320, 256)
    assert model.dynamic_batch and model.fixed_batch_size is None
    assert model.provider == "CPUExecutionProvider"
    assert model.spec.layout is Layout.YOLOV8 and model.task is Task.DETECT
    outputs = model.run(np.zeros((3, 3, 256, 320), np.float32))
    assert outputs[0].shape == (3, 7, 64)


def test_fixed_batch_model_pads(tmp_path: Path) -> None:
    model = OnnxModel(detect_model(tmp_path / "m.onnx", fixed_batch=2), RuntimeSettings())
    assert not model.dynamic_batch and model.fixed_batch_size == 2
    assert model.run(np.zeros((1, 3, 320, 320), np.float32))[0].shape == (1, 7, 64)


def test_metadata_parsers() -> None:
    assert parse_names("{0: 'a', 1: 'b'}") == {0: "a", 1: "b"}
    assert parse_names("['a', 'b']") == {0: "a", 1: "b"}
    assert parse_imgsz("[320, 416]") == (416, 320)
    assert parse_imgsz("640") == (640, 640)
    with pytest.raises(ModelLoadError, match="names"):
        parse_names("{0: scratch")


def test_provider_selection() -> None:
    assert select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    auto_gpu = select_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert auto_gpu == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
        select_providers("cuda", ["CPUExecutionProvider"])


def test_bad_runtime_choices_are_settings_errors() -> None:
    """A typo in a choice fails when the settings are read, before any model is loaded."""
    with pytest.raises(ValidationError, match="graph_optimization"):
        RuntimeSettings(graph_optimization="max")
    with pytest.raises(ValidationError, match="'auto', 'cpu', 'cuda' or 'tensorrt'"):
        RuntimeSettings(device="tpu")
    assert RuntimeSettings(device=" CUDA ").device == "cuda"


def test_missing_corrupt_and_unsupported_models(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        OnnxModel(tmp_path / "nope.onnx", RuntimeSettings())
    bad = broken_model_file(tmp_path / "bad.onnx")
    with pytest.raises(ModelLoadError, match=str(bad)):
        OnnxModel(bad, RuntimeSettings())
    odd = constant_model(tmp_path / "odd.onnx", [np.zeros((50, 10))], names=NAMES)
    with pytest.raises(ModelLoadError, match="unsupported YOLO output layout"):
        OnnxModel(odd, RuntimeSettings())


# -- repository -----------------------------------------------------------------------------


def test_repository_layouts_and_model_yaml(tmp_path: Path) -> None:
    detect_model(tmp_path / "plain.onnx")
    detect_model(tmp_path / "tuned" / "weights.onnx")
    (tmp_path / "tuned" / "model.yaml").write_text(
        "version: 3\n"
        "display_name: Tuned inspector\n"
        "confidence_threshold: 0.4\n"
        "iou_threshold: 0.5\n"
        "max_detections: 20\n"
        "class_names: {1: bump}\n"
        "max_batch_size: 4\n"
        "max_queue_delay_us: 500\n"
        "max_queue_size: 7\n"
        "instances: 3\n"
    )
    (tmp_path / "notes").mkdir()  # folders without a model are ignored
    repo = ModelRepository(Settings(models_dir=tmp_path, default_model="plain"))
    assert repo.names == ["plain", "tuned"] and repo.default_name == "plain"
    tuned = repo.get("tuned")
    assert tuned.class_names == ("scratch", "bump", "stain")
    assert (tuned.batching.max_batch_size, tuned.batching.max_queue_delay_us) == (4, 500)
    assert tuned.batching.max_queue_size == 7
    assert tuned.instances == 3 and repo.get("plain").instances == cpu_cores()
    # each instance's ORT calls get an equal share of the cores, at least one thread
    threads = tuned.onnx.session.get_session_options().intra_op_num_threads
    assert threads == max(1, cpu_cores() // 3)
    d = repo.describe("tuned")
    assert (d.version, d.display_name, d.default_confidence_threshold) == (
        "3",
        "Tuned inspector",
        0.4,
    )
    assert (d.default_iou_threshold, d.default_max_detections, d.max_batch_size) == (0.5, 20, 4)
    assert d.dynamic_batch and d.layout is Layout.YOLOV8 and d.input_width == 320
    plain = repo.describe("")
    assert plain.name == "plain" and plain.default_confidence_threshold == 0.25
    assert [m.name for m in repo.describe_all()] == ["plain", "tuned"]


def test_default_model_is_the_settings_choice_first(tmp_path: Path) -> None:
    detect_model(tmp_path / "alpha.onnx")
    detect_model(tmp_path / "default" / "model.onnx")
    (tmp_path / "repository.yaml").write_text("default_model: default\n")
    repo = ModelRepository(Settings(models_dir=tmp_path, default_model="alpha"))
    assert repo.default_name == "alpha" and repo.get("").name == "alpha"
    with pytest.raises(ModelLoadError) as info:
        ModelRepository(Settings(models_dir=tmp_path, default_model="beta"))
    assert str(info.value) == (
        f"default_model 'beta' is not in {tmp_path}; available models: alpha, default"
    )


def test_default_model_from_repository_yaml(tmp_path: Path) -> None:
    detect_model(tmp_path / "alpha.onnx")
    detect_model(tmp_path / "beta" / "model.onnx")
    config = tmp_path / "repository.yaml"
    config.write_text("default_model: beta\n")
    repo = ModelRepository(Settings(models_dir=tmp_path))
    assert repo.default_name == "beta" and repo.get().name == "beta"
    config.write_text("default_model: gamma\n")
    with pytest.raises(ModelLoadError) as info:
        ModelRepository(Settings(models_dir=tmp_path))
    assert str(info.value) == (
        f"{config}: default_model 'gamma' is not a model of this repository; "
        "available models: alpha, beta"
    )
    config.write_text("default: beta\n")
    with pytest.raises(ModelLoadError, match="default: Extra inputs are not permitted") as info:
        ModelRepository(Settings(models_dir=tmp_path))
    assert str(config) in str(info.value)


def test_the_only_model_is_the_default(tmp_path: Path) -> None:
    detect_model(tmp_path / "solo" / "model.onnx")
    assert ModelRepository(Settings(models_dir=tmp_path)).get("").name == "solo"


def test_several_models_and_no_default_choice_means_no_default(tmp_path: Path) -> None:
    detect_model(tmp_path / "alpha.onnx")
    detect_model(tmp_path / "default" / "model.onnx")  # a name gives no special treatment
    repo = ModelRepository(Settings(models_dir=tmp_path))
    assert repo.default_name == ""
    with pytest.raises(InvalidInputError) as info:
        repo.get("")
    assert str(info.value) == (
        "this server has several models and none is the default; name one of: alpha, default "
        "(or set default_model / repository.yaml)"
    )
    assert repo.get("alpha").name == "alpha"


def test_the_shipped_repository_names_its_default() -> None:
    repo = ModelRepository(Settings())  # the packaged models and their repository.yaml
    assert len(repo) > 1 and repo.default_name == "defects"
    # an inspection line counts defects: one seen as two classes is reported once
    assert all(m.default_agnostic_nms for m in repo.describe_all())


def test_unknown_model_lists_available(tmp_path: Path) -> None:
    detect_model(tmp_path / "a.onnx")
    detect_model(tmp_path / "b.onnx")
    repo = ModelRepository(Settings(models_dir=tmp_path))
    with pytest.raises(ModelNotFoundError, match="'c' is not loaded; available models: a, b"):
        repo.get("c")


def test_repository_load_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelRepository(Settings(models_dir=tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=f"{empty} holds no models"):
        ModelRepository(Settings(models_dir=empty))
    broken = tmp_path / "broken"
    detect_model(broken / "good.onnx")
    broken_model_file(broken / "bad" / "model.onnx")
    with pytest.raises(ModelLoadError, match=str(broken / "bad" / "model.onnx")):
        ModelRepository(Settings(models_dir=broken))


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("confidence: 0.3\n", "confidence: Extra inputs are not permitted"),
        ("iou_threshold: 1.5\n", "iou_threshold"),
        ("class_names: [a, b]\n", "lists 2 names but the model has 3 classes"),
        ("class_names: {7: x}\n", "id 7"),
        ("- just\n- a list\n", "mapping"),
        ("tiling:\n  overlap: 0.9\n", "tiling.overlap"),
        ("tiling:\n  tile_size: 8\n", "tiling.tile_size"),
        ("tiling:\n  mode: sometimes\n", "tiling.mode"),
        ("tiling:\n  tile: 640\n", "tiling.tile: Extra inputs are not permitted"),
    ],
)
def test_invalid_model_yaml(tmp_path: Path, yaml_text: str, message: str) -> None:
    detect_model(tmp_path / "m" / "model.onnx")
    (tmp_path / "m" / "model.yaml").write_text(yaml_text)
    with pytest.raises(ModelLoadError, match=message) as info:
        ModelRepository(Settings(models_dir=tmp_path))
    assert "model.yaml" in str(info.value)


def test_duplicate_model_names(tmp_path: Path) -> None:
    detect_model(tmp_path / "m.onnx")
    detect_model(tmp_path / "m" / "model.onnx")
    with pytest.raises(ModelLoadError, match="defined twice"):
        ModelRepository(Settings(models_dir=tmp_path))


def test_packaged_models_used_when_models_dir_unset(tmp_path: Path, monkeypatch) -> None:
    import visionrpc.runtime.repository as repository

    detect_model(tmp_path / "only" / "model.onnx")
    monkeypatch.setattr(repository, "packaged_models_dir", lambda: tmp_path)
    repo = ModelRepository(Settings(models_dir=None))
    assert repo.directory == tmp_path and repo.default_name == "only"


def test_packaged_models_dir_points_into_the_package() -> None:
    from visionrpc.runtime.repository import packaged_models_dir

    path = packaged_models_dir()
    assert path.name == "models" and path.parent.name == "visionrpc"


def test_instance_plan_on_cpu_and_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = cpu_cores()
    plan = plan_instances(RuntimeSettings(device="cpu"))
    # one single-threaded call a core; no batching when several instances share the CPU
    assert (plan.instances, plan.runtime.intra_op_threads) == (cores, 1)
    assert plan.max_batch_size == (1 if cores > 1 else 8)
    assert plan.lone_threads == (cores if cores > 1 else 0)  # a lone request may use every core
    quiet = plan_instances(RuntimeSettings(device="cpu", lone_request_all_cores=False))
    assert quiet.lone_threads == 0
    plan = plan_instances(RuntimeSettings(device="cpu"), override=1)
    assert (plan.instances, plan.runtime.intra_op_threads, plan.max_batch_size) == (1, cores, 8)
    assert plan.lone_threads == 0  # the one session already uses every core
    explicit = plan_instances(
        RuntimeSettings(device="cpu", instances=2, intra_op_threads=3), max_batch_size=4
    )
    assert (explicit.instances, explicit.runtime.intra_op_threads) == (2, 3)
    assert explicit.max_batch_size == 4
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    plan = plan_instances(RuntimeSettings(device="auto"))
    # a GPU: one instance, ORT's own thread count, batches of up to 8
    assert (plan.instances, plan.runtime.intra_op_threads, plan.max_batch_size) == (1, 0, 8)
    assert plan.lone_threads == 0


def test_lone_request_session_gives_the_same_outputs(tmp_path: Path) -> None:
    path = detect_model(tmp_path / "m.onnx")
    model = OnnxModel(path, RuntimeSettings(device="cpu", intra_op_threads=1), lone_threads=2)
    assert model.lone_session is not None
    opts = model.lone_session.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    main = model.session.get_session_options()
    assert main.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    batch = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    wide, narrow = model.run(batch, all_cores=True), model.run(batch)
    assert all(np.array_equal(a, b) for a, b in zip(wide, narrow, strict=True))
    assert OnnxModel(path, RuntimeSettings(device="cpu")).lone_session is None


def test_a_model_name_ending_in_the_raw_suffix_is_refused(tmp_path: Path) -> None:
    """``NAME.raw`` names a model's raw view over the Open Inference Protocol, never a model."""
    detect_model(tmp_path / "parts.raw.onnx")
    with pytest.raises(ModelLoadError, match=r"ends in '\.raw'.*rename it"):
        scan_repository(tmp_path)


def test_model_yaml_tiling_defaults(tmp_path: Path) -> None:
    """A bare ``mode: off`` (a YAML boolean) or ``on`` reads as the mode; ModelInfo shows them."""
    detect_model(tmp_path / "m" / "model.onnx")
    (tmp_path / "m" / "model.yaml").write_text(
        "tiling:\n  mode: on\n  tile_size: 640\n  overlap: 0.25\n  thumbnail: false\n"
    )
    tiling = ModelRepository(Settings(models_dir=tmp_path)).describe("m").default_tiling
    assert tiling == TilingOptions(TilingMode.ON, 640, 0.25, False, 2.0)
    (tmp_path / "m" / "model.yaml").write_text("tiling:\n  mode: off\n")
    tiling = ModelRepository(Settings(models_dir=tmp_path)).describe("m").default_tiling
    assert tiling is not None and tiling.mode is TilingMode.OFF
