from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR: _ClassVar[PixelFormat]
    PIXEL_FORMAT_GRAY: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGBA: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGRA: _ClassVar[PixelFormat]

class MaskFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_FORMAT_UNSPECIFIED: _ClassVar[MaskFormat]
    MASK_FORMAT_RLE: _ClassVar[MaskFormat]
    MASK_FORMAT_PNG: _ClassVar[MaskFormat]
    MASK_FORMAT_POLYGON: _ClassVar[MaskFormat]

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_DETECT: _ClassVar[Task]
    TASK_SEGMENT: _ClassVar[Task]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_RGB: PixelFormat
PIXEL_FORMAT_BGR: PixelFormat
PIXEL_FORMAT_GRAY: PixelFormat
PIXEL_FORMAT_RGBA: PixelFormat
PIXEL_FORMAT_BGRA: PixelFormat
MASK_FORMAT_UNSPECIFIED: MaskFormat
MASK_FORMAT_RLE: MaskFormat
MASK_FORMAT_PNG: MaskFormat
MASK_FORMAT_POLYGON: MaskFormat
TASK_UNSPECIFIED: Task
TASK_DETECT: Task
TASK_SEGMENT: Task

class RawImage(_message.Message):
    __slots__ = ("width", "height", "channels", "pixel_format", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    channels: int
    pixel_format: PixelFormat
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., channels: _Optional[int] = ..., pixel_format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("image_bytes", "raw", "model", "confidence_threshold", "iou_threshold", "max_detections", "classes", "return_masks", "mask_format", "request_id")
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    RETURN_MASKS_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image_bytes: bytes
    raw: RawImage
    model: str
    confidence_threshold: float
    iou_threshold: float
    max_detections: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    return_masks: bool
    mask_format: MaskFormat
    request_id: str
    def __init__(self, image_bytes: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., model: _Optional[str] = ..., confidence_threshold: _Optional[float] = ..., iou_threshold: _Optional[float] = ..., max_detections: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ..., return_masks: _Optional[bool] = ..., mask_format: _Optional[_Union[MaskFormat, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Polygon(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class CocoRle(_message.Message):
    __slots__ = ("size", "counts")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    counts: str
    def __init__(self, size: _Optional[_Iterable[int]] = ..., counts: _Optional[str] = ...) -> None: ...

class PngMask(_message.Message):
    __slots__ = ("x", "y", "data")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    data: bytes
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PolygonMask(_message.Message):
    __slots__ = ("polygons",)
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    def __init__(self, polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("rle", "png", "polygon", "area_px")
    RLE_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    POLYGON_FIELD_NUMBER: _ClassVar[int]
    AREA_PX_FIELD_NUMBER: _ClassVar[int]
    rle: CocoRle
    png: PngMask
    polygon: PolygonMask
    area_px: int
    def __init__(self, rle: _Optional[_Union[CocoRle, _Mapping]] = ..., png: _Optional[_Union[PngMask, _Mapping]] = ..., polygon: _Optional[_Union[PolygonMask, _Mapping]] = ..., area_px: _Optional[int] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "score", "class_id", "class_name", "mask")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    box: BoundingBox
    score: float
    class_id: int
    class_name: str
    mask: Mask
    def __init__(self, box: _Optional[_Union[BoundingBox, _Mapping]] = ..., score: _Optional[float] = ..., class_id: _Optional[int] = ..., class_name: _Optional[str] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ...) -> None: ...

class Defect(_message.Message):
    __slots__ = ("class_name", "count", "max_score", "total_area_px", "area_fraction")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AREA_PX_FIELD_NUMBER: _ClassVar[int]
    AREA_FRACTION_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    count: int
    max_score: float
    total_area_px: float
    area_fraction: float
    def __init__(self, class_name: _Optional[str] = ..., count: _Optional[int] = ..., max_score: _Optional[float] = ..., total_area_px: _Optional[float] = ..., area_fraction: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "queue_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    queue_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "model", "model_version", "image_width", "image_height", "detections", "defects", "timings", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    DEFECTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    model_version: str
    image_width: int
    image_height: int
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    defects: _containers.RepeatedCompositeFieldContainer[Defect]
    timings: Timings
    error: _status_pb2.Status
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., defects: _Optional[_Iterable[_Union[Defect, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "display_name", "task", "input_width", "input_height", "class_names", "execution_provider", "default_confidence_threshold", "default_iou_threshold", "default_max_detections", "layout", "dynamic_batch", "max_batch_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CONFIDENCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    display_name: str
    task: Task
    input_width: int
    input_height: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    execution_provider: str
    default_confidence_threshold: float
    default_iou_threshold: float
    default_max_detections: int
    layout: str
    dynamic_batch: bool
    max_batch_size: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., display_name: _Optional[str] = ..., task: _Optional[_Union[Task, str]] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., execution_provider: _Optional[str] = ..., default_confidence_threshold: _Optional[float] = ..., default_iou_threshold: _Optional[float] = ..., default_max_detections: _Optional[int] = ..., layout: _Optional[str] = ..., dynamic_batch: _Optional[bool] = ..., max_batch_size: _Optional[int] = ...) -> None: ...
