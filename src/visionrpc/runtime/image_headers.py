"""Sniff an encoded image's format and read its size from the header, before any pixel is decoded.

Why parse headers ourselves: the size must be checked *before* decoding so that a tiny file that
declares 20000x20000 pixels (a decompression bomb) is refused without allocating gigabytes. OpenCV
has no public "read header only" call and Pillow is not a runtime dependency, so this module reads
the few header bytes of each accepted format (JPEG, PNG, BMP, GIF, WebP, TIFF) with ``struct``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

from visionrpc.errors import InvalidInputError

SUPPORTED_FORMATS_TEXT = "JPEG, PNG, BMP, WebP, TIFF or GIF"


class ImageFormat(StrEnum):
    JPEG = "JPEG"
    PNG = "PNG"
    BMP = "BMP"
    GIF = "GIF"
    WEBP = "WebP"
    TIFF = "TIFF"


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: format, stored size and (JPEG/TIFF) the EXIF orientation (1 = none)."""

    format: ImageFormat
    width: int
    height: int
    orientation: int = 1
    unsupported: str = ""  # a valid file this server cannot decode: what it is, else ""


_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


def sniff_format(data: bytes) -> ImageFormat | None:
    """The format named by the file's magic bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageFormat.PNG
    if data.startswith(b"BM"):
        return ImageFormat.BMP
    if data.startswith((b"GIF87a", b"GIF89a")):
        return ImageFormat.GIF
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return ImageFormat.TIFF
    return None


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def read_header(data: bytes) -> ImageHeader:
    """Format and size of an encoded image; InvalidInputError when it is not a supported image."""
    fmt = sniff_format(data)
    if fmt is None:
        if _looks_like_text(data):
            raise InvalidInputError(
                f"image_bytes looks like text ({data[:24]!r}...), not an image; "
                f"send the encoded file bytes ({SUPPORTED_FORMATS_TEXT})"
            )
        raise InvalidInputError(
            f"image_bytes is not a supported image format (starts with {data[:8].hex()}); "
            f"send {SUPPORTED_FORMATS_TEXT}"
        )
    try:
        return _PARSERS[fmt](data)
    except (struct.error, IndexError, ValueError) as exc:
        raise InvalidInputError(
            f"the {fmt} header is truncated or corrupt ({exc}); send a complete {fmt} file"
        ) from exc


def _jpeg(data: bytes) -> ImageHeader:
    pos, orientation = 2, 1
    n = len(data)
    while pos < n:
        if data[pos] != 0xFF:
            raise ValueError(f"expected a marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS before any SOF
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise ValueError("bad segment length")
        if marker in _SOF_MARKERS:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            return ImageHeader(ImageFormat.JPEG, width, height, orientation)
        if marker == 0xE1 and data[pos + 2 : pos + 8] == b"Exif\x00\x00":
            orientation = _exif_orientation(data[pos + 8 : pos + length])
        pos += length
    raise ValueError("no frame header (SOF) found")


def _exif_orientation(tiff: bytes) -> int:
    try:
        tags = _tiff_ifd0(tiff, {0x0112})
    except (struct.error, IndexError, ValueError):
        return 1
    value = tags.get(0x0112, 1)
    return value if 1 <= value <= 8 else 1


def _tiff_ifd0(data: bytes, wanted: set[int]) -> dict[int, int]:
    """SHORT/LONG values of the wanted tags of a TIFF structure's first IFD."""
    if data[:2] == b"II":
        endian = "<"
    elif data[:2] == b"MM":
        endian = ">"
    else:
        raise ValueError("bad TIFF byte order")
    (magic,) = struct.unpack_from(endian + "H", data, 2)
    if magic == 43:
        raise ValueError("BigTIFF is not supported")
    (ifd,) = struct.unpack_from(endian + "I", data, 4)
    (count,) = struct.unpack_from(endian + "H", data, ifd)
    found: dict[int, int] = {}
    for i in range(count):
        tag, typ = struct.unpack_from(endian + "HH", data, ifd + 2 + 12 * i)
        if tag not in wanted:
            continue
        (n,) = struct.unpack_from(endian + "I", data, ifd + 2 + 12 * i + 4)
        value_pos = ifd + 2 + 12 * i + 8
        size = {3: 2, 4: 4}.get(typ)
        if size is None:
            continue
        if n * size > 4:  # the values live elsewhere; the first one is enough here
            (value_pos,) = struct.unpack_from(endian + "I", data, value_pos)
        (found[tag],) = struct.unpack_from(endian + ("H" if size == 2 else "I"), data, value_pos)
    return found


_TIFF_SAMPLE_FORMATS = {1: "integer", 2: "signed integer", 3: "floating-point"}


def _tiff(data: bytes) -> ImageHeader:
    tags = _tiff_ifd0(data, {256, 257, 258, 339, 0x0112})
    if 256 not in tags or 257 not in tags:
        raise ValueError("no ImageWidth/ImageLength tags")
    orientation = tags.get(0x0112, 1)
    bits, sample_format = tags.get(258, 1), tags.get(339, 1)
    unsupported = ""
    if sample_format != 1 or bits > 16:
        kind = _TIFF_SAMPLE_FORMATS.get(sample_format, f"sample format {sample_format}")
        unsupported = f"a TIFF with {bits}-bit {kind} samples"
    return ImageHeader(
        ImageFormat.TIFF,
        tags[256],
        tags[257],
        orientation if 1 <= orientation <= 8 else 1,
        unsupported,
    )


_PNG_BIT_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}


def _png(data: bytes) -> ImageHeader:
    """IHDR, after checking that every chunk up to IEND fits in the file.

    Why walk the chunks: OpenCV allocates a chunk's declared length before reading it, so a
    69-byte file declaring a 3 GB chunk costs 3 GB of memory. The walk is a few struct reads per
    chunk (a large PNG has some thousands), far cheaper than decoding.
    """
    if data[12:16] != b"IHDR":
        raise ValueError("first chunk is not IHDR")
    width, height, depth, color = struct.unpack_from(">IIBB", data, 16)
    if depth not in _PNG_BIT_DEPTHS.get(color, ()):
        raise ValueError(f"bit depth {depth} with color type {color} is not valid PNG")
    pos, n = 8, len(data)
    while True:
        length, kind = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length  # length, type, data, CRC
        if pos > n:
            raise ValueError(f"chunk {kind!r} of {length} bytes runs past the end of the file")
        if kind == b"IEND":
            return ImageHeader(ImageFormat.PNG, width, height)


def _bmp(data: bytes) -> ImageHeader:
    (dib_size,) = struct.unpack_from("<I", data, 14)
    if dib_size == 12:
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return ImageHeader(ImageFormat.BMP, abs(width), abs(height))  # negative height = top-down


def _gif(data: bytes) -> ImageHeader:
    width, height = struct.unpack_from("<HH", data, 6)
    return ImageHeader(ImageFormat.GIF, width, height)


def _webp(data: bytes) -> ImageHeader:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader(ImageFormat.WEBP, width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ValueError("bad VP8L signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return ImageHeader(ImageFormat.WEBP, (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        if len(data) < 30:
            raise ValueError("VP8X chunk cut short")
        return ImageHeader(ImageFormat.WEBP, width, height)
    raise ValueError(f"unknown WebP chunk {chunk!r}")


_PARSERS = {
    ImageFormat.JPEG: _jpeg,
    ImageFormat.PNG: _png,
    ImageFormat.BMP: _bmp,
    ImageFormat.GIF: _gif,
    ImageFormat.WEBP: _webp,
    ImageFormat.TIFF: _tiff,
}
