"""Image decoding, raw-frame validation and letterboxing: bytes in, model-ready tensor out.

Every check raises an error whose message says what the caller should change. Sizes are checked from
the header before decoding (see image_headers). Large JPEGs may be decoded at 1/2, 1/4 or 1/8 scale
by libjpeg-turbo's DCT scaling; ``ImageTransform`` records every step so that boxes and masks map
back to the pixels of the image the client sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import simplejpeg

from visionrpc.errors import InvalidInputError, ResourceLimitError
from visionrpc.runtime.image_headers import ImageFormat, ImageHeader, read_header
from visionrpc.types import PixelFormat, RawImage

PAD_VALUE = 114  # Ultralytics' letterbox grey

_RAW_CHANNELS: dict[PixelFormat, int] = {
    PixelFormat.RGB: 3,
    PixelFormat.BGR: 3,
    PixelFormat.GRAY: 1,
    PixelFormat.RGBA: 4,
    PixelFormat.BGRA: 4,
}
_RAW_DEFAULT_FORMAT = {1: PixelFormat.GRAY, 3: PixelFormat.RGB, 4: PixelFormat.RGBA}
_RAW_TO_RGB: dict[PixelFormat, int | None] = {
    PixelFormat.RGB: None,
    PixelFormat.BGR: cv2.COLOR_BGR2RGB,
    PixelFormat.GRAY: cv2.COLOR_GRAY2RGB,
    PixelFormat.RGBA: cv2.COLOR_RGBA2RGB,
    PixelFormat.BGRA: cv2.COLOR_BGRA2RGB,
}


@dataclass(frozen=True)
class DecodedImage:
    """RGB pixels plus the size of the image as sent; ``scale_*`` = original / decoded pixels."""

    rgb: np.ndarray  # (h, w, 3) uint8, possibly reduced
    width: int  # original width, as the client sees the image
    height: int
    scale_x: float = 1.0
    scale_y: float = 1.0


@dataclass(frozen=True)
class ImageTransform:
    """Maps model-input pixels back to original-image pixels.

    original = (input - pad) / letterbox_scale * decode_scale, per axis. Per-axis letterbox scales
    (resized / decoded size) stay exact even for 1-pixel-wide images where one rounded side differs
    from the common Ultralytics gain.
    """

    orig_width: int
    orig_height: int
    input_width: int
    input_height: int
    resized_width: int  # size of the image inside the letterbox
    resized_height: int
    pad_x: int
    pad_y: int
    lb_scale_x: float  # resized / decoded
    lb_scale_y: float
    decode_scale_x: float = 1.0  # original / decoded
    decode_scale_y: float = 1.0

    @property
    def scale(self) -> float:
        """The Ultralytics-style single gain (input pixels per original pixel)."""
        return min(self.lb_scale_x / self.decode_scale_x, self.lb_scale_y / self.decode_scale_y)

    @property
    def input_to_original(self) -> tuple[float, float]:
        """Original pixels per input pixel, (x, y)."""
        return self.decode_scale_x / self.lb_scale_x, self.decode_scale_y / self.lb_scale_y

    def boxes_to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N, 4) x1,y1,x2,y2 in input pixels -> original pixels, clipped to the image."""
        kx, ky = self.input_to_original
        out = np.asarray(boxes_xyxy, dtype=np.float32).copy()
        out[:, 0::2] = np.clip((out[:, 0::2] - self.pad_x) * kx, 0, self.orig_width)
        out[:, 1::2] = np.clip((out[:, 1::2] - self.pad_y) * ky, 0, self.orig_height)
        return out


def check_dimensions(width: int, height: int, *, max_pixels: int, max_side: int, what: str) -> None:
    """Refuse empty, absurd or bomb-sized images before any large allocation."""
    if width <= 0 or height <= 0:
        raise InvalidInputError(
            f"{what} is {width}x{height} pixels; send an image at least 1x1 pixel"
        )
    if width * height > max_pixels:
        raise ResourceLimitError(
            f"{what} is {width}x{height} = {width * height} pixels, more than the server's "
            f"limit of {max_pixels} pixels; downscale it before sending",
            limit="max_image_pixels",
        )
    if width > max_side or height > max_side:
        raise InvalidInputError(
            f"{what} is {width}x{height} pixels; the largest side accepted is {max_side} pixels, "
            "downscale it before sending"
        )


