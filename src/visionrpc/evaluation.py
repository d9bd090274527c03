"""Accuracy of a served model, measured through the gRPC API on a held-out generated set.

Ground truth is the generator's exact polygons; scoring is pycocotools' COCOeval (box and mask AP at
IoU 0.5), so the figures are comparable with any COCO-style report.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionrpc.synthetic import CLASS_NAMES, Sample, generate_sample
from visionrpc.types import InferenceResult

EVAL_SEED = 1000  # never used for training (training/train.py uses 1 and 2)

InferFn = Callable[[bytes], InferenceResult]

if TYPE_CHECKING:
    from visionrpc.client import Client


def served(client: Client, model: str = "") -> InferFn:
    """How an evaluation calls a server: every candidate (confidence 0.001, at most 100 per image,
    as COCO mAP expects) with masks as COCO RLE."""

    def infer(data: bytes) -> InferenceResult:
        return client.infer(
            data, model=model, confidence_threshold=0.001, max_detections=100, return_masks=True
        )

    return infer


@dataclass
class EvalReport:
    images: int
    instances: int
    box_map50: float
    mask_map50: float
    box_map50_95: float
    mask_map50_95: float
    per_class_box_map50: dict[str, float] = field(default_factory=dict)
    per_class_mask_map50: dict[str, float] = field(default_factory=dict)
    mean_latency_ms: float = 0.0


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


def evaluate(
    infer: InferFn,
    *,
    seed: int = EVAL_SEED,
    count: int = 200,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
) -> EvalReport:
    """Generate ``count`` images of stream ``seed``, run each through ``infer``, score them.

    ``infer`` must return masks as COCO RLE (full image frame) for the mask score.
    """
    samples: list[Sample] = []
    results: list[InferenceResult] = []
    for index in progress(range(count)):
        sample = generate_sample(seed, index)
        samples.append(sample)
        results.append(infer(encode_for_eval(sample)))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = _ground_truth(samples)
        coco_gt.createIndex()
    box50, box, box_cls = _score(coco_gt, _predictions(results, False), "bbox")
    mask50, mask, mask_cls = _score(coco_gt, _predictions(results, True), "segm")
    latencies = [r.timings.total_ms for r in results]
    return EvalReport(
        images=len(samples),
        instances=sum(len(s.defects) for s in samples),
        box_map50=box50,
        mask_map50=mask50,
        box_map50_95=box,
        mask_map50_95=mask,
        per_class_box_map50=box_cls,
        per_class_mask_map50=mask_cls,
        mean_latency_ms=float(np.mean(latencies)) if latencies else 0.0,
    )
