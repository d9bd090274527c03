"""Tiled inference of large frames: recall and images/s with and without tiling.

Starts ``visionrpc serve`` (the shipped model) in a subprocess on a free loopback port and sends
generated frames of several sizes (4 to 20 MP) whose defects are small: drawn at one image pixel
per model pixel (``generate_sample(defect_unit=1.0)``), as large as on a 320 px image, so a
letterboxed frame shrinks them out of sight. Each frame goes as a JPEG (quality 92) three ways:
tiling off (the whole frame letterboxed), tiling on without the thumbnail, tiling on with it (the
default). Recall = planted defects matched by a detection of any class with box IoU >= 0.5
(the model reports one thin defect under scratch or crack, so classes are not compared);
precision = detections matching a planted defect. Prints a Markdown table.

    PYTHONPATH=src:. python -m bench.tiling [--sizes 4,12,20] [--images 3] [--seed 7000]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from bench.harness.procs import free_port, stop_process
from visionrpc.client import Client
from visionrpc.synthetic import Sample, generate_sample
from visionrpc.types import InferenceResult

MATCH_IOU = 0.5
MODES: dict[str, dict[str, object]] = {
    "off": {"tiling": "off"},
    "tiles": {"tiling": "on", "tile_thumbnail": False},
    "tiles + thumbnail": {"tiling": "on", "tile_thumbnail": True},
}


def frame_size(megapixels: float) -> tuple[int, int]:
    """A 4:3 frame of about ``megapixels``."""
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    return width, round(width * 3 / 4)


def small_defect_frame(seed: int, index: int, megapixels: float) -> Sample:
    return generate_sample(
        seed, index, size=frame_size(megapixels), defect_unit=1.0, max_defects=8, jpeg=False
    )


def jpeg(sample: Sample) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
    )
    assert ok
    return buf.tobytes()


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) x1, y1, x2, y2 boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9))


def matches(result: InferenceResult, sample: Sample, iou: float = MATCH_IOU) -> int:
    """Planted defects found (each by its own detection): greedy one-to-one matching, best IoU
    first, of any class."""
    truth = np.array([d.bbox for d in sample.defects], np.float64).reshape(-1, 4)
    found = np.array(
        [(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max) for d in result.detections],
        np.float64,
    ).reshape(-1, 4)
    m = iou_matrix(truth, found)
    hit = 0
    while m.size and m.max() >= iou:
        i, j = np.unravel_index(int(m.argmax()), m.shape)
        hit += 1
        m[i, :] = -1
        m[:, j] = -1
    return hit


@dataclass
class Row:
    megapixels: float
    mode: str
    images: int = 0
    defects: int = 0
    found: int = 0
    detections: int = 0
    true_detections: int = 0
    tiles: int = 0
    seconds: float = 0.0

    @property
    def recall(self) -> float:
        return self.found / self.defects if self.defects else float("nan")

    @property
    def precision(self) -> float:
        return self.true_detections / self.detections if self.detections else float("nan")


def run(client: Client, sizes: Sequence[float], images: int, seed: int) -> list[Row]:
    rows: list[Row] = []
    for mp in sizes:
        samples = [small_defect_frame(seed, i, mp) for i in range(images)]
        frames = [jpeg(s) for s in samples]
        by_mode = {mode: Row(mp, mode) for mode in MODES}
        for sample, data in zip(samples, frames, strict=True):
            for mode, options in MODES.items():  # interleaved: drift hits every mode alike
                row = by_mode[mode]
                t0 = time.perf_counter()
                result = client.infer(data, timeout=600, **options)
                row.seconds += time.perf_counter() - t0
                found = matches(result, sample)
                row.images += 1
                row.defects += len(sample.defects)
                row.found += found
                row.detections += len(result.detections)
                row.true_detections += found
                row.tiles += result.tiling.tiles if result.tiling is not None else 0
        rows += by_mode.values()
    return rows


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| frame | mode | frames | defects | recall | precision | tiles/frame | frames/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        w, h = frame_size(r.megapixels)
        precision = f"{r.precision:.2f}" if r.detections else "–"  # nothing detected
        lines.append(
            f"| {w}x{h} ({r.megapixels:g} MP) | {r.mode} | {r.images} | {r.defects} | "
            f"{r.recall:.2f} | {precision} | {r.tiles / r.images:.0f} | "
            f"{r.images / r.seconds:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="4,12,20", help="frame sizes in megapixels")
    parser.add_argument("--images", type=int, default=3, help="frames per size")
    parser.add_argument("--seed", type=int, default=7000)
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "visionrpc", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with Client(f"127.0.0.1:{port}", wait_for_ready=True) as client:
            client.infer(np.zeros((64, 64, 3), np.uint8), timeout=120)  # up and warm
            rows = run(client, sizes, args.images, args.seed)
    finally:
        stop_process(server, 10)
    print(markdown(rows))


if __name__ == "__main__":
    main()
