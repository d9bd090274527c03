"""Decoding, validation, raw frames, letterbox geometry and reduced-scale JPEG decoding."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import cv2
import numpy as np
import pytest

from visionrpc.errors import InvalidInputError, ResourceLimitError
from visionrpc.runtime.image_headers import ImageFormat, read_header
from visionrpc.runtime.imaging import (
    PAD_VALUE,
    DecodedImage,
    choose_reduction,
    decode_image,
    letterbox,
    raw_to_rgb,
)
from visionrpc.types import PixelFormat, RawImage

LIMITS: dict[str, Any] = {"max_pixels": 50_000_000, "max_side": 16384}


def encode(img_bgr: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img_bgr, params or [])
    assert ok
    return buf.tobytes()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the IDAT is a few bytes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("ext", "fmt"),
    [
        (".jpg", ImageFormat.JPEG),
        (".png", ImageFormat.PNG),
        (".bmp", ImageFormat.BMP),
        (".webp", ImageFormat.WEBP),
        (".tiff", ImageFormat.TIFF),
        (".gif", ImageFormat.GIF),
    ],
)
def test_header_and_decode_every_format(ext: str, fmt: ImageFormat) -> None:
    img = np.zeros((37, 53, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    data = encode(img, ext)
    header = read_header(data)
    assert (header.format, header.width, header.height) == (fmt, 53, 37)
    decoded = decode_image(data, **LIMITS)
    assert decoded.rgb.shape == (37, 53, 3) and decoded.rgb.dtype == np.uint8
    assert (decoded.width, decoded.height) == (53, 37)
    r, g, b = decoded.rgb[18, 26].astype(int)
    assert r > 200 and g < 60 and b < 60  # RGB order


def test_webp_lossy_header() -> None:
    img = np.random.default_rng(0).integers(0, 255, (40, 70, 3), np.uint8)
    header = read_header(encode(img, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]))
    assert (header.width, header.height) == (70, 40)


def test_gray_png_decodes_to_three_channels() -> None:
    decoded = decode_image(encode(np.full((5, 6), 77, np.uint8), ".png"), **LIMITS)
    assert decoded.rgb.shape == (5, 6, 3) and (decoded.rgb == 77).all()


def test_empty_bytes() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        decode_image(b"", **LIMITS)


def test_text_file() -> None:
    with pytest.raises(InvalidInputError, match="looks like text"):
        decode_image(b"hello, this is a README and not an image\n", **LIMITS)


def test_unknown_binary() -> None:
    with pytest.raises(InvalidInputError, match="not a supported image format"):
        decode_image(bytes(range(256)), **LIMITS)


def test_truncated_jpeg() -> None:
    data = encode(np.random.default_rng(1).integers(0, 255, (120, 160, 3), np.uint8), ".jpg")
    with pytest.raises(InvalidInputError, match="truncated"):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_truncated_png() -> None:
    data = encode(np.random.default_rng(2).integers(0, 255, (120, 160, 3), np.uint8), ".png")
    with pytest.raises(InvalidInputError, match=r"could not be decoded|truncated"):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_header_cut_short() -> None:
    with pytest.raises(InvalidInputError, match="header is truncated or corrupt"):
        decode_image(b"\x89PNG\r\n\x1a\n\x00\x00", **LIMITS)


def test_zero_size_image() -> None:
    with pytest.raises(InvalidInputError, match="0x0 pixels"):
        decode_image(png_declaring(0, 0), **LIMITS)


def test_absurd_side() -> None:
    with pytest.raises(InvalidInputError, match="largest side accepted is 16384"):
        decode_image(png_declaring(20000, 10), **LIMITS)


def test_decompression_bomb_refused_from_header() -> None:
    bomb = png_declaring(20000, 20000)
    assert len(bomb) < 200
    with pytest.raises(ResourceLimitError, match="20000x20000") as info:
        decode_image(bomb, max_pixels=50_000_000, max_side=65535)
    assert "downscale" in str(info.value)


def test_pixel_limit_is_configurable() -> None:
    data = encode(np.zeros((100, 100, 3), np.uint8), ".png")
    with pytest.raises(ResourceLimitError, match="limit of 9999 pixels"):
        decode_image(data, max_pixels=9999, max_side=16384)


# -- raw frames -----------------------------------------------------------------------------


def test_raw_rgb_is_zero_copy_view() -> None:
    data = np.arange(2 * 3 * 3, dtype=np.uint8).tobytes()
    img = raw_to_rgb(RawImage(3, 2, 3, PixelFormat.RGB, data), **LIMITS)
    assert img.rgb.shape == (2, 3, 3) and img.rgb.tobytes() == data


@pytest.mark.parametrize(
    ("fmt", "channels", "pixel", "expected"),
    [
        (PixelFormat.BGR, 3, [1, 2, 3], [3, 2, 1]),
        (None, 1, [9], [9, 9, 9]),
        (PixelFormat.GRAY, 1, [9], [9, 9, 9]),
        (None, 4, [1, 2, 3, 4], [1, 2, 3]),
        (PixelFormat.BGRA, 4, [1, 2, 3, 4], [3, 2, 1]),
    ],
)
def test_raw_pixel_formats(fmt, channels, pixel, expected) -> None:
    raw = RawImage(2, 2, channels, fmt, bytes(pixel * 4))
    img = raw_to_rgb(raw, **LIMITS)
    assert img.rgb.shape == (2, 2, 3)
    assert img.rgb[1, 1].tolist() == expected


def test_raw_size_mismatch_says_expected_and_got() -> None:
    with pytest.raises(InvalidInputError, match=r"holds 10 bytes .* needs exactly 12"):
        raw_to_rgb(RawImage(2, 2, 3, PixelFormat.RGB, b"\x00" * 10), **LIMITS)


def test_raw_bad_channels_and_format() -> None:
    with pytest.raises(InvalidInputError, match="channels is 2"):
        raw_to_rgb(RawImage(2, 2, 2, None, b"\x00" * 8), **LIMITS)
    with pytest.raises(InvalidInputError, match="make them agree"):
        raw_to_rgb(RawImage(2, 2, 3, PixelFormat.RGBA, b"\x00" * 12), **LIMITS)
    with pytest.raises(InvalidInputError, match="0x2"):
        raw_to_rgb(RawImage(0, 2, 3, None, b""), **LIMITS)
    with pytest.raises(ResourceLimitError):
        raw_to_rgb(RawImage(5000, 5000, 3, None, b""), max_pixels=1_000_000, max_side=16384)


# -- letterbox ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "pad_x", "pad_y", "new_w", "new_h"),
    [
        (640, 480, 0, 40, 320, 240),  # landscape
        (480, 640, 40, 0, 240, 320),  # portrait
        (1, 1, 0, 0, 320, 320),
        (1000, 1, 0, 159, 320, 1),  # odd padding: top gets the smaller half
        (320, 320, 0, 0, 320, 320),
    ],
)
def test_letterbox_geometry(w, h, pad_x, pad_y, new_w, new_h) -> None:
    image = DecodedImage(np.full((h, w, 3), 200, np.uint8), w, h)
    tensor, tr = letterbox(image, (320, 320))
    assert tensor.shape == (3, 320, 320) and tensor.dtype == np.float32
    assert (tr.pad_x, tr.pad_y, tr.resized_width, tr.resized_height) == (pad_x, pad_y, new_w, new_h)
    inside = tensor[:, pad_y : pad_y + new_h, pad_x : pad_x + new_w]
    np.testing.assert_allclose(inside, 200 / 255, atol=1e-6)
    if pad_y:
        np.testing.assert_allclose(tensor[:, : pad_y - 1], PAD_VALUE / 255, atol=1e-6)
    # the letterboxed image's corners map back to the original's corners
    corners = np.array([[pad_x, pad_y, pad_x + new_w, pad_y + new_h]], np.float32)
    np.testing.assert_allclose(tr.boxes_to_original(corners), [[0, 0, w, h]], atol=1e-3)


def test_letterbox_writes_into_batch_slot_and_clips() -> None:
    batch = np.zeros((4, 3, 64, 96), np.float32)
    image = DecodedImage(np.full((10, 10, 3), 255, np.uint8), 10, 10)
    out, tr = letterbox(image, (96, 64), out=batch[2])
    assert out.base is batch or np.shares_memory(out, batch)
    assert batch[2].max() == pytest.approx(1.0) and batch[1].max() == 0
    boxes = tr.boxes_to_original(np.array([[-50.0, -50.0, 500.0, 500.0]], np.float32))
    assert boxes.tolist() == [[0, 0, 10, 10]]


# -- reduced-scale JPEG decoding ------------------------------------------------------------


def test_choose_reduction() -> None:
    assert choose_reduction(4000, 3000, (320, 320)) == 8
    assert choose_reduction(800, 600, (320, 320)) == 2
    assert choose_reduction(640, 480, (640, 640)) == 1
    assert choose_reduction(1280, 1280, (640, 640)) == 2


def test_reduced_decode_scale_maps_content_exactly() -> None:
    """Edges drawn in a 1001-wide JPEG land at the same original columns after a 1/8 decode."""
    w, h = 1001, 333
    img = np.zeros((h, w, 3), np.uint8)
    img[:, 500:520] = 255
    img[:, 993:] = 255
    data = encode(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = decode_image(data, **LIMITS, input_size=(96, 96))
    assert decoded.rgb.shape[1] == 126  # ceil(1001 / 8)
    assert (decoded.width, decoded.height, decoded.scale_x) == (1001, 333, 8.0)
    row = decoded.rgb[decoded.rgb.shape[0] // 2, :, 0].astype(float)
    crossings = [
        i + (127.5 - row[i]) / (row[i + 1] - row[i])
        for i in range(len(row) - 1)
        if (row[i] - 127.5) * (row[i + 1] - 127.5) < 0
    ]
    mapped = [(c + 0.5) * decoded.scale_x for c in crossings]
    np.testing.assert_allclose(mapped, [500, 520, 993], atol=1.0)


def test_reduced_decode_only_for_jpeg_and_when_enabled() -> None:
    img = np.zeros((800, 1280, 3), np.uint8)
    png = decode_image(encode(img, ".png"), **LIMITS, input_size=(160, 160))
    assert png.rgb.shape[:2] == (800, 1280) and png.scale_x == 1.0
    jpg = encode(img, ".jpg")
    off = decode_image(jpg, **LIMITS, input_size=(160, 160), reduced_decode=False)
    assert off.rgb.shape[:2] == (800, 1280)
    on = decode_image(jpg, **LIMITS, input_size=(160, 160))
    assert on.rgb.shape[:2] == (100, 160) and (on.width, on.height) == (1280, 800)
