"""The straightforward pipeline the project's targets are measured against.

Written here on purpose, not borrowed from visionrpc.runtime: it is what a first, honest version
looks like. Full-size ``cv2.imdecode`` → ``cv2.resize`` + pad → float32 NCHW → a plain
``ort.InferenceSession`` with default options → numpy decoding + ``cv2.dnn.NMSBoxesBatched`` →
Ultralytics-style masks (``sigmoid(coeffs @ protos)`` over the whole proto map, cropped to the box,
upsampled to the input size, padding cut, resized to the full image, thresholded) to get each
defect's mask area, which is the work the server does for segmentation models (it computes mask
areas for every detection even when the client asks for no masks). Batches are run one after
another in the calling thread.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class Letterbox:
    gain: float  # input pixels per original pixel
    pad_x: int
    pad_y: int
    width: int  # original image size
    height: int


@dataclass(frozen=True)
class SimpleDetection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original pixels
    score: float
    class_id: int
    mask_area: int | None  # pixels of the instance mask, segmentation models only


class StraightforwardPipeline:
    """Encoded image bytes in, detections (with mask areas) out; one ORT call per batch."""

    def __init__(
        self, onnx_path: Path, *, confidence: float, iou: float, max_detections: int
    ) -> None:
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        names = ast.literal_eval(meta["names"]) if meta.get("names") else {}
        self.num_classes = len(names)
        shape = self.session.get_inputs()[0].shape
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            self.size = int(shape[2])
        else:
            imgsz = ast.literal_eval(meta.get("imgsz", "640"))
            self.size = int(imgsz[0] if isinstance(imgsz, list | tuple) else imgsz)
        self.confidence = confidence
        self.iou = iou
        self.max_detections = max_detections

    def preprocess(self, data: bytes) -> tuple[np.ndarray, Letterbox]:
        """Decode at full size, resize keeping the aspect ratio, pad with grey 114."""
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("cannot decode image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        s = self.size
        gain = min(s / w, s / h)
        new_w, new_h = round(w * gain), round(h * gain)
        resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        pad_x, pad_y = (s - new_w) // 2, (s - new_h) // 2
        canvas = np.full((s, s, 3), 114, np.uint8)
        canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
        tensor = canvas.transpose(2, 0, 1).astype(np.float32) / 255.0
        return tensor, Letterbox(gain, pad_x, pad_y, w, h)

    def __call__(self, batch: list[bytes]) -> list[list[SimpleDetection]]:
        prepared = [self.preprocess(data) for data in batch]
        tensor = np.stack([t for t, _ in prepared])
        outputs = self.session.run(None, {self.input_name: tensor})
        protos = outputs[1] if len(outputs) > 1 else None
        return [
            self.postprocess(outputs[0][i], None if protos is None else protos[i], lb)
            for i, (_, lb) in enumerate(prepared)
        ]

    def postprocess(
        self, pred: np.ndarray, protos: np.ndarray | None, lb: Letterbox
    ) -> list[SimpleDetection]:
        """[4 + nc + nm, N] rows of cx, cy, w, h, class scores, mask coefficients."""
        nc = self.num_classes or pred.shape[0] - 4 - (0 if protos is None else protos.shape[0])
        rows = pred.T
        class_scores = rows[:, 4 : 4 + nc]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores.max(axis=1)
        keep = scores >= self.confidence
        rows, scores, class_ids = rows[keep], scores[keep], class_ids[keep]
        if len(rows) == 0:
            return []
        cx, cy, bw, bh = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        xywh = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)
        kept = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), scores.tolist(), class_ids.tolist(), self.confidence, self.iou
        )
        order = sorted(np.asarray(kept).reshape(-1).tolist(), key=lambda i: -scores[i])
        order = order[: self.max_detections]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)[order]
        areas: list[int | None] = [None] * len(order)
        if protos is not None:
            areas = list(self.mask_areas(rows[order, 4 + nc :], protos, boxes, lb))
        boxes = (boxes - [lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y]) / lb.gain
        boxes = boxes.clip(0, [lb.width, lb.height, lb.width, lb.height])
        return [
            SimpleDetection(
                tuple(float(v) for v in box),  # type: ignore[arg-type]
                float(scores[i]),
                int(class_ids[i]),
                area,
            )
            for box, i, area in zip(boxes, order, areas, strict=True)
        ]

    def mask_areas(
        self, coeffs: np.ndarray, protos: np.ndarray, boxes_input: np.ndarray, lb: Letterbox
    ) -> list[int]:
        """Ultralytics' process_mask + scale_masks, one detection at a time, full frame."""
        nm, mh, mw = protos.shape
        masks = 1 / (1 + np.exp(-(coeffs @ protos.reshape(nm, -1))))
        masks = masks.reshape(-1, mh, mw).astype(np.float32)
        s = self.size
        ys, xs = np.arange(mh)[:, None], np.arange(mw)[None, :]
        new_w, new_h = round(lb.width * lb.gain), round(lb.height * lb.gain)
        areas = []
        for mask, box in zip(masks, boxes_input * (mw / s), strict=True):
            inside = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
            full = cv2.resize(mask * inside, (s, s), interpolation=cv2.INTER_LINEAR)
            cut = full[lb.pad_y : lb.pad_y + new_h, lb.pad_x : lb.pad_x + new_w]
            original = cv2.resize(cut, (lb.width, lb.height), interpolation=cv2.INTER_LINEAR)
            areas.append(int(np.count_nonzero(original > 0.5)))
        return areas
