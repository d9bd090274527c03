"""Section h: the Open Inference Protocol's ModelInfer (vision view) beside the typed Infer.

Both paths are measured against one ``visionrpc serve`` process (section b's), with the same
JPEGs, in alternating slices whose counts are pooled, so that the machine's drift hits both alike:

* typed: ``visionrpc.v1.InferenceMethods/Infer`` with the image in ``image_bytes``;
* protocol: ``inference.GRPCInferenceService/ModelInfer`` on the model's vision view, the image a
  BYTES tensor ``IMAGE`` of shape [1] in ``raw_input_contents`` with Triton's framing (a 4-byte
  little-endian length, then the bytes), asking for the detection tensors, as tritonclient sends it.

Requests are built once and answers are not decoded during the load, as for the typed driver; the
server's CPU time per image is counted per slice, a steadier measure of the protocol's cost than
throughput on a shared machine. Before the load every image goes once through each path and the
detections are compared (:func:`compare`), as the peers' answers are.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from bench.harness.loadgen import row
from bench.harness.paired import self_cpu_seconds
from bench.harness.procs import cpu_seconds
from bench.harness.report import OIP_PROTOCOL, OIP_TYPED, ResultRow, Section
from visionrpc.client.loadtest import (
    LoadResult,
    closed_loop,
    infer_requests,
    plain_caller,
)
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc, inference_pb2, inference_pb2_grpc

TYPED, PROTOCOL = OIP_TYPED, OIP_PROTOCOL
CONCURRENCY = (1, 16)  # p50 at c1, images/s at c16
IMAGE_INPUT = "IMAGE"
DETECTION_OUTPUTS = ("BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX")
BOX_TOLERANCE_PX = 0.01  # both paths carry float32 boxes from the same result: equal in practice
SCORE_TOLERANCE = 1e-5
_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}
_SERVER_NAME = "visionrpc gRPC"

Detections = list[tuple[int, float, tuple[float, ...]]]
"""(class id, score, box x_min/y_min/x_max/y_max) per detection, in the server's order."""


def framed(images: Sequence[bytes]) -> bytes:
    """Triton's BYTES framing of ``images`` for ``raw_input_contents``."""
    return b"".join(struct.pack("<I", len(image)) + image for image in images)


def model_infer_requests(images: Sequence[bytes], model: str) -> list[oip.ModelInferRequest]:
    """One pre-built vision-view request per encoded image, asking for the detection tensors."""
    requests = []
    for data in images:
        request = oip.ModelInferRequest(model_name=model)
        request.inputs.add(name=IMAGE_INPUT, datatype="BYTES", shape=[1])
        for name in DETECTION_OUTPUTS:
            request.outputs.add(name=name)
        request.raw_input_contents.append(framed([data]))
        requests.append(request)
    return requests


async def model_infer_load(
    channel: grpc.aio.Channel,
    requests: Sequence[oip.ModelInferRequest],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    timeout_s: float | None,
) -> LoadResult:
    """Unary ModelInfer, ``concurrency`` calls in flight on ``channel`` (the typed loop's twin)."""
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

    async def call(i: int) -> None:
        await stub.ModelInfer(requests[i % len(requests)], timeout=timeout_s)

    return await closed_loop(
        plain_caller(call),
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
    )


def protocol_detections(response: oip.ModelInferResponse) -> Detections:
    """The detections of a one-image ModelInfer answer, read from its raw output tensors."""
    arrays: dict[str, np.ndarray] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype not in _DTYPES:
            continue
        arrays[tensor.name] = np.frombuffer(raw, dtype=_DTYPES[tensor.datatype]).reshape(
            tuple(tensor.shape)
        )
    missing = [name for name in ("BOXES", "SCORES", "CLASS_IDS") if name not in arrays]
    if missing:
        raise ValueError(f"ModelInfer answered without {', '.join(missing)}")
    return [
        (int(c), float(s), tuple(float(v) for v in box))
        for c, s, box in zip(arrays["CLASS_IDS"], arrays["SCORES"], arrays["BOXES"], strict=True)
    ]


def typed_detections(response: inference_pb2.InferResponse) -> Detections:
    return [
        (d.class_id, d.score, (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max))
        for d in response.detections
    ]


