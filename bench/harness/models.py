"""Which models a bench run covers, without loading them (the server and the workers load them).

The repository layout is ModelRepository's: ``NAME.onnx`` or ``NAME/*.onnx`` (+ ``model.yaml``).
A subset is benchmarked through a directory of symlinks, so the server and the in-process
pipeline load exactly the same models and their peak RSS compares like for like.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionrpc.errors import ModelLoadError
from visionrpc.runtime.repository import packaged_models_dir, scan_repository

# Operator names that only a quantized graph holds; they appear verbatim in the protobuf bytes.
_QUANT_OPS = (b"QuantizeLinear", b"DequantizeLinear", b"QLinear", b"ConvInteger", b"MatMulInteger")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    entry: Path  # the NAME.onnx file or the NAME/ folder
    onnx: Path
    confidence: float
    iou: float
    max_detections: int
    quantized: bool

    @property
    def precision(self) -> str:
        return "int8" if self.quantized else "fp32"


def is_quantized(onnx: Path) -> bool:
    """True when the graph holds quantization operators (int8/uint8 QDQ or QLinear/Integer ops)."""
    data = onnx.read_bytes()
    return any(op in data for op in _QUANT_OPS)


def discover(models_dir: Path | None) -> dict[str, ModelEntry]:
    """Every model of the directory (default: the packaged one), by name, sorted: the server's
    own scan (``scan_repository``), so names, files and thresholds are the ones it serves."""
    directory = Path(models_dir) if models_dir is not None else packaged_models_dir()
    try:
        sources = scan_repository(directory)
    except ModelLoadError as exc:  # the bench CLI reports ValueErrors as one line
        raise ValueError(str(exc)) from None
    return {
        name: ModelEntry(
            name=name,
            entry=source.entry,
            onnx=source.onnx,
            confidence=source.config.confidence_threshold,
            iou=source.config.iou_threshold,
            max_detections=source.config.max_detections,
            quantized=is_quantized(source.onnx),
        )
        for name, source in sources.items()
    }


def select(available: dict[str, ModelEntry], names: list[str]) -> list[ModelEntry]:
    """The named models (all when ``names`` is empty); unknown names are an error listing all."""
    if not names:
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; available: {', '.join(available)}")
    return [available[n] for n in dict.fromkeys(names)]


def pick_baseline(
    selected: list[ModelEntry], available: dict[str, ModelEntry], name: str | None
) -> ModelEntry:
    """The fp32 model the straightforward baseline runs: the named one, else the first fp32 model
    benchmarked, else the first fp32 model of the repository, else the first benchmarked."""
    if name:
        if name not in available:
            raise ValueError(f"unknown baseline model {name!r}; available: {', '.join(available)}")
        return available[name]
    for entry in [*selected, *available.values()]:
        if not entry.quantized:
            return entry
    return selected[0]


def link_subset(selected: list[ModelEntry], directory: Path) -> Path:
    """A model directory holding only ``selected`` (symlinks), for the server and the workers."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in selected:
        link = directory / entry.entry.name
        if not link.exists():
            link.symlink_to(entry.entry.resolve(), target_is_directory=entry.entry.is_dir())
    return directory
