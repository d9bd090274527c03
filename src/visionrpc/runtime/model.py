"""OnnxModel: one ONNX Runtime session plus what its metadata and output shapes say about it."""

from __future__ import annotations

import ast
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from visionrpc.errors import ModelLoadError
from visionrpc.runtime.classify import classify_layout
from visionrpc.runtime.yolo import OutputSpec, detect_layout
from visionrpc.settings import Device, ExecutionMode, GraphOptimization, RuntimeSettings
from visionrpc.types import Task

log = logging.getLogger(__name__)

_GRAPH_OPT: dict[GraphOptimization, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXEC_MODE: dict[ExecutionMode, ort.ExecutionMode] = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}
_DEVICE_PROVIDERS: dict[Device, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
DEFAULT_INPUT_SIZE = 640

ORT_DTYPES: dict[str, np.dtype[Any]] = {
    f"tensor({ort_name})": np.dtype(np_name)
    for ort_name, np_name in (
        ("bool", "bool"),
        ("uint8", "uint8"),
        ("uint16", "uint16"),
        ("uint32", "uint32"),
        ("uint64", "uint64"),
        ("int8", "int8"),
        ("int16", "int16"),
        ("int32", "int32"),
        ("int64", "int64"),
        ("float16", "float16"),
        ("float", "float32"),
        ("double", "float64"),
    )
}
"""ONNX Runtime's tensor type names and the numpy dtypes that carry them."""

IMAGE_INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8))
"""Image inputs the vision path can fill: floats get pixels scaled to 0..1 (as Ultralytics
exports expect), uint8 gets the pixels as they are (the graph normalises them itself)."""


def select_providers(device: Device, available: Sequence[str] | None = None) -> list[Any]:
    """Execution providers to ask for, best first; CPU is always the last fallback.

    "auto" takes TensorRT and CUDA when this onnxruntime build offers them; an explicit device that
    is not offered is a ModelLoadError rather than a silent CPU fallback.
    """
    available = list(ort.get_available_providers() if available is None else available)
    trt: tuple[str, dict[str, Any]] = (
        "TensorrtExecutionProvider",
        {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(Path(tempfile.gettempdir()) / "visionrpc-trt-cache"),
        },
    )
    if device == "auto":
        chosen: list[Any] = []
        if "TensorrtExecutionProvider" in available:
            chosen.append(trt)
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
        return [*chosen, "CPUExecutionProvider"]
    wanted = _DEVICE_PROVIDERS[device]
    if wanted not in available:
        raise ModelLoadError(
            f"runtime.device={device} needs {wanted}, but this onnxruntime offers only "
            f"{', '.join(available)}; install onnxruntime-gpu with a matching CUDA/TensorRT, "
            "or set runtime.device=auto or cpu"
        )
    if device == "tensorrt":
        return [trt, "CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def cpu_cores() -> int:
    """CPUs this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class InstancePlan:
    """How a model runs: ``instances`` batches at once, each of at most ``max_batch_size``."""

    instances: int
    max_batch_size: int
    runtime: RuntimeSettings  # the session's ORT settings (intra-op threads filled in)
    lone_threads: int = 0  # > 0: a second session with this many threads for lone requests


def plan_instances(
    settings: RuntimeSettings,
    override: int | None = None,
    max_batch_size: int = 0,
) -> InstancePlan:
    """How many batches of a model run at once, how large, and the ORT settings for its session.

    On CPU the default is one instance per core with single-threaded ORT calls: calls side by
    side keep every core busy, where one call spread over the cores by ORT leaves cores idle in
    small operators. A GPU gets one instance. ``max_batch_size`` 0 means 1 for several CPU
    instances (there larger batches buy a little throughput at a large cost in tail latency),
    else 8. The README's performance section has the figures.
    """
    on_cpu = select_providers(settings.device)[0] == "CPUExecutionProvider"
    cores = cpu_cores()
    instances = override or settings.instances or (cores if on_cpu else 1)
    threads = settings.intra_op_threads or (max(1, cores // instances) if on_cpu else 0)
    batch = max_batch_size or (1 if on_cpu and instances > 1 else 8)
    lone = cores if on_cpu and settings.lone_request_all_cores and threads < cores else 0
    runtime = settings.model_copy(update={"intra_op_threads": threads})
    return InstancePlan(instances, batch, runtime, lone)


def session_options(settings: RuntimeSettings) -> ort.SessionOptions:
    """ORT session options from settings.runtime (whose choices the settings already checked)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    # ORT's worker threads busy-wait for work by default; in a server they then steal the cores
    # that decode images and run the event loop, so spinning is off unless asked for.
    opts.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0"
    )
    opts.add_session_config_entry(
        "session.inter_op.allow_spinning", "1" if settings.allow_spinning else "0"
    )
    opts.graph_optimization_level = _GRAPH_OPT[settings.graph_optimization]
    opts.execution_mode = _EXEC_MODE[settings.execution_mode]
    return opts


