"""Procedural surface textures: the backgrounds that defects are planted on.

Each texture is a float32 RGB image in [0, 1]. They are built from smooth noise at several scales so
that a detector must learn the defect's shape and contrast, not "anything that is not flat".
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Texture = Callable[[np.random.Generator, int, int], np.ndarray]


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Gaussian noise upsampled from a grid of ``cell``-pixel cells: value noise of one octave."""
    gh = max(2, round(height / max(cell, 1.0)) + 2)
    gw = max(2, round(width / max(cell, 1.0)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def fractal_noise(
    rng: np.random.Generator, height: int, width: int, base_cell: float, octaves: int = 4
) -> np.ndarray:
    """Sum of octaves of :func:`smooth_noise`, normalised to zero mean and unit-ish spread."""
    total = np.zeros((height, width), np.float32)
    amplitude, cell = 1.0, base_cell
    for _ in range(octaves):
        total += amplitude * smooth_noise(rng, height, width, cell)
        amplitude *= 0.5
        cell = max(cell / 2.0, 1.0)
    return total / 1.9


def _tint(gray: np.ndarray, color: np.ndarray) -> np.ndarray:
    tinted: np.ndarray = np.clip(gray[..., None] * color[None, None, :], 0.0, 1.0)
    return tinted.astype(np.float32)


def brushed_metal(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey metal with fine streaks along one axis (brushing) and a soft sheen."""
    base = rng.uniform(0.45, 0.75)
    streaks = rng.standard_normal((height, width)).astype(np.float32)
    k = int(rng.integers(15, 61))
    horizontal = bool(rng.integers(0, 2))
    streaks = cv2.blur(streaks, (k, 1) if horizontal else (1, k)) * np.sqrt(k) * 0.025
    sheen = fractal_noise(rng, height, width, max(height, width) / 3.0, 2) * 0.05
    gray = base + streaks + sheen
    color = np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.04, 0.04, 3)
    return _tint(gray, color)


def painted(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A painted panel: one saturated colour, low-frequency mottling and orange-peel grain."""
    hue = rng.uniform(0, 180)
    hsv = np.array([[[hue, rng.uniform(60, 200), rng.uniform(120, 220)]]], np.uint8)
    color = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
    mottling = fractal_noise(rng, height, width, max(height, width) / 4.0, 3) * 0.05
    grain = smooth_noise(rng, height, width, rng.uniform(1.5, 3.0)) * 0.02
    gray = 1.0 + mottling + grain
    return _tint(gray, color)


def fabric(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A woven fabric: two perpendicular thread patterns with per-thread colour variation."""
    period = rng.uniform(4.0, 10.0) * max(height, width) / 640.0 + 2.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    warp = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period)
    weft = 0.5 + 0.5 * np.sin(2 * np.pi * yy / period)
    checker = np.where(((xx // period) + (yy // period)) % 2 == 0, warp, weft)
    thread_var = smooth_noise(rng, height, width, period * 3) * 0.04
    hue = rng.uniform(0, 180)
    hsv = np.array([[[hue, rng.uniform(20, 120), rng.uniform(110, 210)]]], np.uint8)
    color = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
    gray = 0.85 + 0.15 * checker + thread_var
    return _tint(gray, color)


def wood(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Wood grain: distorted growth rings in browns."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = max(height, width)
    distortion = (
        fractal_noise(rng, height, width, scale / 3.0, 3) * rng.uniform(10, 30) * scale / 640
    )
    period = rng.uniform(12, 30) * scale / 640.0 + 3.0
    vertical = bool(rng.integers(0, 2))
    coord = (xx if vertical else yy) + distortion
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * coord / period)
    fine = smooth_noise(rng, height, width, 2.0) * 0.03
    light = np.array([0.78, 0.60, 0.40]) * rng.uniform(0.85, 1.1)
    dark = np.array([0.55, 0.38, 0.22]) * rng.uniform(0.85, 1.1)
    rgb = dark[None, None, :] + (light - dark)[None, None, :] * rings[..., None]
    grain: np.ndarray = np.clip(rgb + fine[..., None], 0.0, 1.0)
    return grain.astype(np.float32)


TEXTURES: dict[str, Texture] = {
    "metal": brushed_metal,
    "painted": painted,
    "fabric": fabric,
    "wood": wood,
}


def lighting(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Multiply by a linear gradient and a soft radial spot, as uneven factory lighting does."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * rng.uniform(0.0, 0.35)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    radius = rng.uniform(0.4, 1.2) * max(height, width)
    spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)) * rng.uniform(0.0, 0.3)
    gain = 0.8 + ramp - ramp.mean() + spot
    lit: np.ndarray = np.clip(image * gain[..., None], 0.0, 1.0)
    return lit.astype(np.float32)
