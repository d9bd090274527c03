"""The raw view of a model: the ONNX graph's own tensors in and out, batched with images.

A raw request carries the graph's input as it is (a batch of n samples, already preprocessed by
the client). It becomes n :class:`RawSample` items of the model's one DynamicBatcher, so raw
samples and decoded images share batches and model instances; each sample skips decoding and
letterboxing, goes straight into the batch buffer and gets the graph's outputs back unprocessed,
and the request's outputs are stacked again in its order. Samples whose spatial size differs from
the images' (a graph with dynamic height and width) cannot share a buffer with them: they run in
a model call of their own within the same batch, grouped by shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from visionrpc.errors import InvalidInputError, ResourceLimitError
from visionrpc.runtime.budget import Deadline
from visionrpc.runtime.model import GraphTensor, OnnxModel
from visionrpc.runtime.repository import LoadedModel

ItemOutputs = list[np.ndarray]  # one sample's model outputs, batch axis removed


def graph_inputs(model: OnnxModel) -> tuple[GraphTensor, ...]:
    return model.graph_inputs


def graph_outputs(model: OnnxModel) -> tuple[GraphTensor, ...]:
    return model.graph_outputs


@dataclass(frozen=True)
class RawSample:
    """One sample of a raw request: the graph's input without its batch axis, ready to run."""

    array: np.ndarray
    deadline: Deadline


@dataclass(frozen=True)
class RawResult:
    """The graph's outputs for a whole raw request, batch axis restored, in the graph's order."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]


def max_request_batch(model: LoadedModel) -> int:
    """The largest batch one raw request may carry: the model's max_batch_size (a fixed-batch
    graph takes exactly its batch)."""
    return model.max_batch_size


def split(
    model: LoadedModel, batch: np.ndarray, deadline: Deadline, max_pixels: int
) -> list[RawSample]:
    """Check ``batch`` against the graph's input and cut it into samples (views, no copy)."""
    (graph,) = graph_inputs(model.onnx)
    name, want = graph.name, graph.shape
    shown = f"{list(want)} {graph.dtype}"
    if batch.dtype != graph.dtype:
        raise InvalidInputError(
            f"input {name!r} is {batch.dtype} but the graph of {model.name!r} takes {shown}",
            field="inputs.datatype",
        )
    if batch.ndim != len(want) or any(
        w >= 0 and d != w for d, w in zip(batch.shape, want, strict=True)
    ):
        raise InvalidInputError(
            f"input {name!r} has shape {list(batch.shape)} but the graph of {model.name!r} takes "
            f"{shown} (-1: any size)",
            field="inputs.shape",
        )
    n, limit = batch.shape[0], max_request_batch(model)
    if n < 1 or any(d < 1 for d in batch.shape):
        raise InvalidInputError(
            f"input {name!r} has shape {list(batch.shape)}, with an empty dimension; send at "
            "least one sample of at least one element per dimension",
            field="inputs.shape",
        )
    if n > limit:
        raise InvalidInputError(
            f"input {name!r} has a batch of {n} but model {model.name!r} takes at most {limit} "
            "samples per request (its max_batch_size); split the request",
            field="inputs.shape",
        )
    height, width = batch.shape[-2:]
    if height * width > max_pixels:
        raise ResourceLimitError(
            f"input {name!r} is {height}x{width} = {height * width} pixels per sample, more than "
            f"the server's limit of {max_pixels} pixels (max_image_pixels); send smaller samples",
            limit="max_image_pixels",
        )
    return [RawSample(sample, deadline) for sample in batch]


def refusal(model: OnnxModel, shape: tuple[int, ...], exc: Exception) -> InvalidInputError:
    """What a raw sample of ``shape`` gets when ONNX Runtime refuses it: its spatial size was
    allowed by the graph's declared shape but not by its operators (e.g. not a multiple of the
    stride)."""
    w, h = model.input_size
    return InvalidInputError(
        f"the graph refused input {model.input_name!r} of sample shape {list(shape)}: "
        f"{str(exc).strip()[:300]}; send samples of the model's own size (3x{h}x{w}) or one "
        "its operators accept",
        field="inputs.shape",
    )


def run_alone(model: OnnxModel, sample: RawSample, *, all_cores: bool) -> ItemOutputs:
    """One sample in the calling thread (the batcher's lone-request path)."""
    sample.deadline.check("before the model call")
    try:
        outputs = model.run(sample.array[None], all_cores=all_cores)
    except Exception as exc:
        if sample.array.shape[-2:] == model.input_size[::-1]:
            raise
        raise refusal(model, sample.array.shape, exc) from exc
    return [o[0] for o in outputs]


Fed = TypeVar("Fed")  # what a batch runner takes per item: a prepared image or a RawSample


def run_grouped(
    run: Callable[[list[Fed]], list[ItemOutputs]],
    model: OnnxModel,
    items: Sequence[Fed],
    slot_shape: tuple[int, ...],
    on_call: Callable[[int, float], None],
) -> list[ItemOutputs | Exception]:
    """Run a batch's items in as few model calls as shapes allow: every image and every raw
    sample of the model's own size together (the first call), each other sample shape in a call
    of its own.

    A failing call fails its own items only; ``on_call(n, seconds)`` is told each successful
    call's size and duration, in the thread that made it.
    """
    groups: dict[tuple[int, ...], list[int]] = {slot_shape: []}
    for i, item in enumerate(items):
        shape = item.array.shape if isinstance(item, RawSample) else slot_shape
        groups.setdefault(shape, []).append(i)
    results: list[ItemOutputs | Exception] = [[] for _ in items]
    for shape, members in groups.items():
        if not members:
            continue
        started = time.perf_counter()
        try:
            outputs = run([items[i] for i in members])
        except Exception as exc:
            error = exc if shape == slot_shape else refusal(model, shape, exc)
            for i in members:
                results[i] = error
            continue
        on_call(len(members), time.perf_counter() - started)
        for i, out in zip(members, outputs, strict=True):
            results[i] = out
    return results


def join(model: LoadedModel, outcomes: Sequence[object]) -> RawResult:
    """The samples' outputs stacked back into the request's batch (the first failure raises)."""
    per_sample: list[ItemOutputs] = []
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
        if not isinstance(outcome, list):
            raise TypeError(f"a raw sample got {type(outcome).__name__}, not model outputs")
        per_sample.append(outcome)
    names = [t.name for t in graph_outputs(model.onnx)]
    if model.onnx.spec.batched:
        arrays = [np.stack([s[k] for s in per_sample]) for k in range(len(names))]
    else:  # the graph's outputs have no batch axis (a fixed batch of 1)
        arrays = list(per_sample[0])
    return RawResult(model.name, model.config.version, dict(zip(names, arrays, strict=True)))
