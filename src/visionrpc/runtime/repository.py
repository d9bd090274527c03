"""ModelRepository: every model of a directory, loaded at start-up, looked up by name.

Layout of the directory (Triton-like, but flat):
  NAME.onnx                    a model with default settings
  NAME/model.onnx (any *.onnx) plus an optional NAME/model.yaml with ModelConfig's keys
  repository.yaml              optional, RepositoryConfig's keys (``default_model: NAME``)
Anything broken fails the start-up with ModelLoadError naming the path, never the first request.
"""

from __future__ import annotations

import importlib.resources
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from visionrpc.errors import InvalidInputError, ModelLoadError, ModelNotFoundError, shorten
from visionrpc.runtime.model import OnnxModel, plan_instances
from visionrpc.settings import BatchingSettings, Settings
from visionrpc.types import ModelDescription

log = logging.getLogger(__name__)

MAX_DETECTIONS_LIMIT = 10_000  # per image; more is refused as a request error
CONFIG_FILE = "model.yaml"
REPOSITORY_FILE = "repository.yaml"
RAW_SUFFIX = ".raw"
"""Ends the Open Inference Protocol's name of a model's raw view, so no model's own name may."""


class ModelConfig(BaseModel):
    """The keys a model.yaml may hold; unknown keys are refused so typos do not go unnoticed."""

    model_config = ConfigDict(extra="forbid")

    version: str = "1"
    display_name: str = ""
    confidence_threshold: float = Field(default=0.25, gt=0, le=1)
    iou_threshold: float = Field(default=0.7, gt=0, le=1)
    max_detections: int = Field(default=300, ge=1, le=MAX_DETECTIONS_LIMIT)
    # NMS across classes, so one defect reported under two classes counts once
    agnostic_nms: bool = False
    class_names: list[str] | dict[int, str] | None = None
    max_batch_size: int | None = Field(default=None, ge=1)
    max_queue_delay_us: int | None = Field(default=None, ge=0)
    max_queue_size: int | None = Field(default=None, ge=1)
    instances: int | None = Field(default=None, ge=1)

    @field_validator("version", "display_name", mode="before")
    @classmethod
    def _to_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value


class RepositoryConfig(BaseModel):
    """The keys a repository.yaml may hold; unknown keys are refused, as in model.yaml."""

    model_config = ConfigDict(extra="forbid")

    default_model: str = ""  # the model a request that names none gets


@dataclass(frozen=True)
class ModelSource:
    """One model of a repository directory, found but not loaded."""

    name: str
    entry: Path  # the NAME.onnx file or the NAME/ folder
    onnx: Path
    config: ModelConfig
    config_path: Path | None  # NAME/model.yaml when there is one


def scan_repository(directory: Path) -> dict[str, ModelSource]:
    """Every model of ``directory`` by name, sorted, with its model.yaml read and checked.

    The one reading of the layout: the server and the benchmark both use it. A folder with a
    model.yaml but no .onnx, or several .onnx files and none named model.onnx, is an error; a
    folder with neither is ignored, and so are names starting with "." or "_".
    """
    if not directory.is_dir():
        raise ModelLoadError(
            f"model directory {directory} does not exist; set models_dir to a directory "
            "holding NAME.onnx files or NAME/ folders"
        )
    found: dict[str, ModelSource] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        config_path: Path | None = None
        if entry.is_file() and entry.suffix == ".onnx":
            name, onnx = entry.stem, entry
        elif entry.is_dir():
            config = entry / CONFIG_FILE
            onnx_files = sorted(entry.glob("*.onnx"))
            if not onnx_files:
                if config.is_file():
                    raise ModelLoadError(
                        f"model folder {entry} has a {CONFIG_FILE} but no .onnx file"
                    )
                log.warning("ignoring %s: no .onnx file inside", entry)
                continue
            if len(onnx_files) > 1:
                preferred = entry / "model.onnx"
                if not preferred.is_file():
                    raise ModelLoadError(
                        f"model folder {entry} holds several .onnx files "
                        f"({', '.join(p.name for p in onnx_files)}); "
                        "keep one or name it model.onnx"
                    )
                onnx_files = [preferred]
            name, onnx = entry.name, onnx_files[0]
            config_path = config if config.is_file() else None
        else:
            continue
        if name.endswith(RAW_SUFFIX):
            raise ModelLoadError(
                f"model {name!r} ({entry}) ends in {RAW_SUFFIX!r}, which names a model's raw view "
                "over the Open Inference Protocol; rename it"
            )
        if name in found:
            raise ModelLoadError(
                f"model {name!r} is defined twice in {directory} ({found[name].onnx} and "
                f"{onnx}); remove one"
            )
        config_model = _read_yaml(config_path, ModelConfig) if config_path else ModelConfig()
        found[name] = ModelSource(name, entry, onnx, config_model, config_path)
    if not found:
        raise ModelLoadError(
            f"model directory {directory} holds no models (NAME.onnx or NAME/*.onnx)"
        )
    return found


