"""ModelRepository: every model of a directory, loaded at start-up, looked up by name, and
loaded, reloaded or unloaded one at a time while serving.

Layout of the directory (Triton-like, but flat):
  NAME.onnx                    a model with default settings
  NAME/model.onnx (any *.onnx) plus an optional NAME/model.yaml with ModelConfig's keys
  repository.yaml              optional, RepositoryConfig's keys (``default_model: NAME``)
Anything broken fails the start-up with ModelLoadError naming the path, never the first request;
once serving, a load that fails leaves the version serving alone and the index says why.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from visionrpc.errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    NotReadyError,
    VisionRPCError,
    shorten,
)
from visionrpc.runtime.model import OnnxModel, plan_instances
from visionrpc.runtime.rules import InspectionConfig, model_inspection
from visionrpc.settings import BatchingSettings, Settings
from visionrpc.types import (
    ModelDescription,
    ModelState,
    ModelStatus,
    RuleSet,
    TilingMode,
    TilingOptions,
)

log = logging.getLogger(__name__)

MAX_DETECTIONS_LIMIT = 10_000  # per image; more is refused as a request error
MAX_TILE_OVERLAP = 0.5  # beyond it every pixel runs through the model four times or more
MIN_TILE_SIZE = 32  # one cell of a stride-32 YOLO head
CONFIG_FILE = "model.yaml"
REPOSITORY_FILE = "repository.yaml"
RAW_SUFFIX = ".raw"
"""A name ending in it selects the raw view of a model (``defects.raw`` = the ONNX graph of
``defects``), so no model of the directory may have such a name. The server imports it from here:
the runtime knows no server code."""


class TilingConfig(BaseModel):
    """model.yaml ``tiling:``: how this model cuts large frames into tiles unless a request says
    otherwise (see runtime.tiling and the README's "Tiled inference of large frames")."""

    model_config = ConfigDict(extra="forbid")

    mode: TilingMode = TilingMode.OFF
    tile_size: int = Field(default=0, ge=0)  # tile side in frame pixels; 0: the model input
    overlap: float = Field(default=0.2, ge=0, le=MAX_TILE_OVERLAP)
    thumbnail: bool = True
    auto_factor: float = Field(default=2.0, gt=1)

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_bool(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare off / on as a boolean
        if isinstance(value, bool):
            return TilingMode.ON if value else TilingMode.OFF
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("tile_size")
    @classmethod
    def _tile_size(cls, value: int) -> int:
        if 0 < value < MIN_TILE_SIZE:
            raise ValueError(f"send 0 (the model input) or at least {MIN_TILE_SIZE} pixels")
        return value

    def options(self) -> TilingOptions:
        return TilingOptions(
            self.mode, self.tile_size, self.overlap, self.thumbnail, self.auto_factor
        )


class ModelConfig(InspectionConfig):
    """The keys a model.yaml may hold; unknown keys are refused so typos do not go unnoticed.
    Measurement and verdict keys (scale, zones, rules) come from :class:`InspectionConfig`."""

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
    tiling: TilingConfig = Field(default_factory=TilingConfig)

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
    folder with neither is ignored, and so are names starting with "." or "_". A name ending in
    :data:`RAW_SUFFIX` is an error: that name belongs to the raw view of another model.
    """
    _check_directory(directory)
    found: dict[str, ModelSource] = {}
    for entry in sorted(directory.iterdir()):
        source = read_entry(entry)
        if source is None:
            continue
        if source.name in found:
            raise ModelLoadError(
                f"model {source.name!r} is defined twice in {directory} "
                f"({found[source.name].onnx} and {source.onnx}); remove one"
            )
        found[source.name] = source
    if not found:
        raise ModelLoadError(
            f"model directory {directory} holds no models (NAME.onnx or NAME/*.onnx)"
        )
    return found


def find_model(directory: Path, name: str) -> ModelSource:
    """Read one model of ``directory`` afresh (its files and model.yaml), for a load or reload.

    ModelNotFoundError when the directory holds no model of that name; ModelLoadError naming
    the file when it holds a broken one.
    """
    check_model_name(name)
    _check_directory(directory)
    sources = [
        source
        for entry in (directory / f"{name}.onnx", directory / name)
        if (source := read_entry(entry)) is not None
    ]
    if not sources:
        raise ModelNotFoundError(
            f"model directory {directory} has no model {name!r}: put {name}.onnx or a folder "
            f"{name}/ holding an .onnx file there first"
        )
    if len(sources) > 1:
        raise ModelLoadError(
            f"model {name!r} is defined twice in {directory} ({sources[0].onnx} and "
            f"{sources[1].onnx}); remove one"
        )
    return sources[0]


def check_model_name(name: str) -> None:
    """Refuse what cannot name a model of the directory (paths, hidden names, the raw suffix)."""
    if not name or "/" in name or "\\" in name or name.startswith((".", "_")):
        raise InvalidInputError(
            f"{shorten(name)} is not a model name: send the name of a NAME.onnx file or NAME/ "
            "folder of the model directory (not a path, not starting with '.' or '_')",
            field="name",
        )
    if name.endswith(RAW_SUFFIX):
        raise InvalidInputError(
            f"{shorten(name)} ends in {RAW_SUFFIX!r}, which names the raw view of model "
            f"{name.removesuffix(RAW_SUFFIX)!r}; load, reload or unload that model instead",
            field="name",
        )


def model_entries(directory: Path) -> dict[str, Path]:
    """The entries of ``directory`` that look like models, by name, without reading them (for
    the index); empty when the directory cannot be read."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return {}
    found: dict[str, Path] = {}
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file() and entry.suffix == ".onnx":
            found.setdefault(entry.stem, entry)
        elif entry.is_dir() and any(entry.glob("*.onnx")):
            found.setdefault(entry.name, entry)
    return found


def read_entry(entry: Path) -> ModelSource | None:
    """The model one entry of the directory holds, model.yaml read and checked; None for an
    entry that is no model (hidden, not .onnx, a folder without one)."""
    if entry.name.startswith((".", "_")):
        return None
    config_path: Path | None = None
    if entry.is_file() and entry.suffix == ".onnx":
        name, onnx = entry.stem, entry
    elif entry.is_dir():
        config = entry / CONFIG_FILE
        onnx_files = sorted(entry.glob("*.onnx"))
        if not onnx_files:
            if config.is_file():
                raise ModelLoadError(f"model folder {entry} has a {CONFIG_FILE} but no .onnx file")
            log.warning("ignoring %s: no .onnx file inside", entry)
            return None
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
        return None
    if name.endswith(RAW_SUFFIX):
        raise ModelLoadError(
            f"model {name!r} ({entry}) ends in {RAW_SUFFIX!r}, which names the raw view of model "
            f"{name.removesuffix(RAW_SUFFIX)!r} over the Open Inference Protocol; rename it"
        )
    config_model = _read_yaml(config_path, ModelConfig) if config_path else ModelConfig()
    return ModelSource(name, entry, onnx, config_model, config_path)


def _check_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise ModelLoadError(
            f"model directory {directory} does not exist; set models_dir to a directory "
            "holding NAME.onnx files or NAME/ folders"
        )


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
    generation: int = 0
    """Which load of the repository made it (unique, increasing): a reload makes a new
    LoadedModel, and the pipeline keys its batchers and threads by this, not by the name, so the
    old and the new version run side by side until the old one is done."""
    pixels_per_mm: float | None = None  # model.yaml's scale or its calibration file's
    rules: RuleSet | None = None  # model.yaml's rules, checked

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
            default_tiling=self.config.tiling.options(),
            keypoint_shape=self.onnx.spec.keypoint_shape or (),
        )


def packaged_models_dir() -> Path:
    """src/visionrpc/models/, the model shipped with the package."""
    root = importlib.resources.files("visionrpc").joinpath("models")
    if not isinstance(root, Path):
        raise ModelLoadError(
            "the packaged models are not on the file system (zipped install?); set models_dir"
        )
    return root


@dataclass(frozen=True)
class Swap:
    """What a load did: the version now serving, and the one it replaced (None on a first load),
    which the caller retires once the requests holding it are done."""

    new: LoadedModel
    old: LoadedModel | None


class ModelRepository:
    """All models of ``settings.models_dir`` (or the packaged one), loaded eagerly at start-up,
    then loaded, reloaded and unloaded one by one while serving.

    Readers (:meth:`get`, from the event loop and any thread) never wait: the served models are
    one dict that a load or unload replaces whole, in one assignment, so a reader sees either the
    old or the new dict and a request that already holds a LoadedModel keeps it. Loads and unloads
    of one model run one at a time (a lock per name) and block: run them in a worker thread.
    """

    def __init__(self, settings: Settings) -> None:
        directory = settings.models_dir or packaged_models_dir()
        self.directory = Path(directory)
        self._settings = settings
        self._generations = itertools.count(1)
        sources = scan_repository(self.directory)
        # the default is checked before any model is loaded: a typo fails the start-up at once
        self.default_name = self._pick_default(settings.default_model, list(sources))
        self._models: dict[str, LoadedModel] = {
            name: self._load(source) for name, source in sources.items()
        }
        # models that are not READY (loading, unloaded, failed), and READY ones whose last
        # reload failed, with the reason
        self._status: dict[str, ModelStatus] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # held for the copy-and-replace of ``_models`` only: loads of two models run side by
        # side, and without it one's new dict could drop the other's model
        self._swap = threading.Lock()
        log.info(
            "model repository %s: %s (%s)",
            self.directory,
            ", ".join(self._models),
            f"default {self.default_name}" if self.default_name else "no default model",
        )

    @property
    def names(self) -> list[str]:
        """The models serving now."""
        return list(self._models)

    def loaded(self) -> Mapping[str, LoadedModel]:
        """The models serving now, by name: a snapshot a later load or unload leaves alone."""
        return self._models

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def get(self, name: str = "") -> LoadedModel:
        """The named model; "" is the default. ModelNotFoundError lists what is available;
        NotReadyError while the model's first load is running."""
        key = name or self.default_name
        models = self._models
        if not key:
            raise InvalidInputError(
                "this server has several models and none is the default; name one of: "
                f"{', '.join(models)} (or set default_model / {REPOSITORY_FILE})",
                field="model",
            )
        model = models.get(key)
        if model is not None:
            return model
        available = f"available models: {', '.join(models) or 'none'}"
        status = self._status.get(key)
        which = f"model {shorten(key)}" if name else f"the default model {key!r}"
        if status is not None and status.state is ModelState.LOADING:
            raise NotReadyError(f"{which} is loading; retry shortly")
        if status is not None:
            raise ModelNotFoundError(
                f"{which} is not loaded ({status.reason}); load it (LoadModel) or name one of "
                f"the {available}"
            )
        raise ModelNotFoundError(f"{which} is not loaded; {available}")

    def describe(self, name: str = "") -> ModelDescription:
        return self._described(self.get(name))

    def describe_all(self) -> list[ModelDescription]:
        return [self._described(m) for m in self._models.values()]

    def _described(self, model: LoadedModel) -> ModelDescription:
        description = model.describe()
        status = self._status.get(model.name)
        if status is None or not status.reason:
            return description
        return dataclasses.replace(description, state_reason=status.reason)

    def status(self, name: str) -> ModelStatus:
        """One model's entry of :meth:`index` (UNAVAILABLE with a reason for a name the
        directory does not hold)."""
        for entry in self.index(only=name):
            return entry
        return ModelStatus(
            name, ModelState.UNAVAILABLE, reason=f"no model {name!r} in {self.directory}"
        )

    def index(self, *, only: str | None = None) -> list[ModelStatus]:
        """Every model of the directory and every model loaded, by name, with its state.

        A model found in the directory but never loaded (added after start-up, or refused by
        the scan) is UNAVAILABLE with the reason. ``only`` narrows it to one name.
        """
        models, statuses = self._models, dict(self._status)
        entries = model_entries(self.directory)
        names = set(models) | set(statuses) | set(entries)
        if only is not None:
            names &= {only}
        out = []
        for name in sorted(names):
            model = models.get(name)
            status = statuses.get(name)
            if model is not None:
                reason = status.reason if status is not None else ""
                out.append(ModelStatus(name, ModelState.READY, model.config.version, reason))
            elif status is not None:
                out.append(status)
            elif name.endswith(RAW_SUFFIX):
                reason = f"refused: names ending in {RAW_SUFFIX!r} are reserved for raw views"
                out.append(ModelStatus(name, ModelState.UNAVAILABLE, reason=reason))
            else:
                reason = "not loaded: found in the directory after start-up; load it"
                out.append(ModelStatus(name, ModelState.UNAVAILABLE, reason=reason))
        return out

    def load(self, name: str, warm: Callable[[LoadedModel], None] | None = None) -> Swap:
        """Load ``name`` from the directory afresh, or reload it when it is loaded.

        The new version is read (files and model.yaml), its sessions made and warmed (``warm``
        gets one more real call through it) while the old one keeps serving, then it replaces
        the old one in one step. On failure the old version keeps serving, the index says why,
        and the error (ModelLoadError naming the file) is raised. Blocks: call it in a thread.
        """
        check_model_name(name)
        with self._lock(name):
            old = self._models.get(name)
            before = self._status.get(name)
            if old is None:
                self._status[name] = ModelStatus(name, ModelState.LOADING, reason="loading")
            started = time.perf_counter()
            try:
                new = self._load(find_model(self.directory, name))
                if warm is not None:
                    warm(new)
            except Exception as exc:
                error = exc
                if not isinstance(exc, VisionRPCError):  # a bug or an ORT error in the warm-up
                    error = ModelLoadError(f"cannot load model {name!r}: {exc}")
                self._failed(name, old, before, error)
                if error is exc:
                    raise
                raise error from exc
            with self._swap:
                self._models = {**self._models, name: new}  # one assignment: the swap
            self._status.pop(name, None)
        log.info(
            "model %s: version %s serving (generation %d)%s, loaded in %.2f s",
            name,
            new.config.version,
            new.generation,
            f", replacing version {old.config.version}" if old is not None else "",
            time.perf_counter() - started,
        )
        return Swap(new, old)

    def unload(self, name: str) -> LoadedModel | None:
        """Stop serving ``name``: later requests for it fail with ModelNotFoundError, the
        returned version (None when it was not loaded) is the caller's to retire."""
        check_model_name(name)
        with self._lock(name):
            old = self._models.get(name)
            if old is None:
                if name not in self._status and name not in model_entries(self.directory):
                    raise ModelNotFoundError(
                        f"model {name!r} is neither loaded nor in {self.directory}; "
                        f"loaded models: {', '.join(self._models) or 'none'}"
                    )
                return None
            with self._swap:
                self._models = {k: v for k, v in self._models.items() if k != name}
            reason = "unloaded by request"
            self._status[name] = ModelStatus(
                name, ModelState.UNAVAILABLE, old.config.version, reason
            )
        log.info("model %s: version %s unloaded", name, old.config.version)
        return old

    def _failed(
        self, name: str, old: LoadedModel | None, before: ModelStatus | None, error: Exception
    ) -> None:
        log.warning("model %s: load failed: %s", name, error)
        if old is not None:
            reason = f"reload failed, version {old.config.version} still serving: {error}"
            self._status[name] = ModelStatus(name, ModelState.READY, old.config.version, reason)
        elif isinstance(error, ModelNotFoundError):  # no such model: the index stays as it was
            if before is None:
                self._status.pop(name, None)
            else:
                self._status[name] = before
        else:
            reason = f"load failed: {error}"
            self._status[name] = ModelStatus(name, ModelState.UNAVAILABLE, reason=reason)

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def _load(self, source: ModelSource) -> LoadedModel:
        name, onnx_path, config = source.name, source.onnx, source.config
        started = time.perf_counter()
        base = self._settings.batching
        plan = plan_instances(
            self._settings.runtime, config.instances, config.max_batch_size or base.max_batch_size
        )
        model = OnnxModel(onnx_path, plan.runtime, lone_threads=plan.lone_threads)
        class_names = _class_names(model, config, source.config_path or onnx_path)
        where = source.config_path or onnx_path
        try:
            pixels_per_mm, rules = model_inspection(config, class_names, where.parent)
        except ValueError as exc:
            raise ModelLoadError(f"{where}: {exc}") from None
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
            next(self._generations),
            pixels_per_mm,
            rules,
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
