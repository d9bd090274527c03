"""Sizes of detections: area, length and width in pixels, and in millimetres given a scale.

Length and width of an elongated or curved mask come from its skeleton: the centreline's length
(the longest path through the skeleton, straightened to within a cell, plus the distance from
each end to the mask's edge, which thinning eats) and the mean width, area / length. A
minimum-area rectangle is right for straight bars but takes a curved crack's chord for its length
and the bulge of the curve for its width; for a compact blob (a spot) it is the better of the two,
since a blob's skeleton has no clear ends. So the default ("auto") takes the rectangle for masks
that fill most of a not-too-long rectangle and the skeleton otherwise (bench/measure_accuracy.py
and the README's table compare them against the generator's exact shapes). Without a mask (a
detect-only model) the box stands in: its long side and short side.

The scale is pixels per millimetre: per request, else per model (``pixels_per_mm`` in model.yaml,
or a calibration file, see :func:`read_calibration`).
"""

from __future__ import annotations

import collections
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import yaml

from visionrpc.runtime.yolo import BoxMask
from visionrpc.types import BoxXYXY, Detection, Measurement

Method = Literal["auto", "skeleton", "rect"]
COMPACT_FILL = 0.6  # "auto": a mask filling this much of its rectangle ...
COMPACT_ASPECT = 3.0  # ... no more than this many times longer than wide is a blob
MAX_MEASURE_SIDE = 128
"""A mask is measured on a grid at most this many cells on its long side: the model's masks come
from prototypes at a quarter of its input resolution, so a finer grid adds cost, not detail."""


def read_calibration(path: Path) -> float:
    """Pixels per millimetre from a calibration file (YAML or JSON), one of:

    - ``pixels_per_mm: 12.5``
    - ``points: [[x1, y1], [x2, y2]]`` and ``distance_mm: 40``: two image points (pixels) of a
      reference of known length, e.g. the ends of a ruler or two fiducials.

    Raises ValueError saying what is wrong.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read calibration file {path}: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"calibration file {path} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"calibration file {path} must hold a mapping")
    if set(data) == {"pixels_per_mm"}:
        value = data["pixels_per_mm"]
    elif set(data) == {"points", "distance_mm"}:
        points = np.asarray(data["points"], dtype=np.float64)
        distance = float(data["distance_mm"])
        if points.shape != (2, 2) or not np.isfinite(points).all():
            raise ValueError(f"calibration file {path}: points must be two [x, y] pairs")
        if not (math.isfinite(distance) and distance > 0):
            raise ValueError(f"calibration file {path}: distance_mm must be > 0")
        value = float(np.linalg.norm(points[1] - points[0])) / distance
    else:
        raise ValueError(
            f"calibration file {path} must hold either pixels_per_mm, or points (two [x, y] "
            f"pairs) and distance_mm; it has {sorted(data)}"
        )
    if not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"calibration file {path}: pixels_per_mm must be a number > 0")
    return float(value)


def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Zhang-Suen's two deletion tests for each of the 256 neighbourhoods, indexed by the bits
    N, NE, E, SE, S, SW, W, NW (1, 2, 4, ... 128)."""
    tables = np.zeros((2, 256), bool)
    for code in range(256):
        p2, p3, p4, p5, p6, p7, p8, p9 = ((code >> k) & 1 for k in range(8))
        ring = (p2, p3, p4, p5, p6, p7, p8, p9, p2)
        neighbours = sum(ring[:-1])
        transitions = sum(a == 0 and b == 1 for a, b in itertools.pairwise(ring))
        if 2 <= neighbours <= 6 and transitions == 1:
            tables[0, code] = p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
            tables[1, code] = p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
    return tables[0], tables[1]


