"""Train the default visionrpc model from scratch on generated data and export it to ONNX.

Needs the ``train`` extra (Ultralytics + torch); nothing here is imported by the server.
Run from the repository root:

    python training/train.py --out runs/default --hours 1.7

Re-running with the same ``--out`` resumes from ``weights/last.pt``. The exported ONNX has a dynamic
batch axis and Ultralytics' metadata (names, imgsz, stride, task).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

TRAIN_SEED, VAL_SEED = 1, 2  # the held-out eval set uses another seed (see `visionrpc eval`)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/default"))
    parser.add_argument("--model", default=str(HERE / "yolov8-seg-tiny.yaml"))
    parser.add_argument("--train-count", type=int, default=1000)
    parser.add_argument("--val-count", type=int, default=150)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hours", type=float, default=1.7, help="wall-clock training budget")
    parser.add_argument("--epochs", type=int, default=100, help="used when --hours is 0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--export-only", action="store_true", help="skip training: validate and export best.pt"
    )
    args = parser.parse_args()

    out: Path = args.out.resolve()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(out / "ultralytics-config"))
    from ultralytics import YOLO  # imported late so YOLO_* settings apply

    from visionrpc.synthetic import write_yolo_dataset

    data_yaml = out / "dataset" / "data.yaml"
    if not data_yaml.exists():
        started = time.time()
        write_yolo_dataset(
            out / "dataset",
            train_seed=TRAIN_SEED,
            train_count=args.train_count,
            val_seed=VAL_SEED,
            val_count=args.val_count,
        )
        print(f"dataset written in {time.time() - started:.0f} s", flush=True)

    last = out / "train" / "weights" / "last.pt"
    if args.export_only:
        pass
    elif last.exists():
        model = YOLO(str(last))
        model.train(resume=True)
    else:
        model = YOLO(args.model, task="segment")
        model.train(
            data=str(data_yaml),
            imgsz=args.imgsz,
            batch=args.batch,
            epochs=args.epochs,
            time=args.hours or None,
            device=args.device,
            workers=0,
            cache="ram",
            amp=False,
            plots=False,
            pretrained=False,
            project=str(out),
            name="train",
            exist_ok=True,
            flipud=0.5,
            patience=0,
            seed=0,
            deterministic=False,
        )
    best = out / "train" / "weights" / "best.pt"
    epochs_done = len((out / "train" / "results.csv").read_text().splitlines()) - 1
    final = YOLO(str(best))
    metrics = final.val(data=str(data_yaml), imgsz=args.imgsz, batch=args.batch, plots=False)
    exported = Path(final.export(format="onnx", imgsz=args.imgsz, dynamic=True, simplify=True))
    target = out / "default.onnx"
    shutil.copyfile(exported, target)
    summary = {
        "model_yaml": Path(args.model).name,
        "train_seed": TRAIN_SEED,
        "val_seed": VAL_SEED,
        "train_images": args.train_count,
        "val_images": args.val_count,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "hours": args.hours,
        "epochs_completed": epochs_done,
        "val_box_map50": float(metrics.box.map50),
        "val_box_map50_95": float(metrics.box.map),
        "val_mask_map50": float(metrics.seg.map50),
        "val_mask_map50_95": float(metrics.seg.map),
        "onnx_bytes": target.stat().st_size,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
