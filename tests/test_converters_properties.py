"""Property-based tests (Hypothesis) of the proto converters and of the status map.

Round trips with generated values: unicode names, empty and long lists, every float32 value
including NaN and ±inf, masks of each format, raw frames of each channel count; then messages
built field by field as a peer might send them (unknown enum values, unknown layouts, odd sizes),
which the converters must read without crashing; then every domain error through the status map,
whose messages and details must stay bounded whatever the error holds.

Floats: proto ``float`` fields are float32. A value travels as the nearest float32 (beyond its
range: ±inf); NaN and ±inf travel as they are. ModelInfo thresholds come back as the shortest
decimal of that float32 (``converters.f32``). The runtime, not the converter, refuses non-finite
thresholds.

150 examples per property in the suite; ``VISIONRPC_HYPOTHESIS_PROFILE=visionrpc-long`` runs 5000.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from visionrpc import errors, types
from visionrpc.client.errors import StatusDetails
from visionrpc.client.requests import infer_request
from visionrpc.errors import InvalidInputError, ResourceLimitError, shorten
from visionrpc.server.status import (
    INTERNAL_MESSAGE,
    MAX_MESSAGE_BYTES,
    MAX_RETRY_AFTER_S,
    STATUS_BY_ERROR,
    cap_message,
    rich_status,
    status_for,
)
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.wire.codes import code_value
from visionrpc.wire.converters import (
    InferRequestConverter,
    InferResponseConverter,
    MaskConverter,
    ModelInfoConverter,
    f32,
)

settings.register_profile(
    "visionrpc", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150
)
settings.register_profile("visionrpc-long", settings.get_profile("visionrpc"), max_examples=5000)
settings.load_profile(os.environ.get("VISIONRPC_HYPOTHESIS_PROFILE", "visionrpc"))

UINT32 = st.integers(0, 2**32 - 1)
UINT64 = st.integers(0, 2**64 - 1)
TEXT = st.text(max_size=40) | st.text(max_size=3000)
FLOAT32 = st.floats(width=32)  # every float32, NaN and ±inf included
ANY_FLOAT = st.floats()  # doubles, NaN and ±inf included


def as_f32(value: float) -> float:
    """What a proto float field holds after ``value`` was written to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow to inf is the point
        return float(np.float32(value))


def same(a: Any, b: Any, path: str = "value") -> None:
    """Equality that treats NaN as equal to NaN, recursively through dataclasses and arrays."""
    if isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == b, f"{path}: {a!r} != {b!r}"
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert np.array_equal(a, b, equal_nan=True), f"{path}: {a!r} != {b!r}"
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, tuple | list):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)} items"
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{k}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def wire(message: Any) -> Any:
    """``message`` after a trip over the wire (serialized, parsed back)."""
    return type(message).FromString(message.SerializeToString())


# -- requests: client's infer_request → wire → server's InferRequestConverter --------------------


@given(
    image=st.binary(max_size=64),
    model=TEXT,
    confidence=ANY_FLOAT,
    iou=ANY_FLOAT,
    max_detections=UINT32,
    classes=st.lists(st.text(max_size=30), max_size=50),
    return_masks=st.booleans(),
    mask_format=st.sampled_from(types.MaskFormat),
    agnostic_nms=st.none() | st.booleans(),
    request_id=TEXT,
)
def test_request_options_round_trip(
    image: bytes,
    model: str,
    confidence: float,
    iou: float,
    max_detections: int,
    classes: list[str],
    return_masks: bool,
    mask_format: types.MaskFormat,
    agnostic_nms: bool | None,
    request_id: str,
) -> None:
    request = infer_request(
        image,
        model=model,
        confidence_threshold=confidence,
        iou_threshold=iou,
        max_detections=max_detections,
        classes=classes,
        return_masks=return_masks,
        mask_format=mask_format,
        agnostic_nms=agnostic_nms,
        request_id=request_id,
    )
    item = InferRequestConverter.to_types(wire(request))
    expected = types.InferenceOptions(
        model=model,
        # 0 means "the model's default"; a value too small for float32 becomes 0 as well
        confidence_threshold=as_f32(confidence) or None,
        iou_threshold=as_f32(iou) or None,
        max_detections=max_detections or None,
        classes=tuple(classes),
        return_masks=return_masks,
        mask_format=mask_format,
        agnostic_nms=agnostic_nms,
    )
    same(item, types.InferenceInput(options=expected, image_bytes=image, request_id=request_id))