_THINNING = _thinning_tables()
_NEIGHBOUR_BITS = np.array([[128, 1, 2], [64, 0, 4], [32, 16, 8]], np.float32)


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a binary mask to a one-pixel, 8-connected skeleton (bool)."""
    img = np.pad(mask.astype(np.float32), 1)
    while True:
        changed = False
        for table in _THINNING:
            codes = cv2.filter2D(img, -1, _NEIGHBOUR_BITS, borderType=cv2.BORDER_CONSTANT)
            remove = (img > 0) & table[codes.astype(np.uint8)]
            if remove.any():
                img[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1] > 0


def skeleton_length(skeleton: np.ndarray, distance: np.ndarray) -> float:
    """Length in cells of the longest path through each connected piece of a skeleton (so the
    short spurs thinning leaves at corners do not count), plus at both of its ends the distance
    to the mask's edge that thinning removed. The path is straightened to within one cell before
    it is measured: a staircase of pixel steps is longer than the line it stands for."""
    cells = [(int(r), int(c)) for r, c in np.argwhere(skeleton)]
    nodes = set(cells)
    seen: set[tuple[int, int]] = set()
    total = 0.0
    for start in cells:
        if start in seen:
            continue
        far, came_from = _farthest(start, nodes)
        seen |= set(came_from)
        end, came_from = _farthest(far, nodes)
        path = [end]
        while path[-1] != far:
            path.append(came_from[path[-1]])
        line = np.array(path, np.float32)[:, None, ::-1]  # (x, y) points for OpenCV
        straight = cv2.approxPolyDP(line, PATH_TOLERANCE, False)
        total += cv2.arcLength(straight, False) + float(distance[far]) + float(distance[end])
    return total


PATH_TOLERANCE = 1.0  # cells a straightened skeleton path may stray from the pixels
_STEPS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


Cell = tuple[int, int]


def _farthest(start: Cell, nodes: set[Cell]) -> tuple[Cell, dict[Cell, Cell]]:
    """Breadth-first search over 8-connected cells: the last cell reached from ``start`` (the
    farthest in steps), and each reached cell's predecessor (``start`` is its own). On a
    skeleton, a tree of thin paths, two such searches find its longest path."""
    came_from = {start: start}
    queue = collections.deque([start])
    last = start
    while queue:
        last = r, c = queue.popleft()
        for dy, dx in _STEPS:
            n = (r + dy, c + dx)
            if n in nodes and n not in came_from:
                came_from[n] = last
                queue.append(n)
    return last, came_from


def shape_of(
    mask: np.ndarray, cell: float = 1.0, method: Method = "auto", *, area: float | None = None
) -> tuple[float, float]:
    """(length, width) in image pixels of a binary mask whose cells are ``cell`` pixels wide:
    by its skeleton, its minimum-area rectangle, or ("auto") the rectangle for a compact blob and
    the skeleton for anything elongated or curved. ``area`` (image pixels) is the mask's area
    when known better than cells x cell² (a coarse mask's last row and column are partial)."""
    if mask.size == 0 or not mask.any():
        return 0.0, 0.0
    h, w = mask.shape
    if area is None:
        area = float(np.count_nonzero(mask)) * cell * cell  # before any reduction
    grid = mask.astype(np.uint8)
    if method != "skeleton":
        (_, _), (rw, rh), _ = cv2.minAreaRect(cv2.findNonZero(grid))
        # a rectangle through pixel centres: each side one pixel short of the pixels it spans
        long, short = (max(rw, rh) + 1.0) * cell, (min(rw, rh) + 1.0) * cell
        compact = area >= COMPACT_FILL * long * short and long <= COMPACT_ASPECT * short
        if method == "rect" or compact:
            return long, short
    factor = max(1, math.ceil(max(h, w) / MAX_MEASURE_SIDE))
    if factor > 1:
        size = (max(1, round(w / factor)), max(1, round(h / factor)))
        coarse = cv2.resize(grid.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        grid = (coarse >= 0.5).astype(np.uint8)
        if not grid.any():
            grid = (coarse >= coarse.max()).astype(np.uint8)
        cell *= w / size[0]
    distance = cv2.distanceTransform(np.pad(grid, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[
        1:-1, 1:-1
    ]
    length = max(skeleton_length(thin(grid), distance), 1.0) * cell
    return length, area / length


def box_shape(box: BoxXYXY) -> tuple[float, float]:
    """(length, width) of a box: its long side and its short side."""
    w, h = max(0.0, box.x_max - box.x_min), max(0.0, box.y_max - box.y_min)
    return max(w, h), min(w, h)


def measure(
    detections: Sequence[Detection],
    masks: Sequence[BoxMask] | None,
    *,
    pixels_per_mm: float | None,
    shape: bool,
    method: Method = "auto",
) -> tuple[Detection, ...]:
    """``detections`` with their measurement; ``masks`` (one per detection) when the model
    segments. Length and width only with ``shape`` (the skeleton costs; area does not)."""
    out = []
    for i, det in enumerate(detections):
        mask = masks[i] if masks is not None else None
        if mask is not None:  # the pipeline counted its pixels already (mask_area_px)
            area = float(det.mask_area_px if det.mask_area_px is not None else mask.area)
            dims = shape_of(mask.mask, float(mask.step), method, area=area) if shape else None
        else:
            area = det.box.area
            dims = box_shape(det.box) if shape else None
        length, width = dims if dims is not None else (None, None)
        k = pixels_per_mm
        m = Measurement(
            area_px=area,
            length_px=length,
            width_px=width,
            area_mm2=area / (k * k) if k else None,
            length_mm=length / k if k and length is not None else None,
            width_mm=width / k if k and width is not None else None,
            from_mask=mask is not None,
        )
        out.append(replace(det, measurement=m))
    return tuple(out)


def class_totals(
    detections: Sequence[Detection],
) -> tuple[float | None, float | None, float | None]:
    """(total area mm², total length px, total length mm) of one class's detections; None where a
    detection lacks the value (not measured, or no scale)."""

    def total(values: list[float | None]) -> float | None:
        if not values or any(v is None for v in values):
            return None
        return float(sum(v for v in values if v is not None))

    ms = [d.measurement for d in detections]
    if any(m is None for m in ms):
        return None, None, None
    got = [m for m in ms if m is not None]
    return (
        total([m.area_mm2 for m in got]),
        total([m.length_px for m in got]),
        total([m.length_mm for m in got]),
    )