def compare(typed: Sequence[Detections], protocol: Sequence[Detections]) -> dict[str, Any]:
    """Per image: same detections in the same order, classes equal, boxes and scores within
    :data:`BOX_TOLERANCE_PX` / :data:`SCORE_TOLERANCE`; ``equal`` is true when all images match."""
    mismatched, box_diff, score_diff = [], 0.0, 0.0
    for i, (want, got) in enumerate(zip(typed, protocol, strict=True)):
        pairs = list(zip(want, got, strict=False))
        boxes = max(
            (abs(x - y) for a, b in pairs for x, y in zip(a[2], b[2], strict=True)), default=0.0
        )
        scores = max((abs(a[1] - b[1]) for a, b in pairs), default=0.0)
        box_diff, score_diff = max(box_diff, boxes), max(score_diff, scores)
        same = len(want) == len(got) and all(a[0] == b[0] for a, b in pairs)
        if not same or boxes > BOX_TOLERANCE_PX or scores > SCORE_TOLERANCE:
            mismatched.append(i)
    return {
        "equal": not mismatched,
        "images": len(typed),
        "mismatched_images": mismatched,
        "detections": sum(len(d) for d in typed),
        "max_box_diff_px": box_diff,
        "max_score_diff": score_diff,
    }


async def check_equal(
    channel: grpc.aio.Channel, model: str, images: Sequence[bytes], timeout_s: float | None
) -> dict[str, Any]:
    """Every image once through each path; the detections compared (:func:`compare`)."""
    typed_stub = inference_pb2_grpc.InferenceMethodsStub(channel)
    protocol_stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    typed, protocol = [], []
    for typed_request, protocol_request in zip(
        infer_requests(images, model), model_infer_requests(images, model), strict=True
    ):
        typed.append(typed_detections(await typed_stub.Infer(typed_request, timeout=timeout_s)))
        answer = await protocol_stub.ModelInfer(protocol_request, timeout=timeout_s)
        protocol.append(protocol_detections(answer))
    return compare(typed, protocol)


@dataclass
class _Side:
    """One path, pooled over its slices, with the server's and this process's CPU time."""

    result: LoadResult = field(default_factory=lambda: LoadResult(0, 0.0))
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    def per_image_ms(self, seconds: float) -> float | None:
        return seconds * 1000 / self.result.count if self.result.count else None


async def oip_points(
    address: str,
    server_pid: int,
    model: str,
    images: Sequence[bytes],
    *,
    rounds: int,
    slice_s: float,
    warmup_s: float,
    max_requests: int,
    timeout_s: float | None,
    on_slice: Callable[[str], None] = lambda label: None,
) -> tuple[list[ResultRow], dict[str, Any]]:
    """Typed Infer and ModelInfer on the server at ``address`` (process ``server_pid``) at each
    of :data:`CONCURRENCY`, alternating slices of ``slice_s`` for ``rounds`` rounds (the first
    path rotating from round to round). Returns the rows and the equality check."""
    typed_requests = infer_requests(images, model)
    protocol_requests = model_infer_requests(images, model)
    async with grpc.aio.insecure_channel(address) as channel:
        typed_stub = inference_pb2_grpc.InferenceMethodsStub(channel)

        async def typed_load(c: int, seconds: float, budget: int) -> LoadResult:
            async def call(i: int) -> None:
                await typed_stub.Infer(typed_requests[i % len(typed_requests)], timeout=timeout_s)

            return await closed_loop(
                plain_caller(call), concurrency=c, duration_s=seconds, max_requests=budget
            )

        async def protocol_load(c: int, seconds: float, budget: int) -> LoadResult:
            return await model_infer_load(
                channel,
                protocol_requests,
                concurrency=c,
                duration_s=seconds,
                max_requests=budget,
                timeout_s=timeout_s,
            )

        check = await check_equal(channel, model, images, timeout_s)
        drivers = {TYPED: typed_load, PROTOCOL: protocol_load}
        for drive in drivers.values():
            await drive(4, warmup_s, 64)
        sides = {(name, c): _Side() for name in drivers for c in CONCURRENCY}
        names = list(drivers)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for c in CONCURRENCY:
                for name in order:
                    server0, self0 = cpu_seconds(server_pid), self_cpu_seconds()
                    result = await drivers[name](c, slice_s, max_requests)
                    side = sides[name, c]
                    side.result.add(result)
                    side.server_cpu_s += cpu_seconds(server_pid) - server0
                    side.client_cpu_s += self_cpu_seconds() - self0
                    on_slice(f"{name} c{c} (round {r + 1}/{rounds})")
    rows = []
    for (name, c), side in sides.items():
        out = row(
            side.result,
            f"{_SERVER_NAME} [{name}]",
            Section.OIP,
            model,
            "Infer" if name == TYPED else "ModelInfer",
            c,
            variant=name,
            rounds=rounds,
            slice_s=slice_s,
        )
        out["cpu_ms_per_image"] = side.per_image_ms(side.server_cpu_s)
        out["client_cpu_ms_per_image"] = side.per_image_ms(side.client_cpu_s)
        rows.append(out)
    return rows, check
