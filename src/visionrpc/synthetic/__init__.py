"""Procedural surface-inspection images with exactly labelled defects (reproducible by seed)."""

from visionrpc.synthetic.dataset import iter_samples, write_yolo_dataset, yolo_label_lines
from visionrpc.synthetic.defects import CLASS_NAMES, PlantedDefect
from visionrpc.synthetic.scene import Sample, generate_sample

__all__ = [
    "CLASS_NAMES",
    "PlantedDefect",
    "Sample",
    "generate_sample",
    "iter_samples",
    "write_yolo_dataset",
    "yolo_label_lines",
]
