"""InferencePipeline: InferenceInput -> InferenceResult (validate, decode, letterbox, run, decode).

``infer`` never blocks the event loop: decoding and letterboxing run in a pool of
``runtime.decode_workers`` threads (OpenCV and numpy release the GIL), overlapping with model
calls, which go through a per-model DynamicBatcher; its instances (one thread each) run ONNX
Runtime and then post-process their batch. The batcher decides how each request runs: one that
finds nobody ahead of it and an instance idle runs every step in one hop on that instance's thread.
Requests carry a *client* key (a plain string from the server): the batcher serves clients'
lines round-robin, and each client has at most ``fairness.decodes_per_client`` images in the
decode pool, so a quiet client's image is not decoded after all of a busy client's backlog.
``infer_sync`` does the same work in the calling thread, one image per model call. ``infer_raw``
puts ready tensors (the raw view, :mod:`visionrpc.runtime.raw`) into the same batchers, and a
tiled request (:mod:`visionrpc.runtime.tiling`) puts each tile into them as an item of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionrpc.errors import InvalidInputError, NotReadyError, ResourceLimitError, shorten
from visionrpc.runtime import measure, raw, rules, tasks, tiling
from visionrpc.runtime.batching import DynamicBatcher, Occupancy, shutting_down
from visionrpc.runtime.budget import Deadline, trim_memory
from visionrpc.runtime.classify import DEFAULT_TOP_K, centre_crop_uint8
from visionrpc.runtime.fairness import ClientSlots
from visionrpc.runtime.imaging import (
    DecodedImage,
    ImageTransform,
    decode_image,
    letterbox_uint8,
    raw_to_rgb,
    to_chw,
)
from visionrpc.runtime.masks import MaskEncoder
from visionrpc.runtime.raw import RawResult, RawSample
from visionrpc.runtime.repository import LoadedModel, ModelRepository
from visionrpc.runtime.statistics import InferenceStatistics
from visionrpc.runtime.tiling import FrameDetections, TileJob, TilePlan, TilingSpec
from visionrpc.runtime.yolo import (
    BoxMask,
    DecodeParams,
    decode_detections,
    instance_masks,
    mask_pixels,
)
from visionrpc.settings import LimitsSettings, Settings
from visionrpc.types import (
    BoxXYXY,
    Classification,
    DefectSummary,
    Detection,
    EncodedMask,
    InferenceInput,
    InferenceOptions,
    InferenceResult,
    InspectionVerdict,
    MaskFormat,
    PixelFormat,
    RawImage,
    Task,
    TilingMode,
    Timings,
)

log = logging.getLogger(__name__)

ItemOutputs = raw.ItemOutputs  # one image's model outputs, batch axis removed


@dataclass(frozen=True)
class ResolvedOptions:
    """Request options with the model's defaults filled in, validated."""

    params: DecodeParams
    return_masks: bool
    mask_format: MaskFormat
    inspection: rules.InspectionPlan | None = None  # None: no measurements, no verdict
    top_k: int = DEFAULT_TOP_K  # classification models


@dataclass(frozen=True)
class PreparedImage:
    """A letterboxed uint8 canvas waiting for the model, and how to map results back."""

    canvas: np.ndarray  # (in_h, in_w, 3) uint8
    transform: ImageTransform
    decode_ms: float
    preprocess_ms: float
    deadline: Deadline


@dataclass(frozen=True)
class Job:
    """One request handed to a model instance: its prepared image and what finishing needs."""

    item: InferenceInput
    options: ResolvedOptions
    prepared: PreparedImage
    start: float

    @property
    def deadline(self) -> Deadline:
        return self.prepared.deadline


JobOutcome = InferenceResult | Exception  # per job, so one bad result fails only its request
BatchItem = Job | RawSample | TileJob  # what a model's batcher queues: images, raw-view samples
# and tiles alike
Outcome = JobOutcome | ItemOutputs | FrameDetections  # raw sample: the graph's outputs; a tile:
# its detections in frame pixels


@dataclass(frozen=True)
class ModelLoad:
    """How busy one model's scheduler is right now (plain data for metrics read at scrape time)."""

    queue_depth: int  # admitted or queued, not yet running (what batching.max_queue_size bounds)
    instances_busy: int
    instances: int


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def resolve_options(options: InferenceOptions, model: LoadedModel) -> ResolvedOptions:
    """Fill defaults and refuse out-of-range values with messages that say what to send."""
    config = model.config

    def threshold(value: float | None, default: float, field: str) -> float:
        if value is None or value == 0:
            return default
        if not 0 < value <= 1:  # also refuses NaN
            raise InvalidInputError(
                f"{field} is {value}; send a value in (0, 1], or 0 for the default", field=field
            )
        return float(value)

    confidence = threshold(
        options.confidence_threshold, config.confidence_threshold, "confidence_threshold"
    )
    iou = threshold(options.iou_threshold, config.iou_threshold, "iou_threshold")
    max_det = options.max_detections or model.default_max_detections
    limit = model.max_detections_limit
    if not 1 <= max_det <= limit:
        raise InvalidInputError(
            f"max_detections is {max_det}; model {model.name!r} returns at most {limit}, "
            f"send 1..{limit} or 0 for the default",
            field="max_detections",
        )
    class_ids: frozenset[int] | None = None
    if options.classes:
        unknown = [c for c in options.classes if model.class_id(c) is None]
        if unknown:
            raise InvalidInputError(
                f"unknown class name(s) {shorten(unknown)} for model {model.name!r}; "
                f"valid names: {', '.join(model.class_names)}",
                field="classes",
            )
        class_ids = frozenset(i for c in options.classes if (i := model.class_id(c)) is not None)
    if options.return_masks and model.onnx.task is not Task.SEGMENT:
        raise InvalidInputError(
            f"return_masks is set but model {model.name!r} only detects (no masks); "
            "unset return_masks or choose a segmentation model",
            field="return_masks",
        )
    agnostic = config.agnostic_nms if options.agnostic_nms is None else options.agnostic_nms
    return ResolvedOptions(
        DecodeParams(confidence, iou, max_det, class_ids, agnostic),
        options.return_masks,
        options.mask_format,
        rules.plan_inspection(options, model),
        resolve_top_k(options.top_k, model),
    )


