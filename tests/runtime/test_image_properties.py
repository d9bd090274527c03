"""Property-based tests (Hypothesis) of the image path: header parsing, decoding limits, RLE.

Properties: whatever the bytes, parsing and decoding end in an image or a domain error (never
another exception); the size limits hold for every decoded image; reported sizes agree with the
pixels; sizes written into real headers are read back exactly.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco_mask

from visionrpc.errors import InvalidInputError, ResourceLimitError
from visionrpc.runtime.image_headers import ImageFormat, read_header
from visionrpc.runtime.imaging import decode_image
from visionrpc.runtime.masks import rle_runs
from visionrpc.runtime.yolo import BoxMask

MAX_PIXELS, MAX_SIDE = 200_000, 1024
EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _small_files() -> list[bytes]:
    rng = np.random.default_rng(7)
    img = cv2.GaussianBlur((rng.random((30, 50, 3)) * 255).astype(np.uint8), (5, 5), 1)
    files = []
    for ext in (".jpg", ".png", ".bmp", ".webp", ".tiff"):
        ok, buf = cv2.imencode(ext, img)
        if ok:
            files.append(buf.tobytes())
    files.append(cv2.imencode(".jpg", cv2.resize(img, (800, 480)))[1].tobytes())  # reduced
    return files


FILES = _small_files()


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid small image with a few bytes changed, cut short or extended."""
    data = bytearray(draw(st.sampled_from(FILES)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        data = data[:cut]
    return bytes(data) + draw(st.binary(max_size=64))


def decode_checked(data: bytes) -> None:
    """The property shared by every decoding test."""
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE, input_size=(64, 64))
    except (InvalidInputError, ResourceLimitError) as exc:
        assert str(exc)  # every refusal says something
        return
    h, w, c = image.rgb.shape
    assert c == 3 and image.rgb.dtype == np.uint8
    assert w * h <= MAX_PIXELS and max(w, h) <= MAX_SIDE
    assert image.width * image.height <= MAX_PIXELS
    assert max(image.width, image.height) <= MAX_SIDE
    assert (w, h) == (
        -(-image.width // int(image.scale_x)),
        -(-image.height // int(image.scale_y)),
    )


@EXAMPLES
@given(st.binary(max_size=256))
def test_any_bytes_parse_to_a_header_or_a_domain_error(data: bytes) -> None:
    try:
        header = read_header(data)
    except InvalidInputError as exc:
        assert str(exc)
        return
    assert header.width >= 0 and header.height >= 0 and 1 <= header.orientation <= 8


@EXAMPLES
@given(st.binary(max_size=512))
def test_any_bytes_decode_within_limits_or_fail_cleanly(data: bytes) -> None:
    decode_checked(data)


@EXAMPLES
@given(mutated_files())
def test_damaged_files_decode_within_limits_or_fail_cleanly(data: bytes) -> None:
    decode_checked(data)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )


def _gif_header(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def _bmp_header(width: int, height: int) -> bytes:
    return b"BM" + bytes(12) + struct.pack("<Iii", 40, width, -height) + bytes(28)


SIZES = st.tuples(st.integers(1, 65535), st.integers(1, 65535))


@EXAMPLES
@given(SIZES, st.sampled_from([(_png_header, "PNG"), (_gif_header, "GIF"), (_bmp_header, "BMP")]))
def test_header_sizes_read_back_and_limits_refuse_before_decoding(
    size: tuple[int, int], maker: tuple[object, str]
) -> None:
    build, name = maker
    assert callable(build)
    data = build(*size)
    header = read_header(data)
    assert (header.format, header.width, header.height) == (ImageFormat(name), *size)
    w, h = size
    if w * h > MAX_PIXELS or max(w, h) > MAX_SIDE:
        with pytest.raises((ResourceLimitError, InvalidInputError), match=r"pixels"):
            decode_image(data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)


@EXAMPLES
@given(st.integers(1, 4096), st.integers(1, 4096), st.integers(-(2**31), 2**31 - 1))
def test_png_chunk_lengths_past_the_end_are_refused_from_the_header(
    width: int, height: int, length: int
) -> None:
    """OpenCV allocates a chunk's declared length before reading it: never let it try."""
    data = _png_header(width, height)
    idat = struct.pack(">I", length & 0xFFFFFFFF) + b"IDAT" + b"\x00" * 8
    data = data[:33] + idat  # IHDR, then an IDAT whose data and CRC are not all there
    with pytest.raises(InvalidInputError, match="PNG header is truncated or corrupt"):
        read_header(data)


@EXAMPLES
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.data(),
)
def test_rle_from_the_box_equals_pycocotools_on_the_full_frame(
    height: int, width: int, data: st.DataObject
) -> None:
    x = data.draw(st.integers(0, width - 1))
    y = data.draw(st.integers(0, height - 1))
    w = data.draw(st.integers(0, width - x))
    h = data.draw(st.integers(0, height - y))
    cells = data.draw(st.lists(st.booleans(), min_size=w * h, max_size=w * h))
    mask = np.array(cells, bool).reshape(h, w)
    full = np.zeros((height, width), np.uint8, order="F")
    full[y : y + h, x : x + w] = mask
    expected = coco_mask.encode(full)
    runs = rle_runs(BoxMask(x, y, mask, width, height))
    got = coco_mask.frPyObjects({"counts": runs, "size": [height, width]}, height, width)
    assert got["counts"] == expected["counts"]
    assert sum(runs) == width * height


def test_fuzz_found_png_declaring_a_3_gb_chunk_is_refused_from_the_header() -> None:
    """Found by tools/fuzz_image.py: 69 bytes that made OpenCV allocate ~2.9 GB."""
    data = bytes.fromhex(
        "89504e470d0a1a0a0000000d494844520000002800000018080bb6fd4f4cad725db4480320494441"
        "542815052d6b0a0c0ffc28c31a137916d00000000049454e44ae426082"
    )
    with pytest.raises(InvalidInputError, match="PNG header is truncated or corrupt"):
        decode_image(data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
