"""Cumulative inference statistics per model version, as Triton reports them (ModelStatistics).

The pipeline feeds them for every request, whichever API it came in by: ``succeeded`` and
``failed`` once per image (on the event loop), ``executed`` once per model call (in the model
instances' threads). One lock guards the counters, held for a few additions, so recording stays
cheap next to an inference and a reader never sees a request half counted.

What each figure means (Triton's definitions, mapped onto visionrpc's stages):

- ``inference_count``: images inferred successfully; ``execution_count``: model calls (a batch of
  several images is one).
- ``success`` / ``fail``: requests and their whole time in the pipeline.
- For successful requests only: ``queue`` (waiting for a model instance), ``compute_input``
  (decode and letterbox), ``compute_infer`` (the model call of the batch it ran in),
  ``compute_output`` (its post-processing: NMS, boxes, masks).
- Per batch size: the batch's ``compute_input`` (normalising the images into the model's input),
  ``compute_infer`` (the model call) and ``compute_output`` (post-processing all its images).

Models are keyed by name and version, so a reloaded model's new version starts from zero.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from visionrpc.types import Timings

_NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class Duration:
    """How often something happened and its total time in nanoseconds."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class BatchStatistics:
    """The model calls of one batch size."""

    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True)
class ModelStatistics:
    """A snapshot of one model version's counters."""

    name: str
    version: str
    last_inference_ms: int = 0
    """Milliseconds since the epoch when its last request ended; 0 before any."""
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()
    batches: tuple[BatchStatistics, ...] = ()
    """By batch size, smallest first."""


@dataclass
class _Counters:
    """Mutable totals of one model version (only touched under the lock)."""

    last_inference_ms: int = 0
    success: list[int] = field(default_factory=lambda: [0, 0])  # count, ns
    fail: list[int] = field(default_factory=lambda: [0, 0])
    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    executions: int = 0
    batches: dict[int, list[int]] = field(default_factory=dict)  # size: count, in, infer, out ns


class InferenceStatistics:
    """Thread-safe counters per (model name, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _Counters] = {}

    def _counters(self, name: str, version: str) -> _Counters:
        key = (name, version)
        counters = self._models.get(key)
        if counters is None:
            counters = self._models[key] = _Counters()
        return counters

    def succeeded(self, name: str, version: str, timings: Timings) -> None:
        """One image was answered; ``timings`` are its stage times (milliseconds)."""
        now_ms = time.time_ns() // _NS_PER_MS
        total_ns = round(timings.total_ms * _NS_PER_MS)
        queue_ns = round(timings.queue_ms * _NS_PER_MS)
        input_ns = round((timings.decode_ms + timings.preprocess_ms) * _NS_PER_MS)
        infer_ns = round(timings.inference_ms * _NS_PER_MS)
        output_ns = round(timings.postprocess_ms * _NS_PER_MS)
        with self._lock:
            c = self._counters(name, version)
            c.last_inference_ms = now_ms
            c.success[0] += 1
            c.success[1] += total_ns
            c.queue_ns += queue_ns
            c.input_ns += input_ns
            c.infer_ns += infer_ns
            c.output_ns += output_ns

    def failed(self, name: str, version: str, seconds: float) -> None:
        """One image failed after ``seconds`` in the pipeline."""
        now_ms = time.time_ns() // _NS_PER_MS
        ns = round(seconds * 1e9)
        with self._lock:
            c = self._counters(name, version)
            c.last_inference_ms = now_ms
            c.fail[0] += 1
            c.fail[1] += ns

    def executed(
        self, name: str, version: str, size: int, input_s: float, infer_s: float, output_s: float
    ) -> None:
        """One model call on a batch of ``size`` images and the time of each of its stages."""
        with self._lock:
            c = self._counters(name, version)
            c.executions += 1
            batch = c.batches.get(size)
            if batch is None:
                batch = c.batches[size] = [0, 0, 0, 0]
            batch[0] += 1
            batch[1] += round(input_s * 1e9)
            batch[2] += round(infer_s * 1e9)
            batch[3] += round(output_s * 1e9)

    def snapshot(self, name: str, version: str) -> ModelStatistics:
        """The counters of one model version now (zeros for one that has served nothing)."""
        with self._lock:
            c = self._models.get((name, version))
            if c is None:
                return ModelStatistics(name, version)
            success_count = c.success[0]
            batches = tuple(
                BatchStatistics(
                    size,
                    Duration(b[0], b[1]),
                    Duration(b[0], b[2]),
                    Duration(b[0], b[3]),
                )
                for size, b in sorted(c.batches.items())
            )
            return ModelStatistics(
                name=name,
                version=version,
                last_inference_ms=c.last_inference_ms,
                inference_count=success_count,
                execution_count=c.executions,
                success=Duration(success_count, c.success[1]),
                fail=Duration(c.fail[0], c.fail[1]),
                queue=Duration(success_count, c.queue_ns),
                compute_input=Duration(success_count, c.input_ns),
                compute_infer=Duration(success_count, c.infer_ns),
                compute_output=Duration(success_count, c.output_ns),
                batches=batches,
            )
