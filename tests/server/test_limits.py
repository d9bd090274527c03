"""Bounded work per request and image hygiene, on a real server over a real socket with the
shipped model: a huge cheap PNG is answered or refused with a status that names the setting, an
expired call stops early, and the server keeps serving after each case.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image

from tests.helpers import StartServer, make_settings, wait_until
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc

SMALL = cv2.imencode(".jpg", np.full((48, 64, 3), 120, np.uint8))[1].tobytes()
WIDE_PNG = cv2.imencode(".png", np.zeros((3000, 16384, 3), np.uint8))[1].tobytes()
"""The issue's case: ~145 KB of zeros that decode to 147 MB, under the 50 MP pixel limit."""
GREEDY: dict[str, Any] = {"confidence_threshold": 1e-6, "max_detections": 300}


@asynccontextmanager
async def serving(
    start_server: StartServer, **overrides: Any
) -> AsyncIterator[tuple[inference_pb2_grpc.InferenceMethodsAsyncStub, InferenceServicer]]:
    """A stub of a server with the shipped model (and ``overrides``), and its servicer."""
    servicer = InferenceServicer(make_settings(access_log=False, **overrides))
    running = await start_server([servicer], access_log=False, **overrides)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield inference_pb2_grpc.InferenceMethodsStub(channel), servicer


async def assert_still_serves(stub: inference_pb2_grpc.InferenceMethodsAsyncStub) -> None:
    reply = await stub.Infer(pb.InferRequest(image_bytes=SMALL), timeout=30)
    assert reply.image_width == 64


async def call(
    stub: inference_pb2_grpc.InferenceMethodsAsyncStub, timeout: float = 60, **fields: Any
) -> pb.InferResponse:
    return await stub.Infer(pb.InferRequest(**fields), timeout=timeout)


async def expect_error(
    stub: inference_pb2_grpc.InferenceMethodsAsyncStub,
    code: grpc.StatusCode,
    *words: str,
    **fields: Any,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(stub, **fields)
    assert err.value.code() is code, err.value.details()
    for word in words:
        assert word in (err.value.details() or ""), err.value.details()
    await assert_still_serves(stub)


@pytest.mark.parametrize(
    ("max_detections", "words"),
    [
        pytest.param(
            300,
            (
                "max_detections=300",
                "limits.max_mask_detections",
                "VISIONRPC_LIMITS__MAX_MASK_DETECTIONS",
            ),
            id="many-masks-refused-up-front",
        ),
        pytest.param(
            100,
            ("limits.max_mask_pixels", "VISIONRPC_LIMITS__MAX_MASK_PIXELS"),
            id="masks-over-the-pixel-budget",
        ),
    ],
)
async def test_huge_png_with_masks_is_refused_naming_the_limit(
    start_server: StartServer, max_detections: int, words: tuple[str, ...]
) -> None:
    async with serving(start_server) as (stub, _):
        await expect_error(
            stub,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            *words,
            image_bytes=WIDE_PNG,
            return_masks=True,
            confidence_threshold=1e-6,
            max_detections=max_detections,
        )


async def test_huge_png_without_masks_is_answered_with_estimated_areas(
    start_server: StartServer,
) -> None:
    async with serving(start_server) as (stub, _):
        reply = await call(stub, image_bytes=WIDE_PNG, **GREEDY)
        assert (reply.image_width, reply.image_height) == (16384, 3000)
        assert 0 < len(reply.detections) <= 300
        for det in reply.detections:
            box = det.box
            assert (
                0 <= det.mask_area_px <= (box.x_max - box.x_min + 1) * (box.y_max - box.y_min + 1)
            )
        await assert_still_serves(stub)


async def test_server_time_budget_names_its_setting(start_server: StartServer) -> None:
    # a budget far below one decode of the PNG: the request stops at the next stage boundary
    async with serving(start_server, limits={"max_request_seconds": 0.001}) as (stub, servicer):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(stub, image_bytes=WIDE_PNG, **GREEDY)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.max_request_seconds" in (err.value.details() or "")
        assert "VISIONRPC_LIMITS__MAX_REQUEST_SECONDS" in (err.value.details() or "")
        assert sum(servicer.pipeline.stops.values()) == 1
        assert "before post-processing" not in servicer.pipeline.stops


async def test_expired_call_stops_before_the_model(start_server: StartServer) -> None:
    """The client gives up while the server decodes: the work stops at the next boundary (after
    decode), and the model never runs for it."""
    async with serving(start_server) as (stub, servicer):
        await assert_still_serves(stub)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(stub, timeout=0.05, image_bytes=WIDE_PNG, **GREEDY)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        stops = servicer.pipeline.stops
        await wait_until(lambda: sum(stops.values()) == 1, timeout=30)
        assert set(stops) <= {"before decode", "after decode", "before the model call"}
        await assert_still_serves(stub)


@pytest.mark.parametrize("trailer", [b"", b"\x00" * 100, b"ftypmp42" + bytes(range(256)) * 400])
async def test_jpeg_with_data_after_its_end_marker_is_accepted(
    start_server: StartServer, trailer: bytes
) -> None:
    """Motion Photos append a video after the JPEG's end marker."""
    async with serving(start_server) as (stub, _):
        reply = await call(stub, image_bytes=SMALL + trailer)
        assert (reply.image_width, reply.image_height) == (64, 48)


def _photo() -> bytes:
    rng = np.random.default_rng(3)
    pixels = cv2.GaussianBlur((rng.random((240, 320, 3)) * 255).astype(np.uint8), (9, 9), 3)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


async def test_half_a_jpeg_with_an_end_marker_is_refused(start_server: StartServer) -> None:
    photo = _photo()
    async with serving(start_server) as (stub, _):
        await expect_error(
            stub,
            grpc.StatusCode.INVALID_ARGUMENT,
            "JPEG",
            "corrupt",
            "send the complete file",
            image_bytes=photo[: len(photo) // 2] + b"\xff\xd9",
        )


async def test_float_tiff_is_unsupported_not_corrupt(start_server: StartServer) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 30), np.float32), mode="F").save(buf, "TIFF")
    async with serving(start_server) as (stub, _):
        await expect_error(
            stub,
            grpc.StatusCode.INVALID_ARGUMENT,
            "32-bit floating-point",
            "unsupported",
            "8-bit PNG or JPEG",
            image_bytes=buf.getvalue(),
        )


def test_expired_request_maps_to_deadline_exceeded() -> None:
    from visionrpc.errors import DeadlineExpiredError
    from visionrpc.server.status import status_for

    assert status_for(DeadlineExpiredError("stopped before decode")) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "stopped before decode",
    )
