"""Package a trained export as the shipped model: quantize, score both variants, pick the default.

    python training/package_model.py runs/default/default.onnx [--metrics runs/default/metrics.json]

1. ``quantize.py`` makes the int8 (static QDQ) variant, calibrated on generated images;
2. both variants are served by a real visionrpc server on loopback and scored by
   ``visionrpc.evaluation`` (COCO box/mask mAP50 on the held-out seed, 200 images);
3. the int8 variant becomes the default model ``defects`` only if both of its mAP50 figures are
   within 0.02 of fp32's; the other variant stays selectable (``defects-fp32`` or ``defects-int8``);
4. writes src/visionrpc/models/*/ (model.onnx + model.yaml) and training/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quantize import quantize  # noqa: E402

from visionrpc.client import Client  # noqa: E402
from visionrpc.evaluation import EVAL_SEED, EvalReport, evaluate, served  # noqa: E402
from visionrpc.server.local import running_server  # noqa: E402
from visionrpc.settings import Settings  # noqa: E402

MODELS = HERE.parent / "src" / "visionrpc" / "models"
TOLERANCE = 0.02
YAML = """# Shipped with visionrpc: YOLOv8-seg (width 0.125) trained from scratch on generated
# images (visionrpc.synthetic) by training/train.py; {variant}.
# Figures: training/results.json and the README.
version: "{version}"
display_name: "Surface defects (scratch, spot, crack), YOLOv8-seg tiny 320 px, {variant}"
confidence_threshold: 0.25
iou_threshold: 0.6
max_detections: 100
# One thin defect is often seen as both scratch and crack: report it once (see the README).
agnostic_nms: true
"""
REPOSITORY_YAML = (
    "# The model a request that names none gets (VISIONRPC_DEFAULT_MODEL overrides it).\n"
    "default_model: defects\n"
)


def score(models_dir: Path, name: str, count: int) -> EvalReport:
    settings = Settings(port=0, access_log=False, models_dir=models_dir)
    with running_server(settings) as server, Client(server.address, timeout=120) as client:
        return evaluate(
            served(client, name),
            seed=EVAL_SEED,
            count=count,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--metrics", type=Path, help="train.py's metrics.json, copied in")
    parser.add_argument("--version", default=time.strftime("%Y.%m.%d"))
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "fp32").mkdir()
        (work / "int8").mkdir()
        shutil.copyfile(args.onnx, work / "fp32" / "model.onnx")
        quantize(args.onnx, work / "int8" / "model.onnx", images=64, seed=3)
        reports = {v: score(work, v, args.count) for v in ("fp32", "int8")}
        fp32, int8 = reports["fp32"], reports["int8"]
        int8_ok = (
            fp32.box_map50 - int8.box_map50 <= TOLERANCE
            and fp32.mask_map50 - int8.mask_map50 <= TOLERANCE
        )
        names = (
            {"int8": "defects", "fp32": "defects-fp32"}
            if int8_ok
            else {"fp32": "defects", "int8": "defects-int8"}
        )
        shutil.rmtree(MODELS, ignore_errors=True)
        for variant, name in names.items():
            target = MODELS / name
            target.mkdir(parents=True)
            shutil.copyfile(work / variant / "model.onnx", target / "model.onnx")
            (target / "model.yaml").write_text(YAML.format(variant=variant, version=args.version))
        (MODELS / "repository.yaml").write_text(REPOSITORY_YAML)

    results = {
        "eval_seed": EVAL_SEED,
        "eval_images": args.count,
        "int8_is_default": int8_ok,
        "names": names,
        "variants": {
            v: {**asdict(r), "onnx_bytes": (MODELS / names[v] / "model.onnx").stat().st_size}
            for v, r in reports.items()
        },
        "training": json.loads(args.metrics.read_text()) if args.metrics else None,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
