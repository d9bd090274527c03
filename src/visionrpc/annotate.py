"""Turn results back into pixels: decode wire masks and draw boxes, labels and masks on an image,
with the verdict in a banner above it, each detection's size in its label and the rules' zones
outlined."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from visionrpc.inspection import hit_text, size_text
from visionrpc.types import EncodedMask, InferenceResult, Keypoint, MaskFormat, RuleSet, Verdict

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (250, 190, 212),  # pink
    (128, 0, 0),  # maroon
    (128, 128, 0),  # olive
    (0, 0, 128),  # navy
)
"""RGB class colours: twelve of Sasha Trubetskoy's distinct colours, chosen so that any two are
far apart (class ids beyond twelve reuse them)."""

FONT = cv2.FONT_HERSHEY_SIMPLEX

VERDICT_COLORS: dict[Verdict, tuple[int, int, int]] = {
    Verdict.PASS: (20, 140, 40),  # green
    Verdict.REVIEW: (255, 176, 0),  # amber
    Verdict.FAIL: (200, 20, 30),  # red
}
"""RGB banner colour of each verdict."""
ZONE_COLOR = (255, 225, 25)  # yellow: a rule's region of interest
IGNORE_ZONE_COLOR = (160, 160, 160)  # grey: detections there take part in no rule
BANNER_MAX_HITS = 6
"""Fired rules listed in the banner; more are summed up in one line."""


def color_for(class_id: int) -> tuple[int, int, int]:
    return PALETTE[class_id % len(PALETTE)]


def _luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour."""
    c = np.array(rgb, float) / 255
    lin = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ (0.2126, 0.7152, 0.0722))


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG contrast ratio (1 to 21) of two colours."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_color_for(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background``."""
    black, white = (0, 0, 0), (255, 255, 255)
    return max((black, white), key=lambda c: contrast_ratio(c, background))


@dataclass(frozen=True)
class LabelBox:
    """Where a detection's label goes: the text and its filled rectangle (x1, y1 exclusive)."""

    text: str
    x0: int
    y0: int
    x1: int
    y1: int

    def overlaps(self, other: LabelBox) -> bool:
        return (
            self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1
        )


def _style(height: int, width: int) -> tuple[int, float]:
    """(line thickness, font scale) that stay visible as the image grows."""
    thickness = max(1, round(max(height, width) / 400))
    return thickness, 0.4 * thickness