@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([0, 1, 3, 4])).map(
            lambda s: s[:2] if s[2] == 0 else s
        ),
    )
)
def test_raw_frames_round_trip(array: np.ndarray) -> None:
    item = InferRequestConverter.to_types(wire(infer_request(array)))
    assert item.raw is not None and item.image_bytes is None
    channels = 1 if array.ndim == 2 else array.shape[2]
    assert (item.raw.height, item.raw.width, item.raw.channels) == (*array.shape[:2], channels)
    expected_format = {
        1: types.PixelFormat.GRAY,
        3: types.PixelFormat.RGB,
        4: types.PixelFormat.RGBA,
    }[channels]
    assert item.raw.pixel_format is expected_format
    assert item.raw.data == array.tobytes()


def test_ten_thousand_classes_and_a_megabyte_name_round_trip() -> None:
    classes = [f"クラス-{i}" for i in range(10_000)]
    name = "名" * 1_000_000
    item = InferRequestConverter.to_types(wire(infer_request(b"x", model=name, classes=classes)))
    assert item.options.classes == tuple(classes) and item.options.model == name


ENUM_VALUES = st.integers(-(2**31), 2**31 - 1)


@given(
    mask_format=ENUM_VALUES,
    pixel_format=ENUM_VALUES,
    raw=st.booleans(),
    width=UINT32,
    channels=UINT32,
)
def test_any_request_a_peer_sends_is_read_or_refused_as_invalid_input(
    mask_format: int, pixel_format: int, raw: bool, width: int, channels: int
) -> None:
    """Open proto3 enums carry numbers this server has no name for: refused, naming the field."""
    request = pb.InferRequest(mask_format=mask_format)  # type: ignore[arg-type]
    if raw:
        request.raw.CopyFrom(
            pb.RawImage(width=width, channels=channels, pixel_format=pixel_format)  # type: ignore[arg-type]
        )
    try:
        item = InferRequestConverter.to_types(wire(request))
    except InvalidInputError as exc:
        assert exc.field in ("mask_format", "raw.pixel_format")
        assert str(exc).startswith(f"unknown {exc.field.removeprefix('raw.')} ")
    else:
        assert (item.raw is not None) == raw


# -- responses: server's InferResponseConverter → wire → client's --------------------------------

POLYGON = hnp.arrays(np.float32, st.tuples(st.integers(0, 12), st.just(2)), elements=FLOAT32)

MASKS = st.one_of(
    st.builds(
        types.EncodedMask,
        format=st.just(types.MaskFormat.RLE),
        area_px=UINT64,
        rle_counts=st.text(max_size=200),
        rle_size=st.tuples(UINT32, UINT32),
    ),
    st.builds(
        types.EncodedMask,
        format=st.just(types.MaskFormat.PNG),
        area_px=UINT64,
        png=st.binary(max_size=200),
        png_origin=st.tuples(UINT32, UINT32),
    ),
    st.builds(
        types.EncodedMask,
        format=st.just(types.MaskFormat.POLYGON),
        area_px=UINT64,
        polygons=st.lists(POLYGON, max_size=4).map(tuple),
    ),
)

DETECTIONS = st.builds(
    types.Detection,
    box=st.builds(types.BoxXYXY, FLOAT32, FLOAT32, FLOAT32, FLOAT32),
    score=FLOAT32,
    class_id=UINT32,
    class_name=TEXT,
    mask=st.none() | MASKS,
    mask_area_px=st.none() | UINT64,
)

RESULTS = st.builds(
    types.InferenceResult,
    model=TEXT,
    model_version=TEXT,
    image_width=UINT32,
    image_height=UINT32,
    detections=st.lists(DETECTIONS, max_size=20).map(tuple),
    defects=st.lists(
        st.builds(types.DefectSummary, TEXT, UINT32, FLOAT32, ANY_FLOAT, ANY_FLOAT), max_size=5
    ).map(tuple),
    timings=st.builds(types.Timings, *[ANY_FLOAT] * 6),
    request_id=TEXT,
)


