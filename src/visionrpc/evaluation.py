"""Accuracy of a served model, measured through the gRPC API on a held-out generated set.

Ground truth is the generator's exact polygons; scoring is pycocotools' COCOeval (box and mask AP at
IoU 0.5), so the figures are comparable with any COCO-style report. Count accuracy is what an
inspection line checks: at the model's default confidence threshold, does each image report as
many defects (of each class) as were planted, and how often is one defect reported twice under
two classes?
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionrpc.synthetic import CLASS_NAMES, Sample, generate_sample
from visionrpc.types import (
    BoxXYXY,
    Detection,
    InferenceResult,
    Measurement,
    RuleSet,
    Task,
    Verdict,
)

EVAL_SEED = 1000  # never used for training (training/train.py uses 1 and 2)
DUPLICATE_IOU = 0.5  # two detections of different classes overlapping this much: one defect

InferFn = Callable[[bytes], InferenceResult]

if TYPE_CHECKING:
    from visionrpc.client import Client


@dataclass(frozen=True)
class ServedModel:
    """A server's model as an evaluation calls it, and its default operating point."""

    name: str
    infer: InferFn  # every candidate (confidence 0.001), masks as COCO RLE
    confidence_threshold: float  # the model's default: where detections are counted
    agnostic_nms: bool  # what this evaluation runs with
    judge: InferFn | None = None  # at the default confidence with the rules, for verdicts
    rules: RuleSet | None = None
    pixels_per_mm: float | None = None


def served(
    client: Client,
    model: str = "",
    *,
    agnostic_nms: bool | None = None,
    rules: RuleSet | None = None,
    pixels_per_mm: float | None = None,
) -> ServedModel:
    """How an evaluation calls a server: every candidate (confidence 0.001, at most 100 per image
    as COCO mAP expects, or the model's default maximum if lower) with masks as COCO RLE;
    ``agnostic_nms`` None is the model's default. With ``rules``, each image is also sent as a
    line would send it (default confidence) with the rules, for the verdict."""
    info = client.get_model_info(model)
    agnostic = info.default_agnostic_nms if agnostic_nms is None else agnostic_nms
    max_detections = min(100, info.default_max_detections)

    def infer(data: bytes) -> InferenceResult:
        return client.infer(
            data,
            model=info.name,
            confidence_threshold=0.001,
            max_detections=max_detections,
            return_masks=info.task is Task.SEGMENT,  # a detect model scores 0 mask mAP
            agnostic_nms=agnostic,
        )

    def judge(data: bytes) -> InferenceResult:
        return client.infer(
            data,
            model=info.name,
            agnostic_nms=agnostic,
            rules=rules,
            pixels_per_mm=pixels_per_mm,
        )

    return ServedModel(
        info.name,
        infer,
        info.default_confidence_threshold,
        agnostic,
        judge if rules is not None else None,
        rules,
        pixels_per_mm,
    )


@dataclass
class VerdictReport:
    """The server's verdicts against those the same rules give on the planted defects."""

    rules: int
    accuracy: float  # share of images whose verdict is the truth's
    confusion: dict[str, dict[str, int]]  # truth's verdict -> server's verdict -> images
    per_rule_agreement: dict[str, float] = field(default_factory=dict)
    """Per rule: share of images where it fired on both sides or on neither."""


def truth_detections(sample: Sample, pixels_per_mm: float | None) -> list[Detection]:
    """The planted defects as a perfect model would report them, with their exact sizes."""
    k = pixels_per_mm
    out = []
    for defect in sample.defects:
        area, length, width = defect.area, defect.length, defect.width
        m = Measurement(
            area_px=area,
            length_px=length,
            width_px=width,
            area_mm2=area / (k * k) if k else None,
            length_mm=length / k if k else None,
            width_mm=width / k if k else None,
            from_mask=True,
        )
        box = BoxXYXY(*defect.bbox)
        out.append(Detection(box, 1.0, defect.class_id, defect.class_name, measurement=m))
    return out


