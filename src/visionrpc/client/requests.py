"""Building an ``InferRequest`` from whatever image a caller holds."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from visionrpc.types import MaskFormat, RuleSet, TilingMode
from visionrpc.v1 import inference_pb2
from visionrpc.wire.converters import RuleSetConverter

ImageLike = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Any
"""A path, encoded bytes (JPEG/PNG/BMP/WebP/TIFF), an RGB/gray/RGBA uint8 array or a PIL image."""

_MASK_FORMATS = {
    MaskFormat.RLE: inference_pb2.MASK_FORMAT_RLE,
    MaskFormat.PNG: inference_pb2.MASK_FORMAT_PNG,
    MaskFormat.POLYGON: inference_pb2.MASK_FORMAT_POLYGON,
}
_TILING_MODES = {
    TilingMode.OFF: inference_pb2.TILING_MODE_OFF,
    TilingMode.ON: inference_pb2.TILING_MODE_ON,
    TilingMode.AUTO: inference_pb2.TILING_MODE_AUTO,
}
_ARRAY_FORMATS = {
    1: inference_pb2.PIXEL_FORMAT_GRAY,
    3: inference_pb2.PIXEL_FORMAT_RGB,
    4: inference_pb2.PIXEL_FORMAT_RGBA,
}


def _array_image(array: np.ndarray) -> inference_pb2.RawImage:
    if array.dtype != np.uint8:
        raise TypeError(f"arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _ARRAY_FORMATS:
        raise TypeError(f"arrays must be HxW, HxWx3 (RGB) or HxWx4 (RGBA), got {array.shape}")
    height, width, channels = array.shape
    return inference_pb2.RawImage(
        width=width,
        height=height,
        channels=channels,
        pixel_format=_ARRAY_FORMATS[channels],
        data=np.ascontiguousarray(array).tobytes(),
    )


def infer_request(
    image: ImageLike,
    *,
    model: str = "",
    confidence_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    classes: Iterable[str] = (),
    return_masks: bool = False,
    mask_format: MaskFormat | str = MaskFormat.RLE,
    agnostic_nms: bool | None = None,
    top_k: int | None = None,
    request_id: str = "",
    tiling: TilingMode | str | None = None,
    tile_size: int = 0,
    tile_overlap: float | None = None,
    tile_thumbnail: bool | None = None,
    measure: bool = False,
    pixels_per_mm: float | None = None,
    rules: RuleSet | None = None,
) -> inference_pb2.InferRequest:
    """Build an ``InferRequest`` from any supported image type (arrays and PIL images go raw).

    ``None`` (and 0 for the thresholds) leave the choice to the model's configuration.
    ``tiling`` ("off", "on", "auto") and the ``tile_*`` options cut a large frame into tiles
    at model resolution (the README's "Tiled inference of large frames").
    ``measure`` asks for each detection's length and width; ``pixels_per_mm`` replaces the model's
    scale; ``rules`` replace the model's rules (an empty RuleSet: no verdict).
    ``top_k`` is for classification models: how many of the best classes to answer with.
    """
    request = inference_pb2.InferRequest(
        model=model,
        confidence_threshold=confidence_threshold or 0.0,
        iou_threshold=iou_threshold or 0.0,
        max_detections=max_detections or 0,
        classes=list(classes),
        return_masks=return_masks,
        mask_format=_MASK_FORMATS[MaskFormat(mask_format)],
        request_id=request_id,
        top_k=top_k or 0,
    )
    if agnostic_nms is not None:
        request.agnostic_nms = agnostic_nms
    if tiling is not None:
        request.tiling.mode = _TILING_MODES[TilingMode(tiling)]
    if tile_size:
        request.tiling.tile_size = tile_size
    if tile_overlap is not None:
        request.tiling.overlap = tile_overlap
    if tile_thumbnail is not None:
        request.tiling.thumbnail = tile_thumbnail
    request.measure = measure
    request.pixels_per_mm = pixels_per_mm or 0.0
    if rules is not None:
        request.rules.CopyFrom(RuleSetConverter.from_types(rules))
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as f:
            request.image_bytes = f.read()
    elif isinstance(image, bytes | bytearray | memoryview):
        request.image_bytes = bytes(image)
    elif isinstance(image, np.ndarray):
        request.raw.CopyFrom(_array_image(image))
    elif hasattr(image, "mode") and hasattr(image, "convert"):  # PIL.Image, without importing PIL
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGB")
        request.raw.CopyFrom(_array_image(np.asarray(image)))
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}")
    return request
