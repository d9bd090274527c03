"""One synthetic inspection image: a texture, planted defects, then camera effects.

Camera effects (lighting, noise, blur, JPEG) come after the defects are drawn and move no pixel, so
the polygons stay exact labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from visionrpc.synthetic.defects import SHAPES, PlantedDefect, paint
from visionrpc.synthetic.textures import TEXTURES, lighting

MODEL_SIZE = 320  # the input size defect dimensions are expressed in


@dataclass
class Sample:
    """A generated image (RGB uint8) with the defects planted on it."""

    image: np.ndarray
    defects: list[PlantedDefect] = field(default_factory=list)
    texture: str = ""
    seed: int = 0
    index: int = 0

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def _pick_size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    long_side = int(rng.integers(min_side, max_side + 1))
    aspect = rng.uniform(1.0, 2.5)
    short_side = max(min_side, round(long_side / aspect))
    return (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)


def _boxes_overlap(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> bool:
    return not (
        a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1]
    )


def _place(
    rng: np.random.Generator,
    class_id: int,
    width: int,
    height: int,
    unit: float,
    taken: list[PlantedDefect],
) -> PlantedDefect | None:
    margin = 3 * unit
    for _ in range(30):
        origin = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        polygon = SHAPES[class_id](rng, origin, unit)
        defect = PlantedDefect(class_id, polygon)
        x0, y0, x1, y1 = defect.bbox
        if x0 < margin or y0 < margin or x1 > width - margin or y1 > height - margin:
            continue
        if any(_boxes_overlap(defect.bbox, other.bbox, margin) for other in taken):
            continue
        return defect
    return None


def generate_sample(
    seed: int,
    index: int = 0,
    *,
    size: tuple[int, int] | None = None,
    min_side: int = 256,
    max_side: int = 1280,
    max_defects: int = 4,
    jpeg: bool | None = None,
    defect_unit: float | None = None,
) -> Sample:
    """Generate image ``index`` of the stream identified by ``seed`` (reproducible).

    ``size`` is (width, height); by default a random size with sides in [min_side, max_side].
    ``jpeg`` forces JPEG artefacts on or off (default: random, 80% on). ``defect_unit`` is the
    image pixels per model pixel of the defects (and of the blur): by default the long side /
    320, so defects keep their size relative to the frame; 1.0 on a large frame makes them as
    small as on a 320 px image, what a tile at model resolution sees (tiled inference).
    """
    rng = np.random.default_rng([seed, index])
    width, height = size if size is not None else _pick_size(rng, min_side, max_side)
    unit = defect_unit if defect_unit is not None else max(width, height) / MODEL_SIZE
    texture_name = str(rng.choice(sorted(TEXTURES)))
    image = TEXTURES[texture_name](rng, height, width)

    count = 0 if rng.random() < 0.08 else int(rng.integers(1, max_defects + 1))
    defects: list[PlantedDefect] = []
    for _ in range(count):
        placed = _place(rng, int(rng.integers(0, len(SHAPES))), width, height, unit, defects)
        if placed is not None:
            defects.append(placed)
    for defect in defects:
        paint(rng, image, defect, unit)

    image = lighting(rng, image)
    image += rng.normal(0.0, rng.uniform(0.003, 0.025), image.shape).astype(np.float32)
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 0.9) * unit)
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if jpeg if jpeg is not None else rng.random() < 0.8:
        quality = int(rng.integers(45, 96))
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is not None:
            pixels = np.asarray(decoded, np.uint8)
    return Sample(image=pixels, defects=defects, texture=texture_name, seed=seed, index=index)