@given(MASKS)
def test_masks_of_each_format_round_trip(mask: types.EncodedMask) -> None:
    proto = MaskConverter.from_types(mask)
    assert proto.WhichOneof("encoding") == mask.format.value
    same(MaskConverter.to_types(wire(proto)), mask)


@given(RESULTS)
def test_results_round_trip(result: types.InferenceResult) -> None:
    response = InferResponseConverter.from_types(result)
    same(InferResponseConverter.to_types(wire(response)), result)


def test_a_response_with_thousands_of_detections_round_trips() -> None:
    detection = types.Detection(types.BoxXYXY(1.0, 2.0, 3.0, 4.0), 0.5, 7, "spot", None, 12)
    result = types.InferenceResult("m", "1", 10, 10, (detection,) * 5000, ())
    same(InferResponseConverter.to_types(wire(InferResponseConverter.from_types(result))), result)


def test_doubles_beyond_float32_arrive_as_infinity() -> None:
    box = types.BoxXYXY(1e300, -1e300, 1e-50, 0.1)
    detection = types.Detection(box, 2.0**200, 0, "x")
    back = InferResponseConverter.to_types(
        wire(
            InferResponseConverter.from_types(types.InferenceResult("", "", 0, 0, (detection,), ()))
        )
    )
    got = back.detections[0]
    assert (got.box.x_min, got.box.y_min, got.box.x_max, got.score) == (
        math.inf,
        -math.inf,
        0.0,
        math.inf,
    )
    assert got.box.y_max == as_f32(0.1)


@given(
    size=st.lists(UINT32, max_size=4),
    counts=st.text(max_size=20),
    which=st.sampled_from(["rle", "png", "polygon", None]),
    points=st.lists(st.tuples(FLOAT32, FLOAT32), max_size=5),
)
def test_any_mask_a_peer_sends_is_read(
    size: list[int], counts: str, which: str | None, points: list[tuple[float, float]]
) -> None:
    mask = pb.Mask(area_px=3)
    if which == "rle":
        mask.rle.size.extend(size)
        mask.rle.counts = counts
    elif which == "png":
        mask.png.SetInParent()
    elif which == "polygon":
        mask.polygon.polygons.add().points.extend(pb.Point(x=x, y=y) for x, y in points)
    back = MaskConverter.to_types(wire(mask))
    if which is None:
        assert back is None
    else:
        assert back is not None and back.format.value == which
        if which == "rle":
            assert back.rle_size == (tuple(size) if len(size) == 2 else (0, 0))


# -- ModelInfo -------------------------------------------------------------------------------------

DESCRIPTIONS = st.builds(
    types.ModelDescription,
    name=TEXT,
    version=TEXT,
    display_name=TEXT,
    task=st.sampled_from(types.Task),
    input_width=UINT32,
    input_height=UINT32,
    class_names=st.lists(st.text(max_size=30), max_size=100).map(tuple),
    execution_provider=TEXT,
    default_confidence_threshold=ANY_FLOAT,
    default_iou_threshold=ANY_FLOAT,
    default_max_detections=UINT32,
    layout=st.sampled_from(types.Layout),
    dynamic_batch=st.booleans(),
    max_batch_size=UINT32,
    default_agnostic_nms=st.booleans(),
)


@given(DESCRIPTIONS)
def test_model_info_round_trips(info: types.ModelDescription) -> None:
    back = ModelInfoConverter.to_types(wire(ModelInfoConverter.from_types(info)))
    for name in ("default_confidence_threshold", "default_iou_threshold"):
        sent, got = getattr(info, name), getattr(back, name)
        same(as_f32(got), as_f32(sent), name)  # the same float32 ...
        same(got, f32(as_f32(sent)), name)  # ... shown as its shortest decimal
    same(
        dataclasses.replace(back, default_confidence_threshold=0.0, default_iou_threshold=0.0),
        dataclasses.replace(info, default_confidence_threshold=0.0, default_iou_threshold=0.0),
    )


