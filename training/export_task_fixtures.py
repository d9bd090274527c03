"""Make the real Ultralytics exports the tests serve: one tiny model per task and head layout.

Needs the ``train`` extra (Ultralytics + torch, onnx, onnxslim, onnxruntime) in its own virtualenv;
nothing here is imported by the server or the tests. Run from the repository root:

    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/ycfg python training/export_task_fixtures.py

For each fixture it builds Ultralytics' own architecture (``yolov8-cls/pose/obb.yaml``,
``yolo26-pose/obb.yaml``) at a tiny width, with seeded random weights (no training: the tests check
decoding, not accuracy), exports it to ONNX at a small input size, then runs Ultralytics' own
predictor on that ONNX file over a fixed generated image and writes what it found to
``NAME.expected.json`` beside ``NAME.onnx`` in tests/fixtures/tasks/. The tests serve each ONNX file
through a real server and compare the answers with those JSON files.

A fresh network's activations shrink at every layer (its batch norms have never seen data), so it
gives every anchor the same box and score: here the batch norms first measure their inputs over a
few random batches, and the last layer of each class branch gets unit-variance logits around a
negative bias, so scores spread, some candidates survive the threshold and NMS has real work.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import ultralytics
import yaml
from ultralytics import YOLO
from ultralytics.nn.modules import Classify

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "tests" / "fixtures" / "tasks"
CFG = Path(ultralytics.__file__).parent / "cfg" / "models"

# name: (architecture yaml, task, input size, extra yaml keys); YOLO26 heads are exported
# end-to-end (nms=False keeps their one-to-one branch), the others with raw anchors
FIXTURES: dict[str, tuple[str, str, int, dict[str, Any]]] = {
    "classify-v8": ("v8/yolov8-cls.yaml", "classify", 64, {"nc": 7}),
    "pose-v8": ("v8/yolov8-pose.yaml", "pose", 64, {"nc": 2, "kpt_shape": [5, 3]}),
    "pose-v8-xy": ("v8/yolov8-pose.yaml", "pose", 64, {"nc": 1, "kpt_shape": [4, 2]}),
    "obb-v8": ("v8/yolov8-obb.yaml", "obb", 64, {"nc": 3}),
    "pose-26": ("26/yolo26-pose.yaml", "pose", 64, {"nc": 2, "kpt_shape": [5, 3]}),
    "obb-26": ("26/yolo26-obb.yaml", "obb", 64, {"nc": 3}),
    # the same weights as obb-v8, exported with nms=True: Ultralytics' NMS inside the graph
    "obb-v8-nms": ("v8/yolov8-obb.yaml", "obb", 64, {"nc": 3}),
}
NAMES = ["scratch", "spot", "crack", "dent", "chip", "stain", "burr"]
WIDTH = 0.03125  # a 32nd of the large models' channels (the heads keep a floor of their own)
CLASS_BIAS = -2.0
CLASS_LOGIT_STD = 1.5
BOX_LOGIT_STD = 3.0
CALIBRATION_BATCHES = 20
DEFAULT_CONFIDENCE = 0.3
# random boxes overlap in crowds, where greedy NMS (the server's) and Fast-NMS (Ultralytics')
# keep different sets: a higher threshold leaves fewer boxes for the rotated NMS to settle
CONFIDENCE = {"obb-v8": 0.6, "obb-v8-nms": 0.6}
IOU = 0.7
SEED = 13


def test_image(path: Path, size: tuple[int, int]) -> None:
    """A fixed image with shapes and a gradient, so the random network's features vary."""
    w, h = size
    rng = np.random.default_rng(SEED)
    ramp = np.linspace(40, 200, w, dtype=np.float32)[None, :, None]
    image = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8).copy()
    image[:] = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    for _ in range(6):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(4, w // 4)), int(rng.integers(3, h // 4)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    cv2.imwrite(str(path), image)


def calibrate(net: torch.nn.Module, imgsz: int) -> None:
    """Batch-norm statistics from random images (the weights stay as drawn)."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the batches below
    net.train()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _ in range(CALIBRATION_BATCHES):
            net(torch.rand(8, 3, imgsz, imgsz, generator=generator))
    net.eval()
    for bn in norms:
        bn.momentum = 0.03


def image_batch(folder: Path, imgsz: int) -> torch.Tensor:
    """The test images, squeezed to the input size (near enough to measure activations)."""
    images = []
    for path in sorted(folder.glob("image-*.png")):
        rgb = cv2.resize(cv2.imread(str(path)), (imgsz, imgsz))[:, :, ::-1]
        images.append(torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float() / 255)
    return torch.stack(images)


def rescale(
    net: torch.nn.Module, conv: torch.nn.Conv2d, target: float, batch: torch.Tensor
) -> None:
    """Scale a head's last convolution so that on the test images its outputs vary with (robust)
    standard deviation ``target``."""
    seen: list[torch.Tensor] = []
    hook = conv.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        net(batch)
        hook.remove()
        bias = conv.bias.view(1, -1, 1, 1) if conv.bias is not None else 0
        values = (seen[0] - bias).flatten()
        spread = float((values - values.median()).abs().median()) * 1.4826  # robust std
        conv.weight.mul_(target / max(spread, 1e-6))


def build(arch: str, extra: dict[str, Any], work: Path, imgsz: int, images: Path) -> YOLO:
    spec = yaml.safe_load((CFG / arch).read_text())
    spec.update(extra)
    spec["scales"] = {"t": [spec["scales"]["n"][0], WIDTH, 1024]}
    spec["scale"] = "t"
    cfg = work / f"tiny-{Path(arch).stem}.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    torch.manual_seed(SEED)
    model = YOLO(str(cfg))
    calibrate(model.model, imgsz)
    head = model.model.model[-1]
    scaled = {"cv3": CLASS_LOGIT_STD, "one2one_cv3": CLASS_LOGIT_STD}
    if not isinstance(head, Classify):  # DFL bins: peaked, so boxes differ in size
        scaled |= {"cv2": BOX_LOGIT_STD, "one2one_cv2": BOX_LOGIT_STD}
    for name, target in scaled.items():
        for seq in getattr(head, name, None) or ():
            rescale(model.model, seq[-1], target, image_batch(images, imgsz))
            if name.endswith("cv3"):
                torch.nn.init.constant_(seq[-1].bias, CLASS_BIAS)
    model.model.names = dict(enumerate(NAMES[: extra["nc"]]))
    return model


def record(result: Any, task: str) -> dict[str, Any]:
    """What Ultralytics' predictor found, as plain JSON."""
    if task == "classify":
        probs = result.probs.data.cpu().numpy()
        order = np.argsort(-probs, kind="stable")
        return {"top": [[int(i), float(probs[i])] for i in order]}
    if task == "pose":
        boxes = result.boxes
        return {
            "boxes": boxes.xyxy.cpu().numpy().tolist(),
            "scores": boxes.conf.cpu().numpy().tolist(),
            "classes": boxes.cls.cpu().numpy().astype(int).tolist(),
            "keypoints": result.keypoints.data.cpu().numpy().tolist(),
        }
    obb = result.obb
    return {
        "xywhr": obb.xywhr.cpu().numpy().tolist(),
        "corners": obb.xyxyxyxy.cpu().numpy().tolist(),
        "scores": obb.conf.cpu().numpy().tolist(),
        "classes": obb.cls.cpu().numpy().astype(int).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", nargs="*", default=list(FIXTURES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = {"square": (64, 64), "wide": (120, 80)}
    for label, size in images.items():
        test_image(args.out / f"image-{label}.png", size)
    for name in args.only:
        arch, task, imgsz, extra = FIXTURES[name]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            model = build(arch, extra, work, imgsz, args.out)
            pt = work / f"{name}.pt"
            model.save(str(pt))
            # nms=False keeps a YOLO26 head's one-to-one (end-to-end) branch in the graph
            nms = {"nms": False} if arch.startswith("26/") else {}
            if name.endswith("-nms"):
                nms = {"nms": True, "conf": CONFIDENCE.get(name, DEFAULT_CONFIDENCE), "iou": IOU}
            exported = YOLO(str(pt)).export(
                format="onnx", imgsz=imgsz, simplify=True, dynamic=False, opset=17, **nms
            )
            onnx_path = args.out / f"{name}.onnx"
            shutil.copy(exported, onnx_path)
        expected: dict[str, Any] = {
            "task": task,
            "architecture": arch,
            "imgsz": imgsz,
            "confidence": CONFIDENCE.get(name, DEFAULT_CONFIDENCE),
            "iou": IOU,
            "ultralytics": ultralytics.__version__,
            "images": {},
        }
        predictor = YOLO(str(onnx_path), task=task)
        # a classifier crops the centre, so only the image of its input size gives exactly the
        # pixels the server gives it (Ultralytics resamples with PIL, the server with OpenCV)
        labels = ["square"] if task == "classify" else list(images)
        for label in labels:
            result = predictor.predict(
                str(args.out / f"image-{label}.png"),
                imgsz=imgsz,
                conf=expected["confidence"],
                iou=IOU,
                max_det=300,
                device="cpu",
                verbose=False,
            )[0]
            expected["images"][label] = record(result, task)
        (args.out / f"{name}.expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        print(name, onnx_path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
