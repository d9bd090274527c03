"""Count accuracy of ``visionrpc.evaluation``: exact figures on hand-made results."""

from __future__ import annotations

import numpy as np
import pytest

from visionrpc.evaluation import count_accuracy, duplicate_pairs
from visionrpc.synthetic import CLASS_NAMES, PlantedDefect, Sample
from visionrpc.types import BoxXYXY, Detection, InferenceResult


def planted(*classes: str) -> Sample:
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float64)
    defects = [PlantedDefect(CLASS_NAMES.index(c), square + 20 * i) for i, c in enumerate(classes)]
    return Sample(image=np.zeros((100, 100, 3), np.uint8), defects=defects)


def found(*dets: tuple[str, float, tuple[float, float, float, float]]) -> InferenceResult:
    detections = tuple(
        Detection(BoxXYXY(*box), score, CLASS_NAMES.index(name), name) for name, score, box in dets
    )
    return InferenceResult("m", "1", 100, 100, detections, ())


def test_duplicates_are_overlapping_detections_of_different_classes() -> None:
    box, shifted, far = (0, 0, 40, 10), (2, 0, 42, 10), (60, 60, 70, 70)  # IoU(box, shifted) 0.9
    assert duplicate_pairs(found(("scratch", 0.9, box), ("crack", 0.8, shifted)).detections) == 1
    same_class = found(("scratch", 0.9, box), ("scratch", 0.8, shifted))
    assert duplicate_pairs(same_class.detections) == 0
    apart = found(("scratch", 0.9, box), ("crack", 0.8, far))
    assert duplicate_pairs(apart.detections) == 0
    three = found(("scratch", 0.9, box), ("crack", 0.8, shifted), ("spot", 0.7, box))
    assert duplicate_pairs(three.detections) == 3


def test_count_accuracy_at_the_default_threshold() -> None:
    box, shifted = (0, 0, 40, 10), (2, 0, 42, 10)
    samples = [planted("scratch"), planted("scratch", "spot"), planted("crack"), planted()]
    results = [
        found(("scratch", 0.9, box), ("crack", 0.6, shifted)),  # one defect reported twice
        found(("scratch", 0.9, box), ("spot", 0.8, (60, 60, 70, 70))),  # exact
        found(("crack", 0.2, box)),  # below the threshold: missed
        found(("spot", 0.1, box)),  # below the threshold: nothing reported, as planted
    ]
    report = count_accuracy(samples, results, confidence_threshold=0.25)
    assert report.confidence_threshold == 0.25
    assert report.exact_rate == 0.5  # images 2 and 4
    assert report.mean_abs_error == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert (report.over_rate, report.under_rate) == (0.25, 0.25)
    assert (report.duplicate_pairs, report.images_with_duplicates) == (1, 1)
    assert report.per_class_exact_rate == {"scratch": 1.0, "spot": 1.0, "crack": 0.5}
    assert report.per_class_mean_abs_error == {"scratch": 0.0, "spot": 0.0, "crack": 0.5}