@given(task=ENUM_VALUES, layout=TEXT)
def test_model_info_from_a_newer_server_is_read(task: int, layout: str) -> None:
    """A task number or layout name this client does not know reads as the default, no error."""
    info = ModelInfoConverter.to_types(wire(pb.ModelInfo(task=task, layout=layout)))  # type: ignore[arg-type]
    known_layouts = {item.value for item in types.Layout}
    assert info.layout == (types.Layout(layout) if layout in known_layouts else types.Layout.YOLOV8)
    assert info.task in (types.Task.DETECT, types.Task.SEGMENT)


# -- the status map --------------------------------------------------------------------------------

DOMAIN_ERRORS = st.sampled_from(sorted(STATUS_BY_ERROR, key=lambda cls: cls.__name__))
MESSAGES = st.text(max_size=100) | st.text(min_size=1000, max_size=20_000)


def _make(cls: type[BaseException], message: str, field: str | None, retry: float | None) -> Any:
    if cls is InvalidInputError:
        return cls(message, field=field)
    if cls is ResourceLimitError:
        return cls(message, retry_after_s=retry)
    return cls(message)


@given(
    cls=DOMAIN_ERRORS,
    message=MESSAGES,
    field=st.none() | st.text(max_size=500),
    retry=st.none() | ANY_FLOAT,
)
def test_every_domain_error_maps_to_its_code_with_a_bounded_message(
    cls: type[BaseException], message: str, field: str | None, retry: float | None
) -> None:
    exc = _make(cls, message, field, retry)
    code, text = status_for(exc)
    assert code is STATUS_BY_ERROR[cls]
    assert len(text.encode()) <= MAX_MESSAGE_BYTES
    if message and len(message.encode()) <= MAX_MESSAGE_BYTES:
        assert text == message
    elif not message:
        assert text == code.name

    status = wire(rich_status(exc))
    assert (status.code, status.message) == (code_value(code), text)
    details = StatusDetails.from_status(status)
    if cls is InvalidInputError and field:
        [violation] = details.field_violations
        assert violation.field == cap_message(field, 128) and violation.description == text
    else:
        assert details.field_violations == ()
    if cls is ResourceLimitError and retry is not None and math.isfinite(retry):
        expected = min(max(retry, 0.0), MAX_RETRY_AFTER_S)
        assert details.retry_after == pytest.approx(expected, abs=1e-9, rel=1e-9)
    elif cls is ResourceLimitError and retry is not None:
        assert details.retry_after is None  # NaN / inf: no advice rather than a wrong one
    else:
        assert details.retry_after is None
    assert status.ByteSize() <= 3 * MAX_MESSAGE_BYTES


@given(
    cls=DOMAIN_ERRORS.map(lambda base: type(f"Sub{base.__name__}", (base,), {})),
    message=st.text(max_size=50),
)
def test_subclasses_map_like_their_base(cls: type[BaseException], message: str) -> None:
    base = next(c for c in cls.__mro__ if c in STATUS_BY_ERROR)
    assert status_for(cls(message))[0] is STATUS_BY_ERROR[base]


@given(st.sampled_from([KeyError, ValueError, RuntimeError, OSError, AssertionError]), TEXT)
def test_other_errors_are_internal_and_say_nothing(cls: type[Exception], message: str) -> None:
    status = rich_status(cls(message))
    assert (status.code, status.message) == (code_value(grpc.StatusCode.INTERNAL), INTERNAL_MESSAGE)
    assert not status.details


@given(message=st.text(max_size=5000), limit=st.integers(1, 2000))
def test_cap_message_keeps_any_text_within_its_limit(message: str, limit: int) -> None:
    capped = cap_message(message, limit)
    assert len(capped.encode()) <= limit
    if len(message.encode()) <= limit:
        assert capped == message
    else:
        kept = capped.split("…")[0]
        assert message.startswith(kept)


@given(
    value=st.text(max_size=5000) | st.lists(st.text(max_size=500), max_size=2000),
    limit=st.integers(10, 500),
)
def test_shorten_bounds_what_messages_echo(value: str | list[str], limit: int) -> None:
    text = shorten(value, limit)
    assert len(text) <= 2 * limit + 60
    if isinstance(value, str) and len(repr(value)) <= limit:
        assert text == repr(value)


def test_errors_module_names_every_mapped_class() -> None:
    """The status map covers every public domain error (a new one must be added to the map)."""
    public = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.VisionRPCError)
    }
    assert public - set(STATUS_BY_ERROR) == {errors.VisionRPCError}
