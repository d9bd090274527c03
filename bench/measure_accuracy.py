"""How close measured sizes are to the truth: generated images (visionrpc.synthetic, whose exact
polygons and centrelines are the truth) through the shipped model, each planted defect matched to
the detection whose box overlaps it most (IoU >= 0.5, any class), its mask measured by both length
methods of runtime/measure.py. The same methods on the truth's own polygon, drawn as a mask at
the image's resolution, show the method's share of the error apart from the model's.
Prints median and p90 relative errors of area, length and width per class.

    PYTHONPATH=src:. python -m bench.measure_accuracy [--images 200]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import get_args

import cv2
import numpy as np

from visionrpc.evaluation import EVAL_SEED
from visionrpc.runtime.measure import Method, shape_of
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.settings import Settings
from visionrpc.synthetic import PlantedDefect, generate_sample
from visionrpc.types import (
    Detection,
    InferenceInput,
    InferenceOptions,
    MaskFormat,
    PixelFormat,
    RawImage,
)

METHODS: tuple[Method, ...] = get_args(Method)
MATCH_IOU = 0.5
Errors = dict[tuple[str, str, str, str], list[float]]  # (source, method, class, quantity)


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_mask(det: Detection) -> np.ndarray:
    assert det.mask is not None and det.mask.format is MaskFormat.PNG
    region = cv2.imdecode(np.frombuffer(det.mask.png, np.uint8), cv2.IMREAD_GRAYSCALE)
    return np.asarray(region) > 0


def truth_mask(defect: PlantedDefect) -> np.ndarray:
    """The polygon filled at image resolution over its box (pixel centres inside)."""
    x0, y0, x1, y1 = defect.bbox
    ox, oy = int(np.floor(x0)), int(np.floor(y0))
    mask = np.zeros((int(np.ceil(y1)) - oy + 1, int(np.ceil(x1)) - ox + 1), np.uint8)
    pts = np.round((defect.polygon - [ox + 0.5, oy + 0.5]) * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, shift=4)
    return mask.astype(bool)


def record(
    errors: Errors, source: str, defect: PlantedDefect, mask: np.ndarray, area: float
) -> None:
    errors[(source, "-", defect.class_name, "area")].append(abs(area - defect.area) / defect.area)
    for method in METHODS:
        length, width = shape_of(mask, 1.0, method, area=area)
        for quantity, got, true in (
            ("length", length, defect.length),
            ("width", width, defect.width),
        ):
            errors[(source, method, defect.class_name, quantity)].append(abs(got - true) / true)


def collect(images: int, seed: int = EVAL_SEED) -> tuple[Errors, int, int]:
    """Relative errors, and how many planted defects there were and were matched."""
    pipeline = InferencePipeline.from_settings(Settings(access_log=False))
    errors: Errors = defaultdict(list)
    planted = matched = 0
    try:
        for index in range(images):
            sample = generate_sample(seed, index)
            frame = RawImage(
                sample.width, sample.height, 3, PixelFormat.RGB, sample.image.tobytes()
            )
            options = InferenceOptions(return_masks=True, mask_format=MaskFormat.PNG)
            result = pipeline.infer_sync(InferenceInput(options, raw=frame))
            for defect in sample.defects:
                planted += 1
                record(errors, "truth", defect, truth_mask(defect), defect.area)  # exact area
                ious = [box_iou(defect.bbox, astuple(d)) for d in result.detections]
                if not ious or max(ious) < MATCH_IOU:
                    continue
                matched += 1
                det = result.detections[int(np.argmax(ious))]
                assert det.mask is not None
                record(errors, "model", defect, detection_mask(det), float(det.mask.area_px))
    finally:
        pipeline.shutdown()
    return errors, planted, matched


def astuple(det: Detection) -> tuple[float, float, float, float]:
    b = det.box
    return b.x_min, b.y_min, b.x_max, b.y_max


def summary(errors: Errors) -> list[tuple[str, str, str, str, int, float, float]]:
    """(source, method, class, quantity, n, median %, p90 %) rows, classes then "all"."""
    rows = []
    keys = sorted({(s, m, q) for s, m, _, q in errors})
    for source, method, quantity in keys:
        by_class = {
            c: v for (s, m, c, q), v in errors.items() if (s, m, q) == (source, method, quantity)
        }
        by_class["all"] = [v for vs in by_class.values() for v in vs]
        for name, values in sorted(by_class.items()):
            if values:
                rows.append(
                    (
                        source,
                        method,
                        name,
                        quantity,
                        len(values),
                        100 * float(np.median(values)),
                        100 * float(np.percentile(values, 90)),
                    )
                )
    return rows


def main(images: int) -> None:
    errors, planted, matched = collect(images)
    print(f"{images} images, {planted} planted defects, {matched} matched (box IoU >= {MATCH_IOU})")
    print(f"{'mask':6} {'method':9} {'class':8} {'quantity':8} {'n':>5} {'median':>8} {'p90':>8}")
    for source, method, name, quantity, n, med, p90 in summary(errors):
        print(f"{source:6} {method:9} {name:8} {quantity:8} {n:5d} {med:7.1f}% {p90:7.1f}%")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    main(parser.parse_args().images)
