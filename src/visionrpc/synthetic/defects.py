"""Defect shapes planted on textures, each drawn from the exact polygon that becomes its label.

Sizes are given in *model pixels* (``unit`` image pixels each, where a model pixel is one pixel of a
320-px letterboxed input): a defect stays visible to the model whatever the image size, and thin
defects are at least 4 model pixels wide so their masks survive the model's 1/4-resolution mask
prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("scratch", "spot", "crack")
RIBBONS = frozenset({"scratch", "crack"})  # drawn by _ribbon: they have a centreline


@dataclass(frozen=True)
class PlantedDefect:
    """One planted defect: its class and its outline in image pixels (x, y)."""

    class_id: int
    polygon: np.ndarray  # (N, 2) float64, image pixels

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Tight box (x_min, y_min, x_max, y_max) of the polygon."""
        x_min, y_min = self.polygon.min(axis=0)
        x_max, y_max = self.polygon.max(axis=0)
        return float(x_min), float(y_min), float(x_max), float(y_max)

    @property
    def area(self) -> float:
        """Exact area of the polygon (shoelace), image pixels²."""
        x, y = self.polygon[:, 0], self.polygon[:, 1]
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)

    @property
    def length(self) -> float:
        """Scratches and cracks: the length of the centreline they were drawn along; spots: the
        long side of their minimum-area rectangle. Image pixels."""
        if self.class_name in RIBBONS:
            centreline, _ = ribbon_axis(self.polygon)
            return float(np.linalg.norm(np.diff(centreline, axis=0), axis=1).sum())
        return max(_rect_sides(self.polygon))

    @property
    def width(self) -> float:
        """Scratches and cracks: the mean width, area / length; spots: the short side of their
        minimum-area rectangle. Image pixels."""
        if self.class_name in RIBBONS:
            return self.area / self.length
        return min(_rect_sides(self.polygon))


def ribbon_axis(polygon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centreline and the widths along it of an outline made by :func:`_ribbon`."""
    n = len(polygon) // 2
    left, right = polygon[:n], polygon[n:][::-1]
    return (left + right) / 2, np.linalg.norm(left - right, axis=1)


def _rect_sides(polygon: np.ndarray) -> tuple[float, float]:
    (_, _), (w, h), _ = cv2.minAreaRect(polygon.astype(np.float32))
    return float(w), float(h)


def _ribbon(centerline: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Outline of a stroke of varying width along ``centerline`` (left side, then right back)."""
    tangent = np.gradient(centerline, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    half = (widths / 2.0)[:, None]
    left = centerline + normal * half
    right = centerline - normal * half
    return np.concatenate([left, right[::-1]], axis=0)


def scratch_polygon(rng: np.random.Generator, origin: np.ndarray, unit: float) -> np.ndarray:
    """A smooth, gently curved stroke of almost constant width."""
    length = rng.uniform(50, 170) * unit
    n = 24
    heading = rng.uniform(0, 2 * np.pi)
    curvature = rng.uniform(-1.0, 1.0) / length  # total turn up to ~1 radian
    steps = np.full(n - 1, length / (n - 1))
    headings = heading + np.cumsum(np.full(n - 1, curvature * length / (n - 1)))
    deltas = np.stack([np.cos(headings), np.sin(headings)], axis=1) * steps[:, None]
    line = origin + np.concatenate([np.zeros((1, 2)), np.cumsum(deltas, axis=0)], axis=0)
    width = rng.uniform(5.0, 8.0) * unit
    taper = np.minimum(1.0, 0.45 + 3.0 * np.minimum(np.linspace(0, 1, n), np.linspace(1, 0, n)))
    return _ribbon(line, width * taper)


def crack_polygon(rng: np.random.Generator, origin: np.ndarray, unit: float) -> np.ndarray:
    """A jagged random walk, widest in the middle and narrowing to its tips."""
    length = rng.uniform(45, 150) * unit
    n = int(rng.integers(10, 18))
    step = length / (n - 1)
    heading = rng.uniform(0, 2 * np.pi)
    headings = heading + rng.uniform(-0.7, 0.7, n - 1)
    deltas = np.stack([np.cos(headings), np.sin(headings)], axis=1) * step
    line = origin + np.concatenate([np.zeros((1, 2)), np.cumsum(deltas, axis=0)], axis=0)
    width = rng.uniform(4.5, 7.5) * unit
    profile = 0.5 + 0.5 * np.sin(np.linspace(0, np.pi, n))
    return _ribbon(line, width * profile)


def spot_polygon(rng: np.random.Generator, origin: np.ndarray, unit: float) -> np.ndarray:
    """An irregular, roughly elliptical blob (a pit, stain or corrosion spot)."""
    radius = rng.uniform(6, 24) * unit
    aspect = rng.uniform(0.6, 1.0)
    rotation = rng.uniform(0, np.pi)
    theta = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    wobble = 1.0 + sum(
        rng.uniform(0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    xs = radius * wobble * np.cos(theta)
    ys = radius * aspect * wobble * np.sin(theta)
    cos, sin = np.cos(rotation), np.sin(rotation)
    points = np.stack([xs * cos - ys * sin, xs * sin + ys * cos], axis=1)
    outline: np.ndarray = origin + points
    return outline


SHAPES = (scratch_polygon, spot_polygon, crack_polygon)


def _coverage(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``polygon`` (sub-pixel precise, 1/16 px)."""
    mask = np.zeros((height, width), np.uint8)
    pts = np.round(polygon * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255.0


def paint(rng: np.random.Generator, image: np.ndarray, defect: PlantedDefect, unit: float) -> None:
    """Draw ``defect`` onto ``image`` (float RGB in [0, 1], modified in place)."""
    height, width = image.shape[:2]
    alpha = _coverage(defect.polygon, height, width)
    grain = 1.0 + 0.08 * rng.standard_normal((height, width)).astype(np.float32)
    if defect.class_name == "scratch":
        if rng.random() < 0.6:  # bright, specular groove
            target = image + (1.0 - image) * rng.uniform(0.45, 0.8)
        else:  # dark groove
            target = image * rng.uniform(0.25, 0.5)
    elif defect.class_name == "crack":
        target = image * rng.uniform(0.05, 0.25)
    else:
        if rng.random() < 0.5:  # dark pit
            target = image * rng.uniform(0.15, 0.4)
        else:  # rust / stain
            rust = np.array([0.55, 0.25, 0.08], np.float32) * rng.uniform(0.7, 1.2)
            target = np.broadcast_to(rust, image.shape).copy()
    target = np.clip(target * grain[..., None], 0.0, 1.0)
    strength = rng.uniform(0.8, 1.0)
    a = (alpha * strength)[..., None]
    image[:] = image * (1.0 - a) + target * a