@dataclass(frozen=True)
class LoadedModel:
    """A model of the repository with its resolved configuration."""

    name: str
    path: Path
    onnx: OnnxModel  # the ONNX Runtime session(s) and what the graph says about itself
    config: ModelConfig
    class_names: tuple[str, ...]
    batching: BatchingSettings
    instances: int = 1  # batches of this model that may run at once
    load_seconds: float = 0.0  # how long reading the file and creating its sessions took

    @property
    def max_batch_size(self) -> int:
        """Largest batch one ORT call gets: the fixed batch size, or the configured maximum."""
        if self.onnx.fixed_batch_size is not None:
            return self.onnx.fixed_batch_size
        return self.batching.max_batch_size

    @property
    def max_detections_limit(self) -> int:
        """What a request may ask for: the global limit or what the model can give at all."""
        return min(MAX_DETECTIONS_LIMIT, self.onnx.spec.capacity)

    @property
    def default_max_detections(self) -> int:
        return min(self.config.max_detections, self.max_detections_limit)

    def class_id(self, name: str) -> int | None:
        try:
            return self.class_names.index(name)
        except ValueError:
            return None

    def class_name(self, class_id: int) -> str:
        if 0 <= class_id < len(self.class_names):
            return self.class_names[class_id]
        return f"class_{class_id}"

    def describe(self) -> ModelDescription:
        w, h = self.onnx.input_size
        return ModelDescription(
            name=self.name,
            version=self.config.version,
            display_name=self.config.display_name or self.name,
            task=self.onnx.task,
            input_width=w,
            input_height=h,
            class_names=self.class_names,
            execution_provider=self.onnx.provider,
            default_confidence_threshold=self.config.confidence_threshold,
            default_iou_threshold=self.config.iou_threshold,
            default_max_detections=self.default_max_detections,
            default_agnostic_nms=self.config.agnostic_nms,
            layout=self.onnx.spec.layout,
            dynamic_batch=self.onnx.dynamic_batch,
            max_batch_size=self.max_batch_size,
        )


def packaged_models_dir() -> Path:
    """src/visionrpc/models/, the model shipped with the package."""
    root = importlib.resources.files("visionrpc").joinpath("models")
    if not isinstance(root, Path):
        raise ModelLoadError(
            "the packaged models are not on the file system (zipped install?); set models_dir"
        )
    return root


