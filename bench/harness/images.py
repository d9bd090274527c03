"""The bench's image set: generated once per run, encoded once, shared by every measurement.

Images come from visionrpc.synthetic with a fixed seed (sides 256–1280 px, random aspect), so
every pipeline and every server sees exactly the same bytes. Every third image is PNG, the rest
JPEG quality 90: large JPEGs are where reduced-scale decoding pays, PNGs are where it cannot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2

from visionrpc.synthetic import generate_sample

BENCH_SEED = 4242  # not a training (1, 2) or evaluation (1000) stream
JPEG_QUALITY = 90
PNG_EVERY = 3
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BenchImage:
    name: str  # file name, e.g. "007-1224x522.png"
    format: str  # "jpeg" or "png"
    width: int
    height: int
    data: bytes


def make_images(
    count: int,
    seed: int = BENCH_SEED,
    *,
    on_image: Callable[[], None] | None = None,
) -> list[BenchImage]:
    """``count`` generated images, encoded; index i is PNG when i % 3 == 2, else JPEG q90."""
    images = []
    for index in range(count):
        sample = generate_sample(seed, index)
        bgr = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
        png = index % PNG_EVERY == PNG_EVERY - 1
        ext, params = (".png", []) if png else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        ok, buf = cv2.imencode(ext, bgr, params)
        if not ok:
            raise RuntimeError(f"cannot encode bench image {index} as {ext}")
        name = f"{index:03d}-{sample.width}x{sample.height}{ext}"
        images.append(
            BenchImage(name, "png" if png else "jpeg", sample.width, sample.height, buf.tobytes())
        )
        if on_image is not None:
            on_image()
    return images


def save_images(images: list[BenchImage], directory: Path) -> None:
    """Write the images and a manifest so child processes load the very same bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for image in images:
        (directory / image.name).write_bytes(image.data)
        entries.append({k: v for k, v in asdict(image).items() if k != "data"})
    (directory / MANIFEST).write_text(json.dumps(entries, indent=1), encoding="utf-8")


def load_images(directory: Path) -> list[BenchImage]:
    entries = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    return [BenchImage(**e, data=(directory / e["name"]).read_bytes()) for e in entries]


def describe(images: list[BenchImage], seed: int) -> dict[str, object]:
    """What the report says about the image set."""
    sides = [max(i.width, i.height) for i in images]
    return {
        "count": len(images),
        "seed": seed,
        "jpeg": sum(i.format == "jpeg" for i in images),
        "png": sum(i.format == "png" for i in images),
        "jpeg_quality": JPEG_QUALITY,
        "long_side_min": min(sides, default=0),
        "long_side_max": max(sides, default=0),
        "mean_bytes": round(sum(len(i.data) for i in images) / max(1, len(images))),
    }
