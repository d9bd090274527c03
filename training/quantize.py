"""Make the int8 variant of a YOLO ONNX export: static QDQ quantization on generated images.

    python training/quantize.py MODEL.onnx OUT.onnx [--images 64 --seed 3]

Needs onnxruntime (its quantization tools), onnx and visionrpc itself. Calibration images come from
the generator with a seed used neither for training (1, 2) nor for evaluation (1000). Per-channel
weights, QDQ format, u8 activations / s8 weights; the nodes that produce the outputs (box
coordinates, class scores, mask prototypes) stay in float so that box precision does not suffer.
"""

from __future__ import annotations

import argparse
import ast
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from visionrpc.runtime.imaging import DecodedImage, letterbox
from visionrpc.synthetic import generate_sample

CALIBRATION_SEED = 3
FLOAT_HEAD_OPS = {"Concat", "Sigmoid", "Mul", "Add", "Sub", "Div"}


class GeneratedImages(CalibrationDataReader):
    def __init__(self, input_name: str, size: tuple[int, int], count: int, seed: int):
        self._input_name = input_name
        self._size = size
        self._indices = iter(range(count))
        self._seed = seed

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = next(self._indices, None)
        if index is None:
            return None
        sample = generate_sample(self._seed, index)
        decoded = DecodedImage(sample.image, sample.width, sample.height)
        tensor, _ = letterbox(decoded, self._size)
        return {self._input_name: tensor[None]}


def _head_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that produce or directly feed the graph outputs: kept in float."""
    outputs = {o.name for o in model.graph.output}
    producers = {out: node for node in model.graph.node for out in node.output}
    keep: list[str] = []
    for name in outputs:
        node = producers.get(name)
        if node is None:
            continue
        keep.append(node.name)
        for inp in node.input:
            parent = producers.get(inp)
            if parent is not None and parent.op_type in {
                "Concat",
                "Sigmoid",
                "Mul",
                "Add",
                "Sub",
                "Div",
            }:
                keep.append(parent.name)
    return keep


def quantize(source: Path, target: Path, images: int, seed: int) -> None:
    model = onnx.load(str(source))
    input_name = model.graph.input[0].name
    props = {p.key: p.value for p in model.metadata_props}
    imgsz = ast.literal_eval(props.get("imgsz", "[320, 320]"))
    size = (int(imgsz[1]), int(imgsz[0]))  # (width, height)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            GeneratedImages(input_name, size, images, seed),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=_head_nodes(onnx.load(str(prepared))),
        )
    quantized = onnx.load(str(target))
    del quantized.metadata_props[:]
    for key, value in props.items():
        quantized.metadata_props.add(key=key, value=value)
    onnx.save(quantized, str(target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=CALIBRATION_SEED)
    args = parser.parse_args()
    quantize(args.source, args.target, args.images, args.seed)
    print(f"wrote {args.target} ({args.target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