def parse_names(raw: str | None) -> dict[int, str]:
    """Ultralytics writes names as a Python dict literal: "{0: 'scratch', 1: 'dent'}"."""
    if not raw:
        return {}
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as exc:
        raise ModelLoadError(f"metadata 'names' is not a dict/list literal: {raw[:80]!r}") from exc
    if isinstance(value, list | tuple):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise ModelLoadError(f"metadata 'names' is not a dict/list literal: {raw[:80]!r}")
    return {int(k): str(v) for k, v in value.items()}


def parse_imgsz(raw: str | None) -> tuple[int, int] | None:
    """ "[320, 320]" (h, w) or "640" -> (w, h)."""
    if not raw:
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, list | tuple) and len(value) == 2:
        h, w = (int(v) for v in value)
        return w, h
    return None


def parse_kpt_shape(raw: str | None) -> tuple[int, int] | None:
    """ "[17, 3]" -> (17, 3): a pose model's keypoints and values per keypoint (2 or 3)."""
    if not raw:
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as exc:
        raise ModelLoadError(f"metadata 'kpt_shape' is not a list literal: {raw[:80]!r}") from exc
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) for v in value)
        or value[0] < 1
        or value[1] not in (2, 3)
    ):
        raise ModelLoadError(
            f"metadata 'kpt_shape' is {raw[:80]!r}; expected [keypoints, 2 or 3] such as [17, 3]"
        )
    return int(value[0]), int(value[1])


def _looks_like_classifier(shapes: list[list[int]], num_classes: int) -> bool:
    """One [B, nc] output matching the class names: a classifier even without a ``task`` key."""
    return (
        num_classes > 0
        and len(shapes) == 1
        and len(shapes[0]) == 2
        and shapes[0][1] == num_classes
        and shapes[0][0] in (1, -1)
    )


