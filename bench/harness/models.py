"""Which models a bench run covers, without loading them (the server and the workers load them).

The repository layout is ModelRepository's: ``NAME.onnx`` or ``NAME/*.onnx`` (+ ``model.yaml``).
A subset is benchmarked through a directory of symlinks, so the server and the in-process
pipeline load exactly the same models and their peak RSS compares like for like.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from visionrpc.runtime.repository import CONFIG_FILE, packaged_models_dir

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


def _onnx_of(entry: Path) -> Path | None:
    if entry.is_file():
        return entry if entry.suffix == ".onnx" else None
    files = sorted(entry.glob("*.onnx"))
    if (entry / "model.onnx").is_file():
        return entry / "model.onnx"
    return files[0] if len(files) == 1 else None


def is_quantized(onnx: Path) -> bool:
    """True when the graph holds quantization operators (int8/uint8 QDQ or QLinear/Integer ops)."""
    data = onnx.read_bytes()
    return any(op in data for op in _QUANT_OPS)


def discover(models_dir: Path | None) -> dict[str, ModelEntry]:
    """Every model of the directory (default: the packaged one), by name, sorted."""
    directory = Path(models_dir) if models_dir is not None else packaged_models_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    found: dict[str, ModelEntry] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        onnx = _onnx_of(entry)
        if onnx is None:
            continue
        config: dict = {}
        if entry.is_dir() and (entry / CONFIG_FILE).is_file():
            config = yaml.safe_load((entry / CONFIG_FILE).read_text(encoding="utf-8")) or {}
        name = entry.stem if entry.is_file() else entry.name
        found[name] = ModelEntry(
            name=name,
            entry=entry,
            onnx=onnx,
            confidence=float(config.get("confidence_threshold", 0.25)),
            iou=float(config.get("iou_threshold", 0.7)),
            max_detections=int(config.get("max_detections", 300)),
            quantized=is_quantized(onnx),
        )
    return found


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
