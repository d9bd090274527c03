"""Write generated samples as an Ultralytics/YOLO segmentation dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2

from visionrpc.synthetic.defects import CLASS_NAMES
from visionrpc.synthetic.scene import Sample, generate_sample


def iter_samples(seed: int, count: int, **kwargs: object) -> Iterator[Sample]:
    """Samples 0..count-1 of stream ``seed``."""
    for index in range(count):
        yield generate_sample(seed, index, **kwargs)  # type: ignore[arg-type]


def yolo_label_lines(sample: Sample) -> list[str]:
    """One ``class x1 y1 x2 y2 ...`` line per defect, coordinates normalised to [0, 1]."""
    lines = []
    for defect in sample.defects:
        xs = defect.polygon[:, 0] / sample.width
        ys = defect.polygon[:, 1] / sample.height
        coords = " ".join(f"{x:.6f} {y:.6f}" for x, y in zip(xs, ys, strict=True))
        lines.append(f"{defect.class_id} {coords}")
    return lines


def save_image(path: Path, sample: Sample) -> None:
    bgr = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), bgr, params):
        raise OSError(f"could not write {path}")


def write_split(root: Path, split: str, seed: int, count: int) -> None:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for sample in iter_samples(seed, count):
        stem = f"{seed}_{sample.index:05d}"
        suffix = ".png" if sample.index % 5 == 4 else ".jpg"
        save_image(images / f"{stem}{suffix}", sample)
        (labels / f"{stem}.txt").write_text("\n".join(yolo_label_lines(sample)) + "\n")


def write_yolo_dataset(
    root: Path, *, train_seed: int, train_count: int, val_seed: int, val_count: int
) -> Path:
    """Write train and val splits plus ``data.yaml``; returns the path of ``data.yaml``."""
    root = Path(root).resolve()
    write_split(root, "train", train_seed, train_count)
    write_split(root, "val", val_seed, val_count)
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASS_NAMES))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data_yaml