def verdict_accuracy(
    samples: Sequence[Sample],
    results: Sequence[InferenceResult],
    rules: RuleSet,
    pixels_per_mm: float | None,
) -> VerdictReport:
    from visionrpc.runtime.rules import evaluate as judge  # needs OpenCV, as this module does

    names = [v.value for v in Verdict]
    confusion = {t: dict.fromkeys(names, 0) for t in names}
    agree = dict.fromkeys((r.name for r in rules.rules), 0)
    right = 0
    for sample, result in zip(samples, results, strict=True):
        truth = judge(rules, truth_detections(sample, pixels_per_mm))
        got = result.verdict or judge(rules, ())  # no verdict back: as if nothing fired
        confusion[truth.verdict.value][got.verdict.value] += 1
        right += truth.verdict is got.verdict
        fired_truth = {h.rule for h in truth.hits}
        fired_got = {h.rule for h in got.hits}
        for name in agree:
            agree[name] += (name in fired_truth) == (name in fired_got)
    n = len(samples) or 1
    return VerdictReport(
        rules=len(rules.rules),
        accuracy=right / n,
        confusion=confusion,
        per_rule_agreement={name: count / n for name, count in agree.items()},
    )


@dataclass
class CountReport:
    """Detections counted per image at the model's default confidence, against planted defects."""

    confidence_threshold: float
    exact_rate: float  # share of images reporting exactly as many defects as were planted
    mean_abs_error: float  # mean over images of |reported - planted|
    over_rate: float  # share of images reporting more than planted
    under_rate: float  # share of images reporting fewer than planted
    duplicate_pairs: int  # pairs of detections of different classes with box IoU >= 0.5
    images_with_duplicates: int
    per_class_exact_rate: dict[str, float] = field(default_factory=dict)
    per_class_mean_abs_error: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalReport:
    model: str
    agnostic_nms: bool
    images: int
    instances: int
    box_map50: float
    mask_map50: float
    box_map50_95: float
    mask_map50_95: float
    counts: CountReport
    per_class_box_map50: dict[str, float] = field(default_factory=dict)
    per_class_mask_map50: dict[str, float] = field(default_factory=dict)
    mean_latency_ms: float = 0.0
    verdicts: VerdictReport | None = None  # when evaluated with rules


def encode_for_eval(sample: Sample) -> bytes:
    """Samples are sent as a camera would send them: JPEG, quality 95."""
    bgr = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _ground_truth(samples: list[Sample]) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, sample in enumerate(samples, start=1):
        images.append({"id": image_id, "width": sample.width, "height": sample.height})
        for defect in sample.defects:
            x0, y0, x1, y1 = defect.bbox
            poly = defect.polygon
            area = 0.5 * abs(
                float(np.dot(poly[:, 0], np.roll(poly[:, 1], 1)))
                - float(np.dot(poly[:, 1], np.roll(poly[:, 0], 1)))
            )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": defect.class_id + 1,
                    "iscrowd": 0,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": area,
                    "segmentation": [poly.reshape(-1).tolist()],
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _predictions(results: list[InferenceResult], with_masks: bool) -> list[dict[str, Any]]:
    out = []
    for image_id, result in enumerate(results, start=1):
        for d in result.detections:
            if d.class_name not in CLASS_NAMES:
                continue
            entry = {
                "image_id": image_id,
                "category_id": CLASS_NAMES.index(d.class_name) + 1,
                "score": d.score,
                "bbox": [
                    d.box.x_min,
                    d.box.y_min,
                    d.box.x_max - d.box.x_min,
                    d.box.y_max - d.box.y_min,
                ],
            }
            if with_masks:
                if d.mask is None or not d.mask.rle_counts:
                    continue
                entry["segmentation"] = {
                    "size": list(d.mask.rle_size),
                    "counts": d.mask.rle_counts.encode(),
                }
            out.append(entry)
    return out