def layout_labels(result: InferenceResult, height: int, width: int) -> list[LabelBox]:
    """A label per detection, in order: above its box, else inside its top edge, else below it,
    else inside its bottom edge, else the row nearest its top that lies within the image and covers
    no earlier label (if none does, above the box, clamped into the image)."""
    thickness, scale = _style(height, width)
    placed: list[LabelBox] = []
    for det in result.detections:
        size = size_text(det)
        text = f"{det.class_name} {det.score:.2f}" + (f" {size}" if size else "")
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
        w, h = tw + 2, th + base + 2
        x = min(max(round(det.box.x_min), 0), max(width - w, 0))
        top, bottom = round(det.box.y_min), round(det.box.y_max)
        rows = range(0, max(height - h, 0) + 1, max(h // 2, 1))
        candidates = [top - h, top, bottom, bottom - h, *sorted(rows, key=lambda y: abs(y - top))]
        fits = (LabelBox(text, x, y, x + w, y + h) for y in candidates if 0 <= y <= height - h)
        free = next((b for b in fits if not any(b.overlaps(p) for p in placed)), None)
        y = min(max(top - h, 0), max(height - h, 0))
        placed.append(free or LabelBox(text, x, y, x + w, y + h))
    return placed


def decode_mask(mask: EncodedMask, height: int, width: int) -> np.ndarray:
    """A wire mask as a full-image boolean array of shape (height, width)."""
    if mask.format is MaskFormat.RLE:
        rle = {"size": list(mask.rle_size), "counts": mask.rle_counts.encode()}
        decoded: np.ndarray = coco_mask.decode(rle)
        return decoded.astype(bool)
    out = np.zeros((height, width), np.uint8)
    if mask.format is MaskFormat.PNG:
        patch = cv2.imdecode(np.frombuffer(mask.png, np.uint8), cv2.IMREAD_GRAYSCALE)
        if patch is None:
            raise ValueError("mask PNG could not be decoded")
        x, y = mask.png_origin
        h, w = min(patch.shape[0], height - y), min(patch.shape[1], width - x)
        out[y : y + h, x : x + w] = patch[:h, :w]
    else:
        polys = [np.round(p).astype(np.int32) for p in mask.polygons if len(p) >= 3]
        cv2.fillPoly(out, polys, 255)
    return out > 0


def banner_lines(result: InferenceResult) -> list[str]:
    """The banner's text: the verdict, then the rules that fired (the first few)."""
    if result.verdict is None:
        return []
    hits = result.verdict.hits
    lines = [f"{result.verdict.verdict.value}" + (f": {len(hits)} rule hit(s)" if hits else "")]
    lines += [hit_text(h) for h in hits[:BANNER_MAX_HITS]]
    if len(hits) > BANNER_MAX_HITS:
        lines.append(f"... {len(hits) - BANNER_MAX_HITS} more")
    return lines


def draw_banner(canvas: np.ndarray, result: InferenceResult) -> np.ndarray:
    """``canvas`` below a banner in the verdict's colour that lists the fired rules; the image
    keeps every pixel (the banner is added above it, not drawn over it)."""
    if result.verdict is None:
        return canvas
    lines = banner_lines(result)
    height, width = canvas.shape[:2]
    thickness, scale = _style(height, width)
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, thickness)
    row = th + base + 4
    color = VERDICT_COLORS[result.verdict.verdict]
    banner = np.empty((row * len(lines) + 4, width, 3), np.uint8)
    banner[:] = color
    ink = text_color_for(color)
    for i, line in enumerate(lines):
        origin = (4, 2 + row * (i + 1) - base - 2)
        bold = thickness + 1 if i == 0 else thickness
        cv2.putText(banner, line, origin, FONT, scale, ink, bold, cv2.LINE_AA)
    return np.vstack([banner, canvas])


def draw_zones(canvas: np.ndarray, rules: RuleSet) -> None:
    """Outline the rules' zones (named) and ignore zones on ``canvas``."""
    height, width = canvas.shape[:2]
    thickness, scale = _style(height, width)
    named = [(name, points, ZONE_COLOR) for name, points in rules.zones]
    ignored = [("ignore", points, IGNORE_ZONE_COLOR) for points in rules.ignore_zones]
    for name, points, color in (*named, *ignored):
        polygon = np.round(np.asarray(points, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [polygon], True, color, thickness, cv2.LINE_8)
        x, y = polygon[:, 0, 0].min(), polygon[:, 0, 1].min()
        (_, th), _ = cv2.getTextSize(name, FONT, scale, thickness)
        origin = (int(max(x, 0)) + 2, int(max(y, 0)) + th + 2)
        cv2.putText(canvas, name, origin, FONT, scale, color, thickness, cv2.LINE_AA)


def draw(
    image_rgb: np.ndarray, result: InferenceResult, rules: RuleSet | None = None
) -> np.ndarray:
    """A copy of ``image_rgb`` with each detection's mask (translucent), box and label (with its
    size when measured) drawn, the zones of ``rules`` outlined, and, when the result has a
    verdict, a banner above the image (the output is then taller than the input)."""
    canvas = image_rgb.copy()
    height, width = canvas.shape[:2]
    thickness, scale = _style(height, width)
    if rules is not None:
        draw_zones(canvas, rules)
    for det in result.detections:
        if det.mask is not None:
            region = decode_mask(det.mask, height, width)
            tint = np.array(color_for(det.class_id))
            canvas[region] = (0.55 * canvas[region] + 0.45 * tint).astype(np.uint8)
    for det in result.detections:
        if det.rotated_box is not None:
            quad = np.round(np.asarray(det.rotated_box.corners)).astype(np.int32)
            cv2.polylines(canvas, [quad], True, color_for(det.class_id), thickness, cv2.LINE_AA)
        else:
            p1 = (round(det.box.x_min), round(det.box.y_min))
            p2 = (round(det.box.x_max), round(det.box.y_max))
            cv2.rectangle(canvas, p1, p2, color_for(det.class_id), thickness, cv2.LINE_AA)
        draw_keypoints(canvas, det.keypoints, thickness)
    for det, label in zip(result.detections, layout_labels(result, height, width), strict=True):
        color = color_for(det.class_id)
        cv2.rectangle(canvas, (label.x0, label.y0), (label.x1 - 1, label.y1 - 1), color, -1)
        _, base = cv2.getTextSize(label.text, FONT, scale, thickness)
        origin = (label.x0 + 1, label.y1 - base - 1)
        cv2.putText(
            canvas, label.text, origin, FONT, scale, text_color_for(color), thickness, cv2.LINE_AA
        )
    draw_classifications(canvas, result, thickness, scale)
    return draw_banner(canvas, result)


VISIBLE = 0.5  # keypoints the model is less sure are visible are not drawn (as Ultralytics does)


def draw_keypoints(canvas: np.ndarray, keypoints: Sequence[Keypoint], thickness: int) -> None:
    """Each visible keypoint as a dot in a colour of its index (the model's keypoint order)."""
    radius = 2 + thickness
    for i, point in enumerate(keypoints):
        if point.visibility < VISIBLE:
            continue
        centre = (round(point.x), round(point.y))
        cv2.circle(canvas, centre, radius, color_for(i), -1, cv2.LINE_AA)
        cv2.circle(canvas, centre, radius, (255, 255, 255), 1, cv2.LINE_AA)


def draw_classifications(
    canvas: np.ndarray, result: InferenceResult, thickness: int, scale: float
) -> None:
    """A classification model's classes, best first, one line each at the top left."""
    y = 0
    for c in result.classifications:
        text = f"{c.class_name} {c.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
        color = color_for(c.class_id)
        cv2.rectangle(canvas, (0, y), (tw + 2, y + th + base + 2), color, -1)
        cv2.putText(
            canvas,
            text,
            (1, y + th + 1),
            FONT,
            scale,
            text_color_for(color),
            thickness,
            cv2.LINE_AA,
        )
        y += th + base + 2
