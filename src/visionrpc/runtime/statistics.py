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
from dataclasses import dataclass

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


class _Counters:
    """Mutable totals of one model version (only touched under the lock). Durations are summed
    as they come (milliseconds or seconds, floats) and turned into nanoseconds when read, so
    recording a request is a handful of additions."""

    __slots__ = (
        "batches",
        "executions",
        "fail_s",
        "failures",
        "infer_ms",
        "input_ms",
        "last_inference_ms",
        "output_ms",
        "queue_ms",
        "success_ms",
        "successes",
    )

    def __init__(self) -> None:
        self.last_inference_ms = 0
        self.successes = 0
        self.success_ms = 0.0
        self.failures = 0
        self.fail_s = 0.0
        self.queue_ms = 0.0
        self.input_ms = 0.0
        self.infer_ms = 0.0
        self.output_ms = 0.0
        self.executions = 0
        self.batches: dict[int, list[float]] = {}  # size: [count, input s, infer s, output s]


def _ns(value: float, per_second: float) -> int:
    return round(value * per_second)


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
        with self._lock:
            c = self._counters(name, version)
            c.last_inference_ms = now_ms
            c.successes += 1
            c.success_ms += timings.total_ms
            c.queue_ms += timings.queue_ms
            c.input_ms += timings.decode_ms + timings.preprocess_ms
            c.infer_ms += timings.inference_ms
            c.output_ms += timings.postprocess_ms

    def failed(self, name: str, version: str, seconds: float) -> None:
        """One image failed after ``seconds`` in the pipeline."""
        now_ms = time.time_ns() // _NS_PER_MS
        with self._lock:
            c = self._counters(name, version)
            c.last_inference_ms = now_ms
            c.failures += 1
            c.fail_s += seconds

    def executed(
        self, name: str, version: str, size: int, input_s: float, infer_s: float, output_s: float
    ) -> None:
        """One model call on a batch of ``size`` images and the time of each of its stages."""
        with self._lock:
            c = self._counters(name, version)
            c.executions += 1
            batch = c.batches.get(size)
            if batch is None:
                batch = c.batches[size] = [0, 0.0, 0.0, 0.0]
            batch[0] += 1
            batch[1] += input_s
            batch[2] += infer_s
            batch[3] += output_s

    def snapshot(self, name: str, version: str) -> ModelStatistics:
        """The counters of one model version now (zeros for one that has served nothing)."""
        with self._lock:
            c = self._models.get((name, version))
            if c is None:
                return ModelStatistics(name, version)
            n = c.successes
            batches = tuple(
                BatchStatistics(
                    size,
                    Duration(int(b[0]), _ns(b[1], 1e9)),
                    Duration(int(b[0]), _ns(b[2], 1e9)),
                    Duration(int(b[0]), _ns(b[3], 1e9)),
                )
                for size, b in sorted(c.batches.items())
            )
            return ModelStatistics(
                name=name,
                version=version,
                last_inference_ms=c.last_inference_ms,
                inference_count=n,
                execution_count=c.executions,
                success=Duration(n, _ns(c.success_ms, 1e6)),
                fail=Duration(c.failures, _ns(c.fail_s, 1e9)),
                queue=Duration(n, _ns(c.queue_ms, 1e6)),
                compute_input=Duration(n, _ns(c.input_ms, 1e6)),
                compute_infer=Duration(n, _ns(c.infer_ms, 1e6)),
                compute_output=Duration(n, _ns(c.output_ms, 1e6)),
                batches=batches,
            )