def _score(
    coco_gt: COCO, predictions: list[dict[str, Any]], iou_type: str
) -> tuple[float, float, dict[str, float]]:
    if not predictions:
        return 0.0, 0.0, dict.fromkeys(CLASS_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(predictions)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval[
        "precision"
    ]  # [T, R, K, A, M]; T=0 is IoU 0.5, A=0 all areas, M=-1 100 dets
    per_class = {}
    for k, name in enumerate(CLASS_NAMES):
        p = precision[0, :, k, 0, -1]
        p = p[p > -1]
        per_class[name] = float(p.mean()) if p.size else 0.0
    return float(ev.stats[1]), float(ev.stats[0]), per_class


def _box_iou(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) float x1, y1, x2, y2 boxes."""
    x1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area[:, None] + area[None, :] - inter
    iou: np.ndarray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def duplicate_pairs(detections: Sequence[Detection], iou: float = DUPLICATE_IOU) -> int:
    """Pairs of detections of different classes whose boxes overlap by ``iou`` or more: one
    defect reported twice."""
    if len(detections) < 2:
        return 0
    boxes = np.array(
        [[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max] for d in detections], np.float64
    )
    classes = np.array([d.class_name for d in detections])
    overlaps = _box_iou(boxes) >= iou
    different = classes[:, None] != classes[None, :]
    return int(np.triu(overlaps & different, k=1).sum())


def count_accuracy(
    samples: Sequence[Sample], results: Sequence[InferenceResult], confidence_threshold: float
) -> CountReport:
    """Counts of the detections at or above ``confidence_threshold`` against the planted defects.

    Taken from the same low-threshold results as mAP: NMS lets only higher scores suppress lower
    ones, so the detections above the threshold are exactly what a default request returns.
    """
    kept = [[d for d in r.detections if d.score >= confidence_threshold] for r in results]
    reported = np.array([len(k) for k in kept])
    planted = np.array([len(s.defects) for s in samples])
    error = reported - planted
    exact, mae = {}, {}
    for name in CLASS_NAMES:
        got = np.array([sum(d.class_name == name for d in k) for k in kept])
        want = np.array([sum(p.class_name == name for p in s.defects) for s in samples])
        exact[name] = float(np.mean(got == want)) if len(samples) else 0.0
        mae[name] = float(np.mean(np.abs(got - want))) if len(samples) else 0.0
    pairs = [duplicate_pairs(k) for k in kept]
    n = len(samples) or 1
    return CountReport(
        confidence_threshold=confidence_threshold,
        exact_rate=float(np.sum(error == 0)) / n,
        mean_abs_error=float(np.sum(np.abs(error))) / n,
        over_rate=float(np.sum(error > 0)) / n,
        under_rate=float(np.sum(error < 0)) / n,
        duplicate_pairs=sum(pairs),
        images_with_duplicates=sum(p > 0 for p in pairs),
        per_class_exact_rate=exact,
        per_class_mean_abs_error=mae,
    )


def evaluate(
    model: ServedModel,
    *,
    seed: int = EVAL_SEED,
    count: int = 200,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
) -> EvalReport:
    """Generate ``count`` images of stream ``seed``, run each through the model, score them."""
    if count < 1:
        raise ValueError(f"count is {count}; evaluate at least one image")
    samples: list[Sample] = []
    results: list[InferenceResult] = []
    judged: list[InferenceResult] = []
    for index in progress(range(count)):
        sample = generate_sample(seed, index)
        samples.append(sample)
        data = encode_for_eval(sample)
        results.append(model.infer(data))
        if model.judge is not None:
            judged.append(model.judge(data))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = _ground_truth(samples)
        coco_gt.createIndex()
    box50, box, box_cls = _score(coco_gt, _predictions(results, False), "bbox")
    mask50, mask, mask_cls = _score(coco_gt, _predictions(results, True), "segm")
    latencies = [r.timings.total_ms for r in results]
    return EvalReport(
        model=model.name,
        agnostic_nms=model.agnostic_nms,
        images=len(samples),
        instances=sum(len(s.defects) for s in samples),
        box_map50=box50,
        mask_map50=mask50,
        box_map50_95=box,
        mask_map50_95=mask,
        counts=count_accuracy(samples, results, model.confidence_threshold),
        per_class_box_map50=box_cls,
        per_class_mask_map50=mask_cls,
        mean_latency_ms=float(np.mean(latencies)) if latencies else 0.0,
        verdicts=(
            verdict_accuracy(samples, judged, model.rules, model.pixels_per_mm)
            if model.rules is not None and model.judge is not None
            else None
        ),
    )