def resolve_top_k(top_k: int | None, model: LoadedModel) -> int:
    """Classes a classification model answers with: the request's, else 5, at most all."""
    nc = model.onnx.num_classes
    if top_k is None or top_k == 0:
        return min(DEFAULT_TOP_K, nc) if nc else DEFAULT_TOP_K
    if model.onnx.task is not Task.CLASSIFY:
        raise InvalidInputError(
            f"top_k is {top_k} but model {model.name!r} is a {model.onnx.task.value} model; "
            "top_k is for classification models, send 0 or choose one",
            field="top_k",
        )
    if not 1 <= top_k <= nc:
        raise InvalidInputError(
            f"top_k is {top_k}; model {model.name!r} has {nc} classes, send 1..{nc} or 0 for "
            f"the default ({min(DEFAULT_TOP_K, nc)})",
            field="top_k",
        )
    return top_k


MASK_DETECTIONS_SETTING = "limits.max_mask_detections (VISIONRPC_LIMITS__MAX_MASK_DETECTIONS)"
MASK_PIXELS_SETTING = "limits.max_mask_pixels (VISIONRPC_LIMITS__MAX_MASK_PIXELS)"


def check_limits(options: ResolvedOptions, limits: LimitsSettings) -> None:
    """Refuse before any decoding what would exceed the per-request budget."""
    n, cap = options.params.max_detections, limits.max_mask_detections
    if options.return_masks and n > cap:
        raise ResourceLimitError(
            f"return_masks with max_detections={n} asks for more masks than the server's limit of "
            f"{cap} ({MASK_DETECTIONS_SETTING}); send max_detections of at most {cap} with "
            "return_masks, or unset return_masks",
            limit="limits.max_mask_detections",
        )


class BatchRunner:
    """Runs letterboxed canvases (normalised into a reused input buffer of the graph's dtype) and
    raw samples (copied into it as they are) through one model.

    Each of the model's instance threads gets a buffer of its own, made on its first batch. Raw
    samples of another size than the buffer's slots are stacked on their own (the caller groups
    items by shape, see :func:`raw.run_grouped`).
    """

    def __init__(self, model: LoadedModel) -> None:
        self._model = model.onnx
        w, h = self._model.input_size
        self._shape = (model.max_batch_size, 3, h, w)
        self._local = threading.local()

    @property
    def slot_shape(self) -> tuple[int, ...]:
        return self._shape[1:]

    def __call__(self, items: Sequence[PreparedImage | TileJob | RawSample]) -> list[ItemOutputs]:
        n = len(items)
        first = items[0]
        if isinstance(first, RawSample) and first.array.shape != self.slot_shape:
            self._local.input_s = 0.0  # stacked as they are: no normalising
            outputs = self._model.run(
                np.stack([item.array for item in items if isinstance(item, RawSample)])
            )
            return [[out[i] for out in outputs] for i in range(n)]
        buffer: np.ndarray | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = np.empty(self._shape, dtype=self._model.input_dtype)
        t0 = time.perf_counter()
        for i, item in enumerate(items):
            if isinstance(item, RawSample):
                buffer[i] = item.array
            else:
                to_chw(item.canvas, buffer.dtype, out=buffer[i])
        self._local.input_s = time.perf_counter() - t0
        outputs = self._model.run(buffer[:n])
        return [[out[i] for out in outputs] for i in range(n)]

    @property
    def input_seconds(self) -> float:
        """How long this thread's last call took to fill its input (read in the same thread)."""
        return float(getattr(self._local, "input_s", 0.0))