def choose_reduction(width: int, height: int, input_size: tuple[int, int]) -> int:
    """Largest DCT reduction (1, 2, 4 or 8) that still leaves at least letterbox-size pixels."""
    in_w, in_h = input_size
    r = min(in_w / width, in_h / height)
    need_w, need_h = max(1, round(width * r)), max(1, round(height * r))
    for k in (8, 4, 2):
        if math.ceil(width / k) >= need_w and math.ceil(height / k) >= need_h:
            return k
    return 1


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_side: int,
    input_size: tuple[int, int] | None = None,
    reduced_decode: bool = True,
) -> DecodedImage:
    """Decode JPEG/PNG/BMP/WebP/TIFF/GIF bytes to RGB uint8, validating first.

    With ``input_size`` (model input w, h) and ``reduced_decode``, a JPEG much larger than the input
    is decoded at 1/k scale. Scale factors are exactly k: libjpeg-turbo's scaled IDCT maps decoded
    pixel i onto original pixels [k*i, k*(i+1)); its output size is ceil(size / k), the last pixel
    covering a partial block (orig / decoded would misplace content by up to k-1 px at the far end).
    JPEGs with a non-trivial EXIF orientation are decoded at full size, because after rotation the
    partial block can sit on the near edge.

    JPEGs go through libjpeg-turbo in strict mode (simplejpeg): data the decoder reports as corrupt
    (half a file with an end marker appended) is refused instead of decoded with grey blocks, and
    bytes after the end marker (Motion Photos append a video) are ignored. Other formats go through
    OpenCV. The decoded pixels are converted to RGB in place: no second full-size copy.
    """
    if not data:
        raise InvalidInputError(
            "image_bytes is empty; send an encoded JPEG, PNG, BMP, WebP or TIFF image"
        )
    header = read_header(data)
    check_dimensions(
        header.width,
        header.height,
        max_pixels=max_pixels,
        max_side=max_side,
        what=f"the {header.format} image",
    )
    if header.unsupported:
        raise InvalidInputError(
            f"the image is {header.unsupported}, which this server does not decode (unsupported, "
            "not corrupt); send 8- or 16-bit integer pixels, e.g. an 8-bit PNG or JPEG"
        )
    if header.format is ImageFormat.JPEG:
        return _decode_jpeg(data, header, input_size if reduced_decode else None)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise InvalidInputError(
            f"the {header.format} image could not be decoded (corrupt or truncated data, or a "
            f"variant this server does not support); send a complete 8-bit {header.format}, "
            "or a PNG or JPEG"
        )
    h, w = bgr.shape[:2]
    if (w, h) not in ((header.width, header.height), (header.height, header.width)):
        # the header we checked is not the one the decoder used: check what was decoded
        check_dimensions(
            w,
            h,
            max_pixels=max_pixels,
            max_side=max_side,
            what=f"the decoded {header.format} image",
        )
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place
    # EXIF orientation (TIFF) may have swapped the sides; the decoded image is what the client sees.
    return DecodedImage(rgb, w, h)


def _decode_jpeg(
    data: bytes, header: ImageHeader, input_size: tuple[int, int] | None
) -> DecodedImage:
    k = 1
    if input_size is not None and header.orientation == 1:
        k = choose_reduction(header.width, header.height, input_size)
    want_w, want_h = math.ceil(header.width / k), math.ceil(header.height / k)
    try:
        rgb = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_width=want_w,
            min_height=want_h,
            min_factor=k,
            strict=True,
        )
    except ValueError as exc:
        raise InvalidInputError(_jpeg_error_text(str(exc), data)) from exc
    h, w = rgb.shape[:2]
    if (w, h) != (want_w, want_h):
        raise InvalidInputError(
            f"the JPEG image decoded to an unexpected size {w}x{h} at 1/{k} scale "
            f"(header says {header.width}x{header.height}); the file may be corrupt"
        )
    if k == 1:
        rgb = apply_orientation(rgb, header.orientation)
        h, w = rgb.shape[:2]
        return DecodedImage(rgb, w, h)
    return DecodedImage(rgb, header.width, header.height, float(k), float(k))


def _jpeg_error_text(reason: str, data: bytes) -> str:
    """What libjpeg said, in terms of what the caller should send instead (error path only)."""
    reason = reason[:200]
    lowered = reason.lower()
    if b"\xff\xd9" not in data:
        return (
            f"the JPEG image is truncated (no end-of-image marker; the decoder says: {reason}); "
            "send the complete file"
        )
    if "premature end" in lowered:
        return (
            f"the JPEG image is truncated or corrupt (the decoder says: {reason}); "
            "send the complete file"
        )
    if "unsupported" in lowered or "not supported" in lowered or "colorspace" in lowered:
        return (
            f"the JPEG image uses a variant this server does not support (the decoder says: "
            f"{reason}); send a baseline or progressive 8-bit JPEG (gray, YCbCr or RGB), or a PNG"
        )
    return (
        f"the JPEG image could not be decoded as a whole (the decoder says: {reason}); "
        "send a complete, valid file"
    )


def apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright as EXIF orientation 1..8 says (what viewers and OpenCV do)."""
    if orientation == 1:
        return rgb
    return np.ascontiguousarray(_ORIENTED[orientation](rgb))  # OpenCV needs positive strides


_ORIENTED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def raw_to_rgb(raw: RawImage, *, max_pixels: int, max_side: int) -> DecodedImage:
    """Validate a raw interleaved 8-bit frame and convert it to RGB (no copy when already RGB)."""
    if raw.channels not in _RAW_DEFAULT_FORMAT:
        raise InvalidInputError(
            f"raw.channels is {raw.channels}; send 1 (gray), 3 (RGB/BGR) or 4 (RGBA/BGRA)",
            field="raw.channels",
        )
    fmt = raw.pixel_format or _RAW_DEFAULT_FORMAT[raw.channels]
    if _RAW_CHANNELS[fmt] != raw.channels:
        raise InvalidInputError(
            f"raw.pixel_format {fmt.value} has {_RAW_CHANNELS[fmt]} channel(s) but raw.channels is "
            f"{raw.channels}; make them agree",
            field="raw.pixel_format",
        )
    check_dimensions(
        raw.width, raw.height, max_pixels=max_pixels, max_side=max_side, what="raw image"
    )
    expected = raw.width * raw.height * raw.channels
    if len(raw.data) != expected:
        raise InvalidInputError(
            f"raw.data holds {len(raw.data)} bytes but {raw.width}x{raw.height}x{raw.channels} "
            f"needs exactly {expected} (8-bit, interleaved, no row padding)",
            field="raw.data",
        )
    arr = np.frombuffer(raw.data, dtype=np.uint8).reshape(raw.height, raw.width, raw.channels)
    code = _RAW_TO_RGB[fmt]
    rgb = arr if code is None else cv2.cvtColor(arr, code)
    return DecodedImage(rgb, raw.width, raw.height)


def letterbox_uint8(
    image: DecodedImage, input_size: tuple[int, int]
) -> tuple[np.ndarray, ImageTransform]:
    """Resize keeping the aspect ratio and pad with 114 to ``input_size`` (w, h), Ultralytics style.

    Returns the (in_h, in_w, 3) uint8 canvas; uint8 is a quarter of the float tensor's memory, which
    matters while requests wait in a batch queue. ``to_chw_float`` makes the model input from it.
    """
    in_w, in_h = input_size
    rgb = image.rgb
    h, w = rgb.shape[:2]
    r = min(in_w / w, in_h / h)
    new_w, new_h = min(in_w, max(1, round(w * r))), min(in_h, max(1, round(h * r)))
    if (new_w, new_h) != (w, h):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    bottom += in_h - new_h - top - bottom  # guard against rounding leaving a pixel short
    right += in_w - new_w - left - right
    canvas = cv2.copyMakeBorder(
        rgb, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    transform = ImageTransform(
        orig_width=image.width,
        orig_height=image.height,
        input_width=in_w,
        input_height=in_h,
        resized_width=new_w,
        resized_height=new_h,
        pad_x=left,
        pad_y=top,
        lb_scale_x=new_w / w,
        lb_scale_y=new_h / h,
        decode_scale_x=image.scale_x,
        decode_scale_y=image.scale_y,
    )
    return canvas, transform


def to_chw_float(canvas: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float in 0..1, written into ``out`` (e.g. a batch slot;
    float32 unless ``out`` is float16, for graphs that take half precision)."""
    h, w = canvas.shape[:2]
    if out is None:
        out = np.empty((3, h, w), dtype=np.float32)
    elif out.shape != (3, h, w) or out.dtype not in (np.float32, np.float16):
        raise ValueError(f"output slot is {out.shape} {out.dtype}, need (3, {h}, {w}) float")
    np.multiply(canvas.transpose(2, 0, 1), np.float32(1 / 255), out=out, dtype=np.float32)
    return out


def to_chw(canvas: np.ndarray, dtype: np.dtype[Any], out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> a (3, H, W) model input of ``dtype``: floats in 0..1, uint8 unscaled
    (a graph that takes uint8 normalises the pixels itself)."""
    if dtype != np.uint8:
        return to_chw_float(canvas, np.empty((3, *canvas.shape[:2]), dtype) if out is None else out)
    chw = canvas.transpose(2, 0, 1)
    if out is None:
        return np.ascontiguousarray(chw)
    out[...] = chw
    return out


def letterbox(
    image: DecodedImage, input_size: tuple[int, int], out: np.ndarray | None = None
) -> tuple[np.ndarray, ImageTransform]:
    """Letterbox into a float32 (3, H, W) RGB 0..1 tensor, optionally a preallocated batch slot."""
    canvas, transform = letterbox_uint8(image, input_size)
    return to_chw_float(canvas, out), transform
