"""Tiled inference on a real server over a real socket with the shipped model: more small
defects found in a large frame with tiles than without, the response says how the frame was
tiled, ModelInfo shows the defaults, and bad tiling requests get INVALID_ARGUMENT naming what to
change while the server keeps serving."""

from __future__ import annotations

import functools
from typing import Any

import grpc
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from bench.tiling import jpeg, matches, small_defect_frame
from tests.helpers import StartServer
from tests.server.test_limits import assert_still_serves, expect_error, serving
from visionrpc.synthetic import Sample
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.wire.converters import InferResponseConverter

SEED = 7000  # frame 0 of this stream at 4 MP: 4 small defects (checked by the test)


@functools.cache
def sample(megapixels: float) -> Sample:
    return small_defect_frame(SEED, 0, megapixels)


@functools.cache
def encoded(megapixels: float) -> bytes:
    return jpeg(sample(megapixels))


def tiled(mode: pb.TilingMode.ValueType, **tiling: Any) -> pb.Tiling:
    return pb.Tiling(mode=mode, **tiling)


async def test_tiles_find_small_defects_the_letterboxed_frame_misses(
    start_server: StartServer,
) -> None:
    frame = sample(4)
    assert len(frame.defects) == 4
    async with serving(start_server) as (stub, _):
        found = {}
        for mode in (pb.TILING_MODE_OFF, pb.TILING_MODE_ON):
            reply = await stub.Infer(
                pb.InferRequest(image_bytes=encoded(4), tiling=tiled(mode), return_masks=True),
                timeout=120,
            )
            result = InferResponseConverter.to_types(reply)
            found[mode] = matches(result, frame)
            assert (result.image_width, result.image_height) == (frame.width, frame.height)
            if mode == pb.TILING_MODE_ON:
                assert result.tiling is not None
                assert (result.tiling.columns, result.tiling.rows) == (9, 7)
                assert result.tiling.tiles == 63 and result.tiling.thumbnail
            else:
                assert not reply.HasField("tiling")
            for d in result.detections:  # masks in original pixels, inside their boxes
                assert d.mask is not None
                pixels = coco_mask.decode(
                    {"size": list(d.mask.rle_size), "counts": d.mask.rle_counts}
                )
                assert pixels.shape == (frame.height, frame.width)
                ys, xs = np.nonzero(pixels)
                assert d.mask_area_px is not None and len(xs) == d.mask_area_px > 0
                assert d.box.x_min - 1 <= xs.min() and xs.max() <= d.box.x_max + 1
                assert d.box.y_min - 1 <= ys.min() and ys.max() <= d.box.y_max + 1
    assert found[pb.TILING_MODE_ON] >= 3 > found[pb.TILING_MODE_OFF]


async def test_model_info_shows_the_tiling_defaults(start_server: StartServer) -> None:
    async with serving(start_server) as (stub, _):
        info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    t = info.default_tiling
    assert (t.mode, t.tile_size, t.thumbnail) == (pb.TILING_MODE_OFF, 0, True)
    assert t.overlap == pytest.approx(0.2) and t.auto_factor == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("tiling", "words"),
    [
        (tiled(pb.TILING_MODE_ON, overlap=0.8), ("tiling.overlap is 0.8", "[0, 0.5]")),
        (tiled(pb.TILING_MODE_ON, tile_size=4), ("tiling.tile_size is 4", "at least 32")),
        (pb.Tiling(mode=9), ("unknown tiling.mode 9", "OFF, ON or AUTO")),  # type: ignore[arg-type]
        (
            tiled(pb.TILING_MODE_ON, tile_size=32, overlap=0.5),
            ("tiles, more than the server's limit of 512", "limits.max_tiles"),
        ),
    ],
)
async def test_bad_tiling_is_invalid_argument(
    start_server: StartServer, tiling: pb.Tiling, words: tuple[str, ...]
) -> None:
    frame = encoded(1)
    async with serving(start_server) as (stub, _):
        await expect_error(
            stub, grpc.StatusCode.INVALID_ARGUMENT, *words, image_bytes=frame, tiling=tiling
        )


async def test_the_tile_limit_is_a_setting(start_server: StartServer) -> None:
    frame = encoded(4)
    async with serving(start_server, limits={"max_tiles": 20}) as (stub, _):
        await expect_error(
            stub,
            grpc.StatusCode.INVALID_ARGUMENT,
            "= 63 tiles",
            "limit of 20",
            "VISIONRPC_LIMITS__MAX_TILES",
            image_bytes=frame,
            tiling=tiled(pb.TILING_MODE_ON),
        )
        await assert_still_serves(stub)


async def test_a_tiled_frame_is_measured_and_judged_like_one_image(
    start_server: StartServer,
) -> None:
    """Measurements and verdicts apply to the merged detections of a tiled frame."""
    rules = pb.RuleSet(
        rules=[
            pb.Rule(name="any defect", metric=pb.RULE_METRIC_COUNT, min=1, verdict=pb.VERDICT_FAIL)
        ]
    )
    async with serving(start_server) as (stub, _):
        reply = await stub.Infer(
            pb.InferRequest(
                image_bytes=encoded(4),
                tiling=tiled(pb.TILING_MODE_ON),
                measure=True,
                pixels_per_mm=10.0,
                rules=rules,
            ),
            timeout=120,
        )
    assert reply.tiling.tiles == 63 and len(reply.detections) >= 3
    assert reply.verdict.verdict == pb.VERDICT_FAIL
    (hit,) = reply.verdict.hits
    assert (hit.rule, hit.value) == ("any defect", len(reply.detections))
    assert reply.pixels_per_mm == 10.0
    for d in reply.detections:
        m = d.measurement
        assert m.from_mask and m.area_px == d.mask_area_px > 0
        assert m.area_mm2 == pytest.approx(m.area_px / 100.0)
        assert m.HasField("length_px") and m.length_px > 0
