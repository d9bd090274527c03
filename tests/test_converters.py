"""Proto ↔ domain converters: every field survives a round trip, both ways."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from visionrpc import types
from visionrpc.errors import InvalidInputError
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.wire.converters import (
    InferRequestConverter,
    InferResponseConverter,
    MaskConverter,
    ModelInfoConverter,
)

OPTIONS = types.InferenceOptions(
    model="beta",
    confidence_threshold=0.5,
    iou_threshold=0.25,
    max_detections=7,
    classes=("spot", "crack"),
    return_masks=True,
    mask_format=types.MaskFormat.POLYGON,
    agnostic_nms=True,
    measure=True,
    pixels_per_mm=4.0,
    rules=types.RuleSet(
        rules=(
            types.Rule("long", types.Metric.LENGTH_MM, types.Verdict.FAIL, "crack", 1.5, 2.5, "z"),
        ),
        zones=(("z", ((1.0, 2.0), (4.0, 2.0), (4.0, 6.0))),),
        ignore_zones=(((1.5, 1.0), (2.0, 1.0), (2.0, 2.5)),),
    ),
    tiling=types.TilingOptions(types.TilingMode.AUTO, 640, 0.25, True, 3.0),
    top_k=3,
)
TILING = pb.Tiling(
    mode=pb.TILING_MODE_AUTO, tile_size=640, overlap=0.25, thumbnail=True, auto_factor=3.0
)


ZONE = ((1.0, 2.0), (4.0, 2.0), (4.0, 6.0))
IGNORED = ((1.5, 1.0), (2.0, 1.0), (2.0, 2.5))


def _polygons_equal(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def assert_every_field_set(value: object, path: str = "value") -> None:
    """Fail if any dataclass field (recursively) holds its type's empty value.

    A round trip of such a value covers every field: a field added later and not carried by the
    converters fails the test instead of passing unnoticed as a default on both sides. A mask uses
    the fields of its own format only; the mask tests cover each format.
    """
    if isinstance(value, types.EncodedMask):
        assert value.area_px, f"{path}.area_px unset"
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            assert_every_field_set(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, tuple | list):
        assert len(value) > 0, f"{path} is empty"
        for k, item in enumerate(value):
            if not isinstance(item, np.ndarray):
                assert_every_field_set(item, f"{path}[{k}]")
    else:
        assert value is not None and value != "" and value != 0 and value != b"", f"{path} unset"


# -- InferRequest ----------------------------------------------------------------------------------


def test_request_with_encoded_bytes_carries_every_option() -> None:
    assert_every_field_set(OPTIONS)
    request = pb.InferRequest(
        image_bytes=b"\xff\xd8\xff...",
        model="beta",
        confidence_threshold=0.5,
        iou_threshold=0.25,
        max_detections=7,
        classes=["spot", "crack"],
        return_masks=True,
        mask_format=pb.MASK_FORMAT_POLYGON,
        agnostic_nms=True,
        request_id="r1",
        tiling=TILING,
        measure=True,
        pixels_per_mm=4.0,
        rules=pb.RuleSet(
            rules=[
                pb.Rule(
                    name="long",
                    class_name="crack",
                    metric=pb.RULE_METRIC_LENGTH_MM,
                    min=1.5,
                    max=2.5,
                    verdict=pb.VERDICT_FAIL,
                    zone="z",
                )
            ],
            zones=[pb.Zone(name="z", points=[pb.Point(x=x, y=y) for x, y in ZONE])],
            ignore_zones=[pb.Polygon(points=[pb.Point(x=x, y=y) for x, y in IGNORED])],
        ),
        top_k=3,
    )
    wire = pb.InferRequest.FromString(request.SerializeToString())
    expected = types.InferenceInput(
        options=OPTIONS, image_bytes=b"\xff\xd8\xff...", request_id="r1"
    )
    assert InferRequestConverter.to_types(wire) == expected


@pytest.mark.parametrize("fmt", [*types.PixelFormat, None])
def test_request_with_raw_frame(fmt: types.PixelFormat | None) -> None:
    number = pb.PixelFormat.Value(f"PIXEL_FORMAT_{fmt.name}" if fmt else "PIXEL_FORMAT_UNSPECIFIED")
    raw = pb.RawImage(width=3, height=2, channels=3, pixel_format=number, data=bytes(range(18)))
    item = InferRequestConverter.to_types(pb.InferRequest(raw=raw, request_id="r2"))
    expected = types.RawImage(
        width=3, height=2, channels=3, pixel_format=fmt, data=bytes(range(18))
    )
    assert item == types.InferenceInput(
        options=types.InferenceOptions(), raw=expected, request_id="r2"
    )


def test_request_defaults_map_to_none_and_no_image_stays_none() -> None:
    item = InferRequestConverter.to_types(pb.InferRequest())
    assert item.options == types.InferenceOptions()  # 0 / empty mean "the model's default"
    assert item.options.mask_format is types.MaskFormat.RLE
    assert item.options.agnostic_nms is None  # unset, not False: the model decides
    assert item.image_bytes is None and item.raw is None
    empty = InferRequestConverter.to_types(pb.InferRequest(image_bytes=b""))
    assert empty.image_bytes == b"" and empty.raw is None
    off = InferRequestConverter.to_types(pb.InferRequest(agnostic_nms=False))
    assert off.options.agnostic_nms is False
    # overlap 0 and thumbnail off are choices, not "the model's default"
    zero = pb.InferRequest(tiling=pb.Tiling(overlap=0.0, thumbnail=False))
    tiling = InferRequestConverter.to_types(zero).options.tiling
    assert (tiling.mode, tiling.overlap, tiling.thumbnail) == (None, 0.0, False)


def test_request_with_unknown_enums_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="unknown mask_format 9"):
        InferRequestConverter.to_types(pb.InferRequest(mask_format=9))  # type: ignore[arg-type]
    request = pb.InferRequest(raw=pb.RawImage(pixel_format=77))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="unknown pixel_format 77"):
        InferRequestConverter.to_types(request)
    request = pb.InferRequest(tiling=pb.Tiling(mode=5))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"unknown tiling\.mode 5"):
        InferRequestConverter.to_types(request)


# -- masks -----------------------------------------------------------------------------------------

MASKS = [
    types.EncodedMask(
        format=types.MaskFormat.RLE, area_px=12, rle_counts="52203", rle_size=(10, 20)
    ),
    types.EncodedMask(
        format=types.MaskFormat.PNG, area_px=5, png=b"\x89PNG\r\n\x1a\nfake", png_origin=(3, 4)
    ),
    types.EncodedMask(
        format=types.MaskFormat.POLYGON,
        area_px=40,
        polygons=(
            np.array([[1, 2], [5.5, 2], [5.5, 9.25]], np.float32),
            np.array([[10, 10], [12, 10], [12, 12], [10, 12]], np.float32),
        ),
    ),
]


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: m.format.value)
def test_mask_round_trips(mask: types.EncodedMask) -> None:
    proto = MaskConverter.from_types(mask)
    assert proto.WhichOneof("encoding") == mask.format.value
    back = MaskConverter.to_types(pb.Mask.FromString(proto.SerializeToString()))
    assert back is not None
    assert _polygons_equal(back.polygons, mask.polygons)
    assert dataclasses.replace(back, polygons=()) == dataclasses.replace(mask, polygons=())


def test_mask_without_encoding_is_none() -> None:
    assert MaskConverter.to_types(pb.Mask(area_px=3)) is None


# -- InferResponse ---------------------------------------------------------------------------------


def _result() -> types.InferenceResult:
    detections = (
        types.Detection(
            box=types.BoxXYXY(1.5, 2.5, 30.0, 40.25),
            score=0.875,
            class_id=1,
            class_name="spot",
            mask=MASKS[0],
            mask_area_px=12,
            measurement=types.Measurement(12.0, 8.5, 1.5, 0.75, 2.125, 0.375, from_mask=True),
            # no model gives all of these at once; the round trip covers every field
            keypoints=(types.Keypoint(2.5, 3.5, 0.75),),
            rotated_box=types.RotatedBox(
                4.0, 5.0, 6.0, 2.0, 22.5, ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0))
            ),
        ),
        # a segmentation result without masks requested: the area still travels
        types.Detection(
            box=types.BoxXYXY(0.5, 1.0, 8.0, 4.0),
            score=0.5,
            class_id=2,
            class_name="crack",
            mask_area_px=9,
        ),
    )
    return types.InferenceResult(
        model="defects",
        model_version="3",
        image_width=20,
        image_height=10,
        detections=detections,
        defects=(
            types.DefectSummary("crack", 1, 0.5, 32.0, 0.16),
            types.DefectSummary("spot", 1, 0.875, 12.0, 0.06, 0.75, 8.5, 2.125),
        ),
        timings=types.Timings(1.0, 2.0, 3.0, 4.0, 0.5, 10.5),
        request_id="frame-7",
        tiling=types.TilingReport(12, 4, 3, 320, 320, 64, 64, True),
        verdict=types.InspectionVerdict(
            types.Verdict.FAIL,
            (
                types.RuleHit(
                    "long",
                    types.Verdict.FAIL,
                    types.Metric.LENGTH_MM,
                    2.125,
                    "spot",
                    1.5,
                    2.5,
                    1,
                    "z",
                ),
                types.RuleHit("many", types.Verdict.REVIEW, types.Metric.COUNT, 2.0, "", 2.0),
            ),
        ),
        pixels_per_mm=4.0,
        classifications=(types.Classification(1, "spot", 0.75),),
    )


def test_response_round_trips_every_field() -> None:
    result = _result()
    assert result.verdict is not None
    first_hit = dataclasses.replace(result.verdict, hits=result.verdict.hits[:1])
    assert_every_field_set(
        dataclasses.replace(
            result, detections=result.detections[:1], defects=result.defects[1:], verdict=first_hit
        )
    )
    assert result.detections[1].mask is None and result.detections[1].mask_area_px == 9
    response = InferResponseConverter.from_types(result)
    assert not response.HasField("error")
    assert response.detections[0].HasField("mask") and not response.detections[1].HasField("mask")
    back = InferResponseConverter.to_types(
        pb.InferResponse.FromString(response.SerializeToString())
    )
    # float32 on the wire: the values above are exact in float32, area_fraction is a double
    assert back == result
    untiled = InferResponseConverter.from_types(dataclasses.replace(result, tiling=None))
    assert not untiled.HasField("tiling")
    assert InferResponseConverter.to_types(untiled).tiling is None


def test_response_polygon_masks_round_trip() -> None:
    result = _result()
    det = dataclasses.replace(result.detections[0], mask=MASKS[2], mask_area_px=40)
    result = dataclasses.replace(result, detections=(det,))
    back = InferResponseConverter.to_types(InferResponseConverter.from_types(result))
    assert back.detections[0].mask is not None
    assert _polygons_equal(back.detections[0].mask.polygons, MASKS[2].polygons)
    assert back.detections[0].mask_area_px == 40


# -- ModelInfo -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "layout"),
    [(types.Task.SEGMENT, types.Layout.YOLOV8), (types.Task.DETECT, types.Layout.END2END)],
)
def test_model_info_round_trips(task: types.Task, layout: types.Layout) -> None:
    info = types.ModelDescription(
        name="defects",
        version="interim",
        display_name="Surface defects",
        task=task,
        input_width=320,
        input_height=256,
        class_names=("scratch", "spot", "crack"),
        execution_provider="CPUExecutionProvider",
        default_confidence_threshold=0.6,  # not exact in float32: comes back as 0.6
        default_iou_threshold=0.7,
        default_max_detections=100,
        layout=layout,
        dynamic_batch=True,
        max_batch_size=8,
        default_agnostic_nms=True,
        state=types.ModelState.READY,
        state_reason="reload failed, version interim still serving: cannot load model.onnx",
        default_tiling=types.TilingOptions(types.TilingMode.ON, 640, 0.25, True, 3.0),
        keypoint_shape=(17, 3),
    )
    assert_every_field_set(info)
    proto = ModelInfoConverter.from_types(info)
    assert proto.task == (pb.TASK_SEGMENT if task is types.Task.SEGMENT else pb.TASK_DETECT)
    assert proto.layout == layout.value
    assert ModelInfoConverter.to_types(pb.ModelInfo.FromString(proto.SerializeToString())) == info


def test_model_states_round_trip_and_a_stateless_server_means_ready() -> None:
    for state in types.ModelState:
        status = types.ModelStatus("defects", state, "3", "why")
        back = ModelInfoConverter.to_types(ModelInfoConverter.from_status(status))
        assert (back.name, back.version, back.state, back.state_reason) == (
            "defects",
            "3",
            state,
            "why",
        )
    # a server from before model control sends no state: what it lists serves
    assert ModelInfoConverter.to_types(pb.ModelInfo(name="m")).state is types.ModelState.READY


# -- every Ultralytics task (issue 13 item 4) ------------------------------------------------


def test_keypoints_rotated_boxes_and_classifications_round_trip() -> None:
    rotated = types.RotatedBox(
        10.5, 20.25, 8.0, 4.0, 30.0, ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0))
    )
    result = types.InferenceResult(
        model="m",
        model_version="1",
        image_width=64,
        image_height=48,
        detections=(
            types.Detection(
                types.BoxXYXY(1, 2, 3, 4),
                0.5,
                1,
                "hand",
                keypoints=(types.Keypoint(1.5, 2.5, 0.75), types.Keypoint(3.0, 4.0, 1.0)),
            ),
            types.Detection(types.BoxXYXY(1, 2, 3, 4), 0.25, 0, "blade", rotated_box=rotated),
        ),
        defects=(),
        classifications=(types.Classification(2, "crack", 0.5),),
    )
    back = InferResponseConverter.to_types(InferResponseConverter.from_types(result))
    assert back.detections == result.detections
    assert back.classifications == result.classifications
    assert back.detections[0].rotated_box is None and back.detections[1].keypoints == ()


def test_new_tasks_and_top_k_cross_the_wire() -> None:
    base = types.ModelDescription(
        name="m",
        version="1",
        display_name="m",
        task=types.Task.DETECT,
        input_width=64,
        input_height=64,
        class_names=("a",),
        execution_provider="CPUExecutionProvider",
        default_confidence_threshold=0.25,
        default_iou_threshold=0.5,
        default_max_detections=10,
        layout=types.Layout.CLASSIFY,
        dynamic_batch=True,
        max_batch_size=1,
    )
    for task in types.Task:
        info = dataclasses.replace(base, task=task, keypoint_shape=(17, 3))
        back = ModelInfoConverter.to_types(ModelInfoConverter.from_types(info))
        assert back == info
    request = InferRequestConverter.to_types(pb.InferRequest(image_bytes=b"x", top_k=3))
    assert request.options.top_k == 3
    assert InferRequestConverter.to_types(pb.InferRequest(image_bytes=b"x")).options.top_k is None