class InferencePipeline:
    """Serves InferenceInputs with the models of a ModelRepository."""

    def __init__(self, repository: ModelRepository, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings
        self._decode_pool = ThreadPoolExecutor(
            settings.runtime.decode_workers, thread_name_prefix="visionrpc-decode"
        )
        # A thread per model instance: each instance always calls ORT from the same thread, so
        # its caches stay warm on one core instead of following requests between threads.
        # Both keyed by LoadedModel.generation, not by name: while a reload swaps versions, the
        # old one finishes its requests on its own batcher and threads beside the new one's.
        self._instance_threads: dict[int, list[ThreadPoolExecutor]] = {}
        self._batchers: dict[int, DynamicBatcher[BatchItem, Outcome]] = {}
        self._holders: Counter[int] = Counter()  # requests holding each generation
        self._holders_lock = threading.Lock()
        self._occupancy = Occupancy()  # shared by the batchers: is anything else running?
        self._decoding = ClientSlots(settings.fairness.decodes_per_client)
        self._closed = False
        self.stops: Counter[str] = Counter()  # requests stopped early, per stage boundary
        self.statistics = InferenceStatistics()
        """Triton's per-model statistics, fed for every request (ModelStatistics reads them)."""
        self.on_batch: Callable[[str, int], None] | None = None
        """Told (model, images) after each model call, in the instance's thread (so it must be
        thread-safe); set before serving."""
        self._trim_pending = False  # a large image was decoded: trim the heap after it

    @classmethod
    def from_settings(cls, settings: Settings) -> InferencePipeline:
        """Load the repository that ``settings`` names and serve it (blocks while models load)."""
        return cls(ModelRepository(settings), settings)

    # -- public API ------------------------------------------------------------------------

    def infer_sync(self, item: InferenceInput, deadline: Deadline | None = None) -> InferenceResult:
        """Run one input in the calling thread (no batching)."""
        start = time.perf_counter()
        deadline = self._start_deadline(deadline)
        model = self.repository.get(item.options.model)
        self._hold(model)
        try:
            options = resolve_options(item.options, model)
            check_limits(options, self.settings.limits)
            spec = self._tiling(item, model)
            if spec is not None:
                result = self._infer_tiled_sync(item, model, options, spec, start, deadline)
            else:
                result = self._run_alone(item, model, options, start, deadline, all_cores=True)
        except BaseException:
            self._failed(model, start)
            raise
        finally:
            self._let_go(model)
            if self._trim_pending:
                self._trim()
        self.statistics.succeeded(model.name, model.config.version, result.timings)
        return result

    def _failed(self, model: LoadedModel, start: float) -> None:
        self.statistics.failed(model.name, model.config.version, time.perf_counter() - start)

    def _start_deadline(self, deadline: Deadline | None) -> Deadline:
        deadline = deadline or Deadline()
        deadline.start_budget(self.settings.limits.max_request_seconds, self.stops)
        return deadline

    def _trim(self) -> None:
        self._trim_pending = False
        trim_memory()

    def _run_alone(
        self,
        item: InferenceInput,
        model: LoadedModel,
        options: ResolvedOptions,
        start: float,
        deadline: Deadline,
        *,
        all_cores: bool,
    ) -> InferenceResult:
        """Decode, run and post-process one input in this thread, with no hand-offs; with
        ``all_cores`` the model call may use every core (nothing else is running)."""
        queue_ms = _ms_since(start)
        prepared = self._prepare(item, model, deadline)
        deadline.check("before the model call")
        t0 = time.perf_counter()
        tensor = to_chw(prepared.canvas, model.onnx.input_dtype)[None]
        t1 = time.perf_counter()
        outputs = model.onnx.run(tensor, all_cores=all_cores)
        t2 = time.perf_counter()
        if self.on_batch is not None:
            self.on_batch(model.name, 1)
        try:
            return self._finish(
                item,
                model,
                options,
                prepared,
                [o[0] for o in outputs],
                (t2 - t0) * 1000,
                queue_ms,
                start,
            )
        finally:
            self.statistics.executed(
                model.name, model.config.version, 1, t1 - t0, t2 - t1, time.perf_counter() - t2
            )

    async def infer(
        self, item: InferenceInput, deadline: Deadline | None = None, client: str = ""
    ) -> InferenceResult:
        """Run one input without blocking the event loop; concurrent calls may share a batch.

        The work stops at the next stage boundary once ``deadline`` passes, the server's time
        budget runs out or this coroutine is cancelled (the caller went away). ``client`` names
        who sent it (the server's connection or identity) for fair queueing.
        """
        start = time.perf_counter()
        deadline = self._start_deadline(deadline)
        model = self.repository.get(item.options.model)
        try:
            result = await self._infer(item, model, start, deadline, client)
        except BaseException:
            self._failed(model, start)
            raise
        self.statistics.succeeded(model.name, model.config.version, result.timings)
        return result

    async def _infer(
        self,
        item: InferenceInput,
        model: LoadedModel,
        start: float,
        deadline: Deadline,
        client: str,
    ) -> InferenceResult:
        loop = asyncio.get_running_loop()
        options = resolve_options(item.options, model)
        check_limits(options, self.settings.limits)
        spec = self._tiling(item, model)
        if spec is not None:
            return await self._infer_tiled(item, model, options, spec, start, deadline, client)
        batcher = self._batcher(model, loop)

        def alone(all_cores: bool) -> InferenceResult:
            return self._run_alone(item, model, options, start, deadline, all_cores=all_cores)

        async def prepare() -> Job:
            await self._decoding.acquire(client)
            try:
                prepared = await loop.run_in_executor(
                    self._decode_pool, self._prepare, item, model, deadline
                )
            finally:
                self._decoding.release(client)
            return Job(item, options, prepared, start)

        self._hold(model)
        try:
            batched = await batcher.schedule(alone, prepare, client)
        except asyncio.CancelledError:
            deadline.cancel()  # work already handed to a thread stops at its next stage
            raise
        finally:
            self._let_go(model)
            if self._trim_pending:  # off the event loop, without delaying the answer
                loop.run_in_executor(self._decode_pool, self._trim)
        value = batched.value
        if isinstance(value, Exception):
            raise value
        assert isinstance(value, InferenceResult)
        value.timings.queue_ms = batched.queue_ms
        return value

    async def infer_raw(
        self,
        model_name: str,
        batch: np.ndarray,
        deadline: Deadline | None = None,
        client: str = "",
    ) -> RawResult:
        """Run the graph itself on ``batch`` (its input, batch axis first) in the model's batcher.

        Each sample is one item of the batcher, as one image is: a single sample may run alone,
        several are admitted together (all or none) and may share batches with images.
        """
        start = time.perf_counter()
        deadline = self._start_deadline(deadline)
        loop = asyncio.get_running_loop()
        model = self.repository.get(model_name)
        samples = raw.split(model, batch, deadline, self.settings.max_image_pixels)
        batcher = self._batcher(model, loop)
        version = model.config.version
        self._hold(model)
        try:
            if len(samples) == 1:
                (sample,) = samples

                def alone(all_cores: bool) -> Outcome:
                    t0 = time.perf_counter()
                    outputs = raw.run_alone(model.onnx, sample, all_cores=all_cores)
                    self.statistics.executed(
                        model.name, version, 1, 0.0, time.perf_counter() - t0, 0.0
                    )
                    if self.on_batch is not None:
                        self.on_batch(model.name, 1)
                    return outputs

                async def prepare() -> BatchItem:
                    return sample

                outcomes = [(await batcher.schedule(alone, prepare, client)).value]
            else:
                with contextlib.ExitStack() as stack:
                    slots = [stack.enter_context(batcher.admit(client)) for _ in samples]
                    done = await asyncio.gather(
                        *(slot.submit(s) for slot, s in zip(slots, samples, strict=True))
                    )
                outcomes = [b.value for b in done]
            result = raw.join(model, outcomes)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                deadline.cancel()
            for _ in samples:  # each sample counts as one image, as in the vision view
                self.statistics.failed(model.name, version, time.perf_counter() - start)
            raise
        finally:
            self._let_go(model)
        took = Timings(total_ms=_ms_since(start))
        for _ in samples:
            self.statistics.succeeded(model.name, version, took)
        return result

    def load(self) -> dict[str, ModelLoad]:
        """Each model's queue depth and busy instances now; safe to call from another thread
        (it only reads counters, so a value may be a moment old)."""
        out = {}
        for name, model in self.repository.loaded().items():
            batcher = self._batchers.get(model.generation)
            if batcher is None:  # no request yet
                out[name] = ModelLoad(0, 0, model.instances)
            else:
                out[name] = ModelLoad(batcher.depth, batcher.busy, model.instances)
        return out

    def warm(self, model: LoadedModel) -> None:
        """One request through every step (decode, letterbox, model call, post-processing) on
        ``model`` before it serves, so its first real request pays no first-call costs; in the
        calling thread, and not counted in the metrics."""
        w, h = model.onnx.input_size
        frame = RawImage(w, h, 3, PixelFormat.RGB, bytes(w * h * 3))
        item = InferenceInput(InferenceOptions(model=model.name), raw=frame)
        options = resolve_options(item.options, model)
        start = time.perf_counter()
        prepared = self._prepare(item, model, Deadline())
        outputs = model.onnx.run(to_chw(prepared.canvas, model.onnx.input_dtype)[None])
        self._finish(item, model, options, prepared, [o[0] for o in outputs], 0.0, 0.0, start)

    async def retire(self, model: LoadedModel, timeout_s: float) -> None:
        """Close a version that no longer serves (replaced or unloaded) once it is idle.

        Requests that got ``model`` before the swap finish on it: this waits until none holds
        it (at most ``timeout_s``; any still running then fail with NotReadyError), closes its
        batcher, then joins its instance threads, so nothing runs its ORT sessions any more and
        they are freed with the last reference to it.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while self._holders[model.generation] and loop.time() < give_up:
            await asyncio.sleep(0.01)
        if self._holders[model.generation]:
            log.warning(
                "model %s version %s: %d request(s) still running after %.0f s; stopping them",
                model.name,
                model.config.version,
                self._holders[model.generation],
                timeout_s,
            )
        batcher = self._batchers.pop(model.generation, None)
        if batcher is not None and batcher.loop in (None, loop):
            await batcher.aclose(
                NotReadyError(
                    f"model {model.name!r} version {model.config.version} stopped serving "
                    f"(reloaded or unloaded) while this request still ran after "
                    f"{timeout_s:g} s (model_control.retire_timeout_s); retry it"
                )
            )
        threads = self._instance_threads.pop(model.generation, [])
        await asyncio.to_thread(_join, threads)

    def _hold(self, model: LoadedModel) -> None:
        with self._holders_lock:
            self._holders[model.generation] += 1

    def _let_go(self, model: LoadedModel) -> None:
        with self._holders_lock:
            left = self._holders[model.generation] - 1
            if left:
                self._holders[model.generation] = left
            else:
                del self._holders[model.generation]

    async def close(self) -> None:
        """Stop the batchers and the thread pools; requests not yet answered, and any later
        ones, fail with NotReadyError (another server may take them)."""
        self._closed = True
        loop = asyncio.get_running_loop()
        for batcher in list(self._batchers.values()):
            if batcher.loop in (None, loop):
                await batcher.aclose()
        self._batchers.clear()
        self.shutdown()

    async def __aenter__(self) -> InferencePipeline:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def shutdown(self) -> None:
        """Synchronous close for code without an event loop (batchers are left to the GC)."""
        self._closed = True
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        for threads in self._instance_threads.values():
            for thread in threads:
                thread.shutdown(wait=False, cancel_futures=True)

    # -- steps -----------------------------------------------------------------------------

    def _threads(self, model: LoadedModel) -> list[ThreadPoolExecutor]:
        threads = self._instance_threads.get(model.generation)
        if threads is None:
            prefix = f"visionrpc-{model.name}-g{model.generation}"
            threads = self._instance_threads[model.generation] = [
                ThreadPoolExecutor(1, thread_name_prefix=f"{prefix}-{i}")
                for i in range(model.instances)
            ]
        return threads

    def _batcher(
        self, model: LoadedModel, loop: asyncio.AbstractEventLoop
    ) -> DynamicBatcher[BatchItem, Outcome]:
        if self._closed:
            raise shutting_down(model.name)
        batcher = self._batchers.get(model.generation)
        if batcher is None or batcher.loop not in (None, loop):
            runner = BatchRunner(model)
            batcher = DynamicBatcher(
                functools.partial(self._run_jobs, model, runner),
                max_batch_size=model.max_batch_size,
                max_queue_delay_us=model.batching.max_queue_delay_us,
                max_queue_size=model.batching.max_queue_size,
                max_queue_per_client=self.settings.fairness.max_queue_per_client,
                instances=model.instances,
                executor=self._threads(model),
                name=model.name,
                occupancy=self._occupancy,
            )
            self._batchers[model.generation] = batcher
        return batcher

    def _run_jobs(
        self, model: LoadedModel, runner: BatchRunner, jobs: Sequence[BatchItem]
    ) -> list[Outcome]:
        """A batch on one instance: the model call, then each job's post-processing right there,
        so a finished request never queues behind other requests' decoding. Jobs whose caller
        is gone are left out of the model call; raw samples get the graph's outputs as they are."""
        outcomes: dict[int, Outcome] = {}
        live: list[int] = []
        for i, job in enumerate(jobs):
            try:
                job.deadline.check("before the model call")
                live.append(i)
            except Exception as exc:
                outcomes[i] = exc
        if live:
            t0 = time.perf_counter()
            fed = [j.prepared if isinstance(j, Job) else j for j in (jobs[i] for i in live)]
            on_batch = self.on_batch
            calls: list[tuple[int, float, float]] = []  # per model call: size, input s, infer s

            def on_call(n: int, seconds: float) -> None:
                input_s = runner.input_seconds
                calls.append((n, input_s, seconds - input_s))
                if on_batch is not None:
                    on_batch(model.name, n)

            outputs = raw.run_grouped(runner, model.onnx, fed, runner.slot_shape, on_call)
            t1 = time.perf_counter()
            run_ms = (t1 - t0) * 1000
            for i, out in zip(live, outputs, strict=True):
                job = jobs[i]
                if isinstance(out, Exception) or isinstance(job, RawSample):
                    outcomes[i] = out
                    continue
                try:
                    if isinstance(job, TileJob):
                        outcomes[i] = tiling.tile_detections(model.onnx.spec, job, out)
                        continue
                    outcomes[i] = self._finish(
                        job.item, model, job.options, job.prepared, out, run_ms, 0.0, job.start
                    )
                except Exception as exc:  # one job's failure is its own
                    outcomes[i] = exc
            output_s = time.perf_counter() - t1
            for k, (n, input_s, infer_s) in enumerate(calls):
                # post-processing is the images', and images only run in the first call
                self.statistics.executed(
                    model.name, model.config.version, n, input_s, infer_s, 0.0 if k else output_s
                )
        return [outcomes[i] for i in range(len(jobs))]

    def _prepare(
        self, item: InferenceInput, model: LoadedModel, deadline: Deadline
    ) -> PreparedImage:
        deadline.check("before decode")
        t0 = time.perf_counter()
        image = self._decode(item, model)
        t1 = time.perf_counter()
        trim_above = self.settings.limits.trim_memory_above_bytes
        if trim_above and image.rgb.nbytes > trim_above:
            self._trim_pending = True
        deadline.check("after decode")
        fit = centre_crop_uint8 if model.onnx.task is Task.CLASSIFY else letterbox_uint8
        canvas, transform = fit(image, model.onnx.input_size)
        return PreparedImage(canvas, transform, (t1 - t0) * 1000, _ms_since(t1), deadline)

    def _decode(
        self, item: InferenceInput, model: LoadedModel, *, reduced: bool = True
    ) -> DecodedImage:
        s = self.settings
        if item.image_bytes is not None and item.raw is not None:
            raise InvalidInputError("send either image_bytes or raw, not both", field="image")
        if item.raw is not None:
            return raw_to_rgb(item.raw, max_pixels=s.max_image_pixels, max_side=s.max_image_side)
        if item.image_bytes is None:
            raise InvalidInputError(
                "no image: send image_bytes (encoded) or raw (decoded frame)", field="image"
            )
        return decode_image(
            item.image_bytes,
            max_pixels=s.max_image_pixels,
            max_side=s.max_image_side,
            input_size=model.onnx.input_size,
            reduced_decode=s.reduced_decode and reduced,
        )

    def _finish(
        self,
        item: InferenceInput,
        model: LoadedModel,
        options: ResolvedOptions,
        prepared: PreparedImage,
        outputs: ItemOutputs,
        inference_ms: float,
        queue_ms: float,
        start: float,
    ) -> InferenceResult:
        prepared.deadline.check("before post-processing")
        t0 = time.perf_counter()
        classified: tuple[Classification, ...] = ()
        masks: list[BoxMask] | None = None
        if model.onnx.task is Task.CLASSIFY:
            detections: tuple[Detection, ...] = ()
            classified = tasks.classifications(outputs, options.top_k, model.class_name)
        else:
            detections, masks = self._detections(
                model, options, prepared.transform, outputs, prepared.deadline, self.settings.limits
            )
        plan = options.inspection
        detections, verdict = _inspect(plan, detections, masks, prepared.deadline)
        tr = prepared.transform
        timings = Timings(
            decode_ms=prepared.decode_ms,
            preprocess_ms=prepared.preprocess_ms,
            inference_ms=inference_ms,
            postprocess_ms=_ms_since(t0),
            queue_ms=queue_ms,
        )
        timings.total_ms = _ms_since(start)
        return InferenceResult(
            model=model.name,
            model_version=model.config.version,
            image_width=tr.orig_width,
            image_height=tr.orig_height,
            detections=detections,
            defects=summarize_defects(detections, tr.orig_width, tr.orig_height),
            timings=timings,
            request_id=item.request_id,
            verdict=verdict,
            pixels_per_mm=plan.pixels_per_mm if plan is not None else None,
            classifications=classified,
        )

    @staticmethod
    def _detections(
        model: LoadedModel,
        options: ResolvedOptions,
        transform: ImageTransform,
        outputs: ItemOutputs,
        deadline: Deadline,
        limits: LimitsSettings,
    ) -> tuple[tuple[Detection, ...], list[BoxMask] | None]:
        """The detections, and their masks (in original pixels) when the model segments."""
        spec = model.onnx.spec
        if spec.task is Task.OBB:
            rotated = tasks.rotated_detections(
                outputs, spec, options.params, transform, model.class_name
            )
            return rotated, None
        raw = decode_detections(outputs, spec, options.params)
        boxes = transform.boxes_to_original(raw.boxes)
        if spec.task is Task.POSE:
            return tasks.pose_detections(raw, boxes, spec, transform, model.class_name), None
        areas: list[int | None] = [None] * len(raw)
        encoded: list[EncodedMask | None] = [None] * len(raw)
        masks: list[BoxMask] | None = None
        if spec.task is Task.SEGMENT and raw.coeffs is not None and len(raw):
            deadline.check("before masks")
            step = 1
            pixels, budget = mask_pixels(boxes), limits.max_mask_pixels
            if pixels > budget:
                if options.return_masks:
                    raise ResourceLimitError(
                        f"the masks of the {len(raw)} detections would cover {pixels} pixels, more "
                        f"than the server's limit of {budget} ({MASK_PIXELS_SETTING}); send a "
                        "smaller image, a higher confidence_threshold or a lower max_detections, "
                        "or unset return_masks",
                        limit="limits.max_mask_pixels",
                    )
                step = math.ceil(math.sqrt(pixels / budget))  # areas only: a coarser grid
            masks = instance_masks(raw.coeffs, outputs[1], raw.boxes, boxes, transform, step=step)
            areas = [m.area for m in masks]
            if options.return_masks:
                encoder = MaskEncoder(transform.orig_width, transform.orig_height)
                encoded = [encoder.encode(m, options.mask_format) for m in masks]
        detections = tuple(
            Detection(
                box=BoxXYXY(*(float(v) for v in box)),
                score=float(score),
                class_id=int(cid),
                class_name=model.class_name(int(cid)),
                mask=enc,
                mask_area_px=area,
            )
            for box, score, cid, area, enc in zip(
                boxes, raw.scores, raw.class_ids, areas, encoded, strict=True
            )
        )
        return detections, masks

    # -- tiled inference (see runtime.tiling) ------------------------------------------------

    def _tiling(self, item: InferenceInput, model: LoadedModel) -> TilingSpec | None:
        """The request's tiling when its frame is to be tiled, else None (the ordinary path).
        Auto mode decides from the header, before decoding."""
        spec = tiling.resolve_tiling(
            item.options.tiling, model.config.tiling.options(), model.onnx.input_size
        )
        if spec.mode is TilingMode.OFF:
            return None
        if model.onnx.task not in (Task.DETECT, Task.SEGMENT):
            if spec.mode is TilingMode.AUTO:
                return None  # tiles are for finding small things; this model does not find
            raise InvalidInputError(
                f"tiling is for detection and segmentation models; model {model.name!r} is a "
                f"{model.onnx.task.value} model: send tiling mode off or auto",
                field="tiling.mode",
            )
        if spec.mode is TilingMode.AUTO:
            size = tiling.frame_size(item)
            if size is None or not tiling.wants_tiles(*size, spec):
                return None
        return dataclasses.replace(spec, mode=TilingMode.ON)

    def _cut_frame(
        self,
        item: InferenceInput,
        model: LoadedModel,
        options: ResolvedOptions,
        spec: TilingSpec,
        deadline: Deadline,
    ) -> _TiledFrame:
        """Decode at full size (tiles need every pixel), plan the tiles, letterbox the thumbnail."""
        deadline.check("before decode")
        t0 = time.perf_counter()
        image = self._decode(item, model, reduced=False)
        t1 = time.perf_counter()
        trim_above = self.settings.limits.trim_memory_above_bytes
        if trim_above and image.rgb.nbytes > trim_above:
            self._trim_pending = True
        deadline.check("after decode")
        plan = tiling.plan_tiles(image.width, image.height, spec, self.settings.limits.max_tiles)
        if plan is None:  # pragma: no cover - spec.mode is ON here
            raise RuntimeError("a tiled request got no tiles")
        thumbnail = None
        if plan.thumbnail:
            canvas, transform = letterbox_uint8(
                tiling.shrink(image, model.onnx.input_size), model.onnx.input_size
            )
            whole = tiling.Tile(-1, 0, 0, image.width, image.height)
            thumbnail = TileJob(
                canvas,
                transform,
                whole,
                image.width,
                image.height,
                options.params,
                deadline,
                self.settings.limits.max_mask_pixels,
            )
        return _TiledFrame(image, plan, thumbnail, (t1 - t0) * 1000, _ms_since(t1))

    async def _infer_tiled(
        self,
        item: InferenceInput,
        model: LoadedModel,
        options: ResolvedOptions,
        spec: TilingSpec,
        start: float,
        deadline: Deadline,
        client: str,
    ) -> InferenceResult:
        """Each tile (and the thumbnail) is an item of the model's batcher, in ``client``'s line:
        tiles share batches and instances with other requests, and a window of them in flight at
        a time bounds what the request holds of the queue (tiles are cut as they enter it)."""
        loop = asyncio.get_running_loop()
        batcher = self._batcher(model, loop)
        self._hold(model)
        try:
            await self._decoding.acquire(client)
            try:
                frame = await loop.run_in_executor(
                    self._decode_pool, self._cut_frame, item, model, options, spec, deadline
                )
            finally:
                self._decoding.release(client)
            make = tiling.tile_jobs(
                frame.image,
                frame.plan,
                model.onnx.input_size,
                options.params,
                deadline,
                self.settings.limits.max_mask_pixels,
            )
            slow = tiling.needs_resize(frame.plan, model.onnx.input_size)
            window = max(
                1,
                min(
                    self.settings.fairness.max_queue_per_client,
                    2 * model.max_batch_size * model.instances,
                ),
            )

            async def run(tile: tiling.Tile | None) -> FrameDetections:
                with batcher.admit(client) as slot:  # sheds load before a tile is cut
                    if tile is None:
                        assert frame.thumbnail is not None
                        job = frame.thumbnail
                    elif slow:
                        job = await loop.run_in_executor(self._decode_pool, make, tile)
                    else:
                        job = make(tile)
                    value = (await slot.submit(job)).value
                if isinstance(value, Exception):
                    raise value
                assert isinstance(value, FrameDetections)
                return value

            work: list[tiling.Tile | None] = [None] if frame.thumbnail is not None else []
            work += frame.plan.tiles
            t0 = time.perf_counter()
            parts = await _windowed(loop, [functools.partial(run, t) for t in work], window)
            inference_ms = _ms_since(t0)
            return await loop.run_in_executor(
                self._decode_pool,
                self._tiled_result,
                item,
                model,
                options,
                frame,
                parts,
                deadline,
                Timings(frame.decode_ms, frame.preprocess_ms, inference_ms),
                start,
            )
        except asyncio.CancelledError:
            deadline.cancel()
            raise
        finally:
            self._let_go(model)
            if self._trim_pending:
                loop.run_in_executor(self._decode_pool, self._trim)

    def _infer_tiled_sync(
        self,
        item: InferenceInput,
        model: LoadedModel,
        options: ResolvedOptions,
        spec: TilingSpec,
        start: float,
        deadline: Deadline,
    ) -> InferenceResult:
        """The tiles one by one in the calling thread (``infer_sync``: no batching)."""
        frame = self._cut_frame(item, model, options, spec, deadline)
        make = tiling.tile_jobs(
            frame.image,
            frame.plan,
            model.onnx.input_size,
            options.params,
            deadline,
            self.settings.limits.max_mask_pixels,
        )
        jobs = [frame.thumbnail] if frame.thumbnail is not None else []
        parts = []
        t0 = time.perf_counter()
        for job in itertools.chain(jobs, map(make, frame.plan.tiles)):
            deadline.check("before the model call")
            t1 = time.perf_counter()
            tensor = to_chw(job.canvas, model.onnx.input_dtype)[None]
            t2 = time.perf_counter()
            outputs = model.onnx.run(tensor, all_cores=True)
            t3 = time.perf_counter()
            parts.append(tiling.tile_detections(model.onnx.spec, job, [o[0] for o in outputs]))
            self.statistics.executed(
                model.name, model.config.version, 1, t2 - t1, t3 - t2, time.perf_counter() - t3
            )
            if self.on_batch is not None:
                self.on_batch(model.name, 1)
        timings = Timings(frame.decode_ms, frame.preprocess_ms, _ms_since(t0))
        return self._tiled_result(item, model, options, frame, parts, deadline, timings, start)

    def _tiled_result(
        self,
        item: InferenceInput,
        model: LoadedModel,
        options: ResolvedOptions,
        frame: _TiledFrame,
        parts: Sequence[FrameDetections],
        deadline: Deadline,
        timings: Timings,
        start: float,
    ) -> InferenceResult:
        """Merge the tiles' detections across borders and answer as for one image."""
        deadline.check("before post-processing")
        t0 = time.perf_counter()
        p = options.params
        merged = tiling.merge_detections(
            parts,
            iou=p.iou,
            max_detections=p.max_detections,
            agnostic=p.agnostic,
            deadline=deadline,
        )
        width, height = frame.image.width, frame.image.height
        segment = model.onnx.task is Task.SEGMENT
        encoder = MaskEncoder(width, height)
        if options.return_masks:
            pixels = sum(m.mask.mask.size for m in merged if m.mask is not None)
            budget = self.settings.limits.max_mask_pixels
            if pixels > budget or any(m.mask is None for m in merged):
                raise ResourceLimitError(
                    f"the masks of the {len(merged)} detections would cover more than the "
                    f"server's limit of {budget} pixels ({MASK_PIXELS_SETTING}); send a higher "
                    "confidence_threshold or a lower max_detections, or unset return_masks",
                    limit="limits.max_mask_pixels",
                )
            deadline.check("before masks")
        detections = tuple(
            Detection(
                box=BoxXYXY(*m.box),
                score=m.score,
                class_id=m.class_id,
                class_name=model.class_name(m.class_id),
                mask=(
                    encoder.encode(m.mask, options.mask_format)
                    if options.return_masks and m.mask is not None
                    else None
                ),
                mask_area_px=m.mask.area if segment and m.mask is not None else None,
            )
            for m in merged
        )
        plan = options.inspection  # measurements and verdicts, as for one image
        found = [m.mask for m in merged] if segment else None
        masks = None if found is None or None in found else [m for m in found if m is not None]
        detections, verdict = _inspect(plan, detections, masks, deadline)
        timings.postprocess_ms = _ms_since(t0)
        timings.total_ms = _ms_since(start)
        return InferenceResult(
            model=model.name,
            model_version=model.config.version,
            image_width=width,
            image_height=height,
            detections=detections,
            defects=summarize_defects(detections, width, height),
            timings=timings,
            request_id=item.request_id,
            tiling=frame.plan.report(),
            verdict=verdict,
            pixels_per_mm=plan.pixels_per_mm if plan is not None else None,
        )


def _inspect(
    plan: rules.InspectionPlan | None,
    detections: tuple[Detection, ...],
    masks: Sequence[BoxMask] | None,
    deadline: Deadline,
) -> tuple[tuple[Detection, ...], InspectionVerdict | None]:
    """The detections measured and the verdict of the plan's rules; as they were without a plan."""
    if plan is None:
        return detections, None
    deadline.check("before measuring")
    detections = measure.measure(
        detections, masks, pixels_per_mm=plan.pixels_per_mm, shape=plan.shape
    )
    verdict = rules.evaluate(plan.rules, detections) if plan.rules is not None else None
    return detections, verdict


@dataclass(frozen=True)
class _TiledFrame:
    """A decoded frame cut into tiles: what a tiled request holds while its tiles run."""

    image: DecodedImage
    plan: TilePlan
    thumbnail: TileJob | None
    decode_ms: float
    preprocess_ms: float


async def _windowed(
    loop: asyncio.AbstractEventLoop,
    work: Sequence[Callable[[], Coroutine[Any, Any, FrameDetections]]],
    window: int,
) -> list[FrameDetections]:
    """Run ``work`` with at most ``window`` of it at once; the first failure cancels the rest
    and is raised."""
    results: list[FrameDetections] = []
    running: set[asyncio.Task[FrameDetections]] = set()

    async def collect() -> None:
        nonlocal running
        done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        errors = [e for task in done if (e := task.exception()) is not None]
        if errors:
            raise errors[0]
        results.extend(task.result() for task in done)

    try:
        for step in work:
            if len(running) >= window:
                await collect()
            running.add(loop.create_task(step()))
        while running:
            await collect()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return results


def _join(threads: Sequence[ThreadPoolExecutor]) -> None:
    for thread in threads:
        thread.shutdown(wait=True, cancel_futures=True)


def summarize_defects(
    detections: Sequence[Detection], image_width: int, image_height: int
) -> tuple[DefectSummary, ...]:
    """One summary per class found, sorted by class name; area = mask area when known, else box."""
    groups: dict[str, list[Detection]] = {}
    for det in detections:
        groups.setdefault(det.class_name, []).append(det)
    image_area = float(image_width * image_height) or math.inf
    summaries = []
    for name in sorted(groups):
        dets = groups[name]
        total = float(
            sum(d.mask_area_px if d.mask_area_px is not None else d.box.area for d in dets)
        )
        area_mm2, length_px, length_mm = measure.class_totals(dets)
        summaries.append(
            DefectSummary(
                class_name=name,
                count=len(dets),
                max_score=max(d.score for d in dets),
                total_area_px=total,
                area_fraction=total / image_area,
                total_area_mm2=area_mm2,
                total_length_px=length_px,
                total_length_mm=length_mm,
            )
        )
    return tuple(summaries)