@dataclass(frozen=True)
class GraphTensor:
    """An input or output as the ONNX graph declares it."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # -1 where the graph leaves the dimension open


def _graph_tensor(arg: ort.NodeArg) -> GraphTensor:
    dtype = ORT_DTYPES.get(arg.type)
    if dtype is None:  # the runtime only loads graphs whose tensors are numeric
        raise ValueError(f"graph tensor {arg.name!r} has type {arg.type}, not a numeric tensor")
    return GraphTensor(arg.name, dtype, tuple(d if isinstance(d, int) else -1 for d in arg.shape))


class OnnxModel:
    """A loaded, warmed-up ONNX model: session, input geometry, batch axis and output layout."""

    def __init__(
        self,
        path: Path,
        runtime: RuntimeSettings,
        *,
        warmup: bool = True,
        lone_threads: int = 0,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file {self.path} does not exist")
        providers = select_providers(runtime.device)
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=session_options(runtime), providers=providers
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidProtobuf, ...)
            raise ModelLoadError(f"cannot load ONNX model {self.path}: {exc}") from exc
        # A second session whose calls use ``lone_threads`` cores, for a request that finds the
        # machine otherwise idle; the main one is single-threaded so instances run side by side.
        self.lone_session: ort.InferenceSession | None = None
        if lone_threads:
            lone = runtime.model_copy(
                update={"intra_op_threads": lone_threads, "allow_spinning": True}
            )
            options = session_options(lone)
            # Spinning hands work between operators without a wake-up (expensive on a VM); it
            # stops when the call returns, so it never competes with the next batch.
            options.add_session_config_entry("session.force_spinning_stop", "1")
            self.lone_session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers
            )
        self.provider: str = self.session.get_providers()[0]
        requested = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if runtime.device != "auto" and self.provider != requested:
            raise ModelLoadError(
                f"{self.path}: runtime.device={runtime.device} asked for {requested}, but ONNX "
                f"Runtime fell back to {self.provider} (driver or library missing?)"
            )
        log.info("loaded %s with %s", self.path, self.provider)

        meta = self.session.get_modelmeta().custom_metadata_map
        self.names: dict[int, str] = parse_names(meta.get("names"))
        e2e = meta.get("end2end")
        self.end2end_hint: bool | None = None if e2e is None else e2e.strip().lower() == "true"
        meta_task = meta.get("task", "").strip().lower()
        self.task_hint: Task | None = Task(meta_task) if meta_task in set(Task) else None
        self.keypoint_shape: tuple[int, int] | None = parse_kpt_shape(meta.get("kpt_shape"))

        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [(i.name, i.shape) for i in inputs]
            raise ModelLoadError(
                f"{self.path}: unsupported inputs {shapes}; "
                "expected one [batch, 3, H, W] image input"
            )
        inp = inputs[0]
        self.input_name: str = inp.name
        batch_dim, channels, h_dim, w_dim = inp.shape
        if channels not in (3, None) and not isinstance(channels, str):
            raise ModelLoadError(f"{self.path}: input has {channels} channels; expected 3 (RGB)")
        self.dynamic_batch = not isinstance(batch_dim, int)
        self.fixed_batch_size: int | None = None if self.dynamic_batch else int(batch_dim)
        imgsz = parse_imgsz(meta.get("imgsz"))
        if isinstance(h_dim, int) and isinstance(w_dim, int):
            self.input_size: tuple[int, int] = (w_dim, h_dim)
        elif imgsz is not None:
            self.input_size = imgsz
        else:
            self.input_size = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
        dtype = ORT_DTYPES.get(inp.type)
        if dtype is None or dtype not in IMAGE_INPUT_DTYPES:
            raise ModelLoadError(
                f"{self.path}: input {inp.name!r} is {inp.type}; an image input must be float "
                "(float32 or float16, pixels in 0..1) or uint8 (pixels 0..255)"
            )
        self.input_dtype: np.dtype[Any] = dtype

        self.spec: OutputSpec = self._probe_layout() if warmup else self._static_layout()
        if warmup and self.lone_session is not None:
            w, h = self.input_size
            zeros = np.zeros((self.fixed_batch_size or 1, 3, h, w), self.input_dtype)
            self.lone_session.run(None, {self.input_name: zeros})
        if meta_task in ("detect", "segment") and Task(meta_task) is not self.spec.task:
            log.warning(
                "%s: metadata says task=%s but the outputs are a %s model; using the outputs",
                self.path,
                meta_task,
                self.spec.task.value,
            )

    @cached_property
    def graph_inputs(self) -> tuple[GraphTensor, ...]:
        """The graph's inputs as it declares them, read once (the raw view checks every request
        against them)."""
        return tuple(_graph_tensor(a) for a in self.session.get_inputs())

    @cached_property
    def graph_outputs(self) -> tuple[GraphTensor, ...]:
        return tuple(_graph_tensor(a) for a in self.session.get_outputs())

    @property
    def task(self) -> Task:
        return self.spec.task

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes or (max(self.names) + 1 if self.names else 0)

    def run(self, batch: np.ndarray, *, all_cores: bool = False) -> list[np.ndarray]:
        """Run a [B, 3, H, W] batch; a fixed-batch model gets zero padding up to its batch size.

        Returned outputs always have a leading batch axis of B. ``all_cores`` uses the lone-request
        session when there is one.
        """
        session = self.lone_session if all_cores and self.lone_session else self.session
        n = batch.shape[0]
        feed = batch if batch.dtype == self.input_dtype else batch.astype(self.input_dtype)
        if self.fixed_batch_size is not None and n != self.fixed_batch_size:
            if n > self.fixed_batch_size:
                raise ValueError(f"batch of {n} exceeds the model's fixed batch size")
            pad = np.zeros((self.fixed_batch_size - n, *feed.shape[1:]), dtype=feed.dtype)
            feed = np.concatenate([feed, pad])
        outputs = session.run(None, {self.input_name: feed})
        if not self.spec.batched:
            return [np.asarray(o)[None] for o in outputs]
        return [np.asarray(o)[:n] for o in outputs]

    def _probe_layout(self) -> OutputSpec:
        """Warm up with a zero batch and read the layout from the real output shapes."""
        n = self.fixed_batch_size or 1
        w, h = self.input_size
        try:
            outputs = self.session.run(
                None, {self.input_name: np.zeros((n, 3, h, w), self.input_dtype)}
            )
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: warm-up inference failed: {exc}") from exc
        return self._layout([list(o.shape) for o in outputs])

    def _layout(self, shapes: list[list[int]]) -> OutputSpec:
        try:
            if self.task_hint is Task.CLASSIFY or _looks_like_classifier(shapes, len(self.names)):
                return classify_layout(shapes, len(self.names) or None)
            return detect_layout(
                shapes,
                num_classes=len(self.names) or None,
                input_size=self.input_size,
                end2end_hint=self.end2end_hint,
                task_hint=self.task_hint,
                keypoint_shape=self.keypoint_shape,
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None

    def _static_layout(self) -> OutputSpec:
        outs = self.session.get_outputs()
        return self._layout([[d if isinstance(d, int) else -1 for d in o.shape] for o in outs])