class ModelRepository:
    """All models of ``settings.models_dir`` (or the packaged one), loaded eagerly."""

    def __init__(self, settings: Settings) -> None:
        directory = settings.models_dir or packaged_models_dir()
        self.directory = Path(directory)
        self._settings = settings
        sources = scan_repository(self.directory)
        # the default is checked before any model is loaded: a typo fails the start-up at once
        self.default_name = self._pick_default(settings.default_model, list(sources))
        self._models: dict[str, LoadedModel] = {
            name: self._load(source) for name, source in sources.items()
        }
        log.info(
            "model repository %s: %s (%s)",
            self.directory,
            ", ".join(self._models),
            f"default {self.default_name}" if self.default_name else "no default model",
        )

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def get(self, name: str = "") -> LoadedModel:
        """The named model; "" is the default. ModelNotFoundError lists what is available."""
        key = name or self.default_name
        if not key:
            raise InvalidInputError(
                "this server has several models and none is the default; name one of: "
                f"{', '.join(self._models)} (or set default_model / {REPOSITORY_FILE})",
                field="model",
            )
        try:
            return self._models[key]
        except KeyError:
            raise ModelNotFoundError(
                f"model {shorten(name)} is not loaded; available models: {', '.join(self._models)}"
            ) from None

    def describe(self, name: str = "") -> ModelDescription:
        return self.get(name).describe()

    def describe_all(self) -> list[ModelDescription]:
        return [m.describe() for m in self._models.values()]

    def _load(self, source: ModelSource) -> LoadedModel:
        name, onnx_path, config = source.name, source.onnx, source.config
        started = time.perf_counter()
        base = self._settings.batching
        plan = plan_instances(
            self._settings.runtime, config.instances, config.max_batch_size or base.max_batch_size
        )
        model = OnnxModel(onnx_path, plan.runtime, lone_threads=plan.lone_threads)
        class_names = _class_names(model, config, source.config_path or onnx_path)
        batching = BatchingSettings(
            max_batch_size=plan.max_batch_size,
            max_queue_delay_us=(
                base.max_queue_delay_us
                if config.max_queue_delay_us is None
                else config.max_queue_delay_us
            ),
            max_queue_size=config.max_queue_size or base.max_queue_size,
        )
        log.info(
            "model %s: %d instance(s) x %s ORT thread(s), max batch %d%s",
            name,
            plan.instances,
            plan.runtime.intra_op_threads or "default",
            plan.max_batch_size,
            f", lone requests on {plan.lone_threads} threads" if plan.lone_threads else "",
        )
        return LoadedModel(
            name,
            onnx_path,
            model,
            config,
            class_names,
            batching,
            plan.instances,
            time.perf_counter() - started,
        )

    def _pick_default(self, configured: str, names: list[str]) -> str:
        """Settings' default_model, else repository.yaml's, else the only model, else none."""
        available = f"available models: {', '.join(names)}"
        if configured:
            if configured not in names:
                raise ModelLoadError(
                    f"default_model {configured!r} is not in {self.directory}; {available}"
                )
            return configured
        path = self.directory / REPOSITORY_FILE
        if path.is_file():
            chosen = _read_yaml(path, RepositoryConfig).default_model
            if chosen and chosen not in names:
                raise ModelLoadError(
                    f"{path}: default_model {chosen!r} is not a model of this repository; "
                    f"{available}"
                )
            if chosen:
                return chosen
        return names[0] if len(names) == 1 else ""


Config = TypeVar("Config", bound=BaseModel)


def _read_yaml(path: Path, schema: type[Config]) -> Config:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} must hold a mapping of settings, not {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ModelLoadError(f"invalid {path}: {problems}") from None


def _class_names(model: OnnxModel, config: ModelConfig, where: Path) -> tuple[str, ...]:
    nc = model.num_classes
    names = {i: model.names.get(i, f"class_{i}") for i in range(nc)}
    override = config.class_names
    if isinstance(override, list):
        if nc and len(override) != nc:
            raise ModelLoadError(
                f"{where}: class_names lists {len(override)} names but the model has {nc} classes"
            )
        names = dict(enumerate(override))
    elif isinstance(override, dict):
        for class_id, class_name in override.items():
            if nc and not 0 <= class_id < nc:
                raise ModelLoadError(
                    f"{where}: class_names has id {class_id}, but the model's ids are 0..{nc - 1}"
                )
            names[class_id] = class_name
    ordered = tuple(names.get(i, f"class_{i}") for i in range(max(names, default=-1) + 1))
    if len(set(ordered)) != len(ordered):
        raise ModelLoadError(f"{where}: class names are not unique: {list(ordered)}")
    return ordered
