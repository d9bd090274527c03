"""Coverage-guided fuzzing (atheris / libFuzzer) of the image path: header parsing and decoding.

The property: for any bytes, ``decode_image`` either returns an RGB image within the limits whose
size agrees with what it reports, or raises a domain error (InvalidInputError, ResourceLimitError).
Any other exception, or a crash, is a bug; libFuzzer saves the input as ``crash-*``.

    python tools/fuzz_image.py -runs=3000                    # what the test suite runs
    python tools/fuzz_image.py -max_total_time=600 corpus/   # longer; corpus/ keeps what it learns
    python tools/fuzz_image.py crash-1234abcd                # replay one input

Seeds (a small image of each format, plus a JPEG with EXIF orientation and a Motion-Photo-style
tail) are written to a seed folder on every run, so an empty corpus starts from valid files.
Only this project's Python is instrumented; OpenCV and libjpeg-turbo run as shipped.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import atheris
import cv2
import numpy as np

with atheris.instrument_imports():
    from visionrpc.errors import InvalidInputError, ResourceLimitError
    from visionrpc.runtime.image_headers import ImageHeader, read_header
    from visionrpc.runtime.imaging import decode_image

MAX_PIXELS = 1_000_000  # small limits: the fuzzer explores refusals, not big allocations
MAX_SIDE = 2048
INPUT_SIZE = (64, 64)


def seeds() -> dict[str, bytes]:
    """One small valid file per format (and a few variants the decoder treats specially)."""
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((24, 40, 3)) * 255).astype(np.uint8), (5, 5), 1)
    out = {}
    for ext in ("jpg", "png", "bmp", "webp", "tiff"):
        ok, encoded = cv2.imencode(f".{ext}", img)
        if ok:
            out[ext] = encoded.tobytes()
    big = cv2.resize(img, (400, 240))
    out["big.jpg"] = cv2.imencode(".jpg", big)[1].tobytes()  # DCT-reduced decode
    out["tail.jpg"] = out["jpg"] + b"\x00\x00ftypmp42" + bytes(64)
    out["gray.png"] = cv2.imencode(".png", img[:, :, 0])[1].tobytes()
    try:
        from PIL import Image  # optional: EXIF orientation and GIF seeds

        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(img).save(buf, "JPEG", exif=exif)
        out["exif6.jpg"] = buf.getvalue()
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "GIF")
        out["gif"] = buf.getvalue()
    except ImportError:
        pass
    return out


def check(data: bytes) -> None:
    """One input: the property above, raising AssertionError (or the stray exception) if broken."""
    header: ImageHeader | None = None
    with contextlib.suppress(InvalidInputError):
        header = read_header(data)
    if header is not None:
        assert header.width >= 0 and header.height >= 0 and 1 <= header.orientation <= 8
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE, input_size=INPUT_SIZE)
    except (InvalidInputError, ResourceLimitError):
        return
    assert header is not None, "decoded an input whose header was refused"
    h, w, c = image.rgb.shape
    assert c == 3 and image.rgb.dtype == np.uint8
    assert 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and w * h <= MAX_PIXELS
    assert image.width * image.height <= MAX_PIXELS
    assert image.width <= MAX_SIDE and image.height <= MAX_SIDE
    assert (round(image.width / image.scale_x), round(image.height / image.scale_y)) in (
        (w, h),
        (-(-image.width // int(image.scale_x)), -(-image.height // int(image.scale_y))),
    )


def main() -> None:
    # OpenCV's warnings about bad files are expected here, not news
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    seed_dir = Path(tempfile.mkdtemp(prefix="visionrpc-fuzz-seeds-"))
    for name, data in seeds().items():
        (seed_dir / name).write_bytes(data)
    # libFuzzer reads every corpus folder and writes what it learns into the first one given
    atheris.Setup([*sys.argv, str(seed_dir)], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
