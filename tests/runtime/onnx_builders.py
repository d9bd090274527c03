"""Tiny ONNX graphs with exactly known outputs, built with onnx.helper for the runtime tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str]) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _metadata(
    names: dict[int, str] | None, task: str, imgsz: tuple[int, int], extra: dict[str, str] | None
) -> dict[str, str]:
    meta = {"task": task, "imgsz": f"[{imgsz[1]}, {imgsz[0]}]", "stride": "32"}
    if names is not None:
        meta["names"] = repr(names)
    meta.update(extra or {})
    return meta


def constant_model(
    path: Path,
    outputs: list[np.ndarray],
    *,
    input_size: tuple[int, int] = (320, 320),
    names: dict[int, str] | None = None,
    task: str = "detect",
    fixed_batch: int | None = None,
    metadata: dict[str, str] | None = None,
    input_type: int = TensorProto.FLOAT,
) -> Path:
    """A model that ignores the image: output i is ``outputs[i]`` (no batch axis) for every image.

    The input is "images" [batch, 3, H, W] of ``input_type`` (batch symbolic unless
    ``fixed_batch``).
    """
    w, h = input_size
    batch: int | str = fixed_batch if fixed_batch is not None else "batch"
    nodes = [
        helper.make_node("Shape", ["images"], ["in_shape"]),
        helper.make_node("Slice", ["in_shape", "zero", "one"], ["batch_dim"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    graph_outputs = []
    for i, value in enumerate(outputs):
        value = np.asarray(value, dtype=np.float32)
        inits.append(numpy_helper.from_array(value[None], f"const{i}"))
        inits.append(numpy_helper.from_array(np.array(value.shape, np.int64), f"tail{i}"))
        nodes.append(helper.make_node("Concat", ["batch_dim", f"tail{i}"], [f"shape{i}"], axis=0))
        nodes.append(helper.make_node("Expand", [f"const{i}", f"shape{i}"], [f"output{i}"]))
        graph_outputs.append(
            helper.make_tensor_value_info(f"output{i}", TensorProto.FLOAT, [batch, *value.shape])
        )
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("images", input_type, [batch, 3, h, w])],
        graph_outputs,
        initializer=inits,
    )
    return _save(graph, path, _metadata(names, task, input_size, metadata))


def box_finder_model(
    path: Path,
    *,
    input_size: tuple[int, int] = (320, 320),
    threshold: float = 0.8,
    dtype: int = TensorProto.FLOAT,
) -> Path:
    """A one-class YOLOv8-layout model that really looks at the image.

    It outputs one anchor ([B, 5, 1]: cx, cy, w, h, score 0.9) boxing the pixels brighter than
    ``threshold`` (in 0..1), so boxes can be checked against what was drawn in the original image.
    ``dtype`` is the input's type: FLOAT16 (pixels in 0..1; the output is FLOAT16 too, as in a
    half-precision export) or UINT8 (pixels 0..255, scaled by the graph itself).
    """
    w, h = input_size
    f = TensorProto.FLOAT
    if dtype not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8):
        raise ValueError(f"unsupported input type {dtype}")
    inits = [
        numpy_helper.from_array(np.array(threshold, np.float32), "thr"),
        numpy_helper.from_array(np.arange(w, dtype=np.float32)[None], "idx_w"),
        numpy_helper.from_array(np.arange(h, dtype=np.float32)[None], "idx_h"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f"),
        numpy_helper.from_array(np.array(1e6, np.float32), "big"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
        numpy_helper.from_array(np.array(0.9, np.float32), "score"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    pixels = "images"
    nodes = []
    if dtype != f:
        nodes.append(helper.make_node("Cast", ["images"], ["images_f"], to=f))
        pixels = "images_f"
    if dtype == TensorProto.UINT8:
        inits.append(numpy_helper.from_array(np.array(1 / 255, np.float32), "to_unit"))
        nodes.append(helper.make_node("Mul", ["images_f", "to_unit"], ["images_unit"]))
        pixels = "images_unit"
    nodes.append(helper.make_node("ReduceMax", [pixels], ["gray"], axes=[1], keepdims=0))
    for axis_name, reduce_axis, idx in (("x", 1, "idx_w"), ("y", 2, "idx_h")):
        p = axis_name
        nodes += [
            helper.make_node("ReduceMax", ["gray"], [f"{p}_prof"], axes=[reduce_axis], keepdims=0),
            helper.make_node("Greater", [f"{p}_prof", "thr"], [f"{p}_gt"]),
            helper.make_node("Cast", [f"{p}_gt"], [f"{p}_on"], to=f),
            helper.make_node("Add", [idx, "one_f"], [f"{p}_idx1"]),
            helper.make_node("Mul", [f"{p}_on", f"{p}_idx1"], [f"{p}_hi_all"]),
            helper.make_node("ReduceMax", [f"{p}_hi_all"], [f"{p}2"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["one_f", f"{p}_on"], [f"{p}_off"]),
            helper.make_node("Mul", [f"{p}_off", "big"], [f"{p}_offbig"]),
            helper.make_node("Mul", [f"{p}_on", idx], [f"{p}_lo_on"]),
            helper.make_node("Add", [f"{p}_lo_on", f"{p}_offbig"], [f"{p}_lo_all"]),
            helper.make_node("ReduceMin", [f"{p}_lo_all"], [f"{p}1"], axes=[1], keepdims=1),
            helper.make_node("Add", [f"{p}1", f"{p}2"], [f"{p}_sum"]),
            helper.make_node("Mul", [f"{p}_sum", "half"], [f"c{p}"]),
            helper.make_node("Sub", [f"{p}2", f"{p}1"], [f"{p}_len"]),
        ]
    nodes += [
        helper.make_node("Mul", ["x1", "zero_f"], ["zeros"]),
        helper.make_node("Add", ["zeros", "score"], ["scores"]),
        helper.make_node(
            "Concat", ["cx", "cy", "x_len", "y_len", "scores"], ["rows"], axis=1
        ),  # [B, 5]
        helper.make_node("Unsqueeze", ["rows", "axis2"], ["output0_f"]),  # [B, 5, 1]
    ]
    out_type = TensorProto.FLOAT16 if dtype == TensorProto.FLOAT16 else f
    nodes.append(helper.make_node("Cast", ["output0_f"], ["output0"], to=out_type))
    graph = helper.make_graph(
        nodes,
        "box_finder",
        [helper.make_tensor_value_info("images", dtype, ["batch", 3, h, w])],
        [helper.make_tensor_value_info("output0", out_type, ["batch", 5, 1])],
        initializer=inits,
    )
    return _save(graph, path, _metadata({0: "bright"}, "detect", input_size, None))


def yolov8_detect_outputs(
    boxes_cxcywh: Sequence[tuple[float, float, float, float]],
    classes: Sequence[int],
    scores: Sequence[float],
    num_classes: int,
    num_anchors: int = 64,
) -> np.ndarray:
    """A [4+nc, N] YOLOv8 output holding the given anchors first, zero scores elsewhere."""
    out = np.zeros((4 + num_classes, num_anchors), np.float32)
    out[:4, :] = np.array([10, 10, 4, 4], np.float32)[:, None]
    for i, (box, cls, score) in enumerate(zip(boxes_cxcywh, classes, scores, strict=True)):
        out[:4, i] = box
        out[4 + cls, i] = score
    return out


def dent_model(path: Path) -> Path:
    """A 64x64 constant model that finds one 'dent' (score 0.9) in every image."""
    out = yolov8_detect_outputs([(40, 40, 20, 20)], [0], [0.9], num_classes=1)
    return constant_model(path, [out], input_size=(64, 64), names={0: "dent"})


def tiny_models(root: Path) -> Path:
    """A model directory with one tiny constant model (``tiny``: a :func:`dent_model`)."""
    dent_model(root / "tiny.onnx")
    return root


def broken_model_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an onnx protobuf \x00\x01\x02")
    return path


# -- every Ultralytics task (issue 13 item 4) ------------------------------------------------


def pose_outputs(
    rows: Sequence[tuple[tuple[float, float, float, float], int, float, Sequence[float]]],
    num_classes: int,
    keypoint_values: int,
    num_anchors: int = 64,
) -> np.ndarray:
    """A [4+nc+K*D, N] YOLOv8 pose output: (cx,cy,w,h), class, score and K*D keypoint values per
    given anchor, zero scores elsewhere."""
    out = np.zeros((4 + num_classes + keypoint_values, num_anchors), np.float32)
    out[:4, :] = np.array([10, 10, 4, 4], np.float32)[:, None]
    for i, (box, cls, score, kpts) in enumerate(rows):
        out[:4, i] = box
        out[4 + cls, i] = score
        out[4 + num_classes :, i] = kpts
    return out


def obb_outputs(
    rows: Sequence[tuple[tuple[float, float, float, float, float], int, float]],
    num_classes: int,
    num_anchors: int = 64,
) -> np.ndarray:
    """A [4+nc+1, N] YOLOv8 OBB output: (cx,cy,w,h,angle in radians), class and score per given
    anchor, zero scores elsewhere."""
    out = np.zeros((4 + num_classes + 1, num_anchors), np.float32)
    out[:4, :] = np.array([10, 10, 4, 4], np.float32)[:, None]
    for i, (box, cls, score) in enumerate(rows):
        out[:4, i] = box[:4]
        out[-1, i] = box[4]
        out[4 + cls, i] = score
    return out


def task_models(root: Path) -> Path:
    """A model directory with one tiny constant model per task: ``classify``, ``pose``, ``obb``
    (YOLOv8 layouts, 64x64 input) and ``pose-e2e``, ``obb-e2e`` (end-to-end layouts).

    ``pose`` finds person A (box input 22..42 x 12..52, score 0.9, keypoints (30, 20, 0.95) and
    (34, 44, 0.2)) and, suppressed by NMS, a near copy of it (score 0.8). ``obb`` finds box A at
    (32, 32), 30 x 10, 2.0 rad (score 0.9, class 'blade'), its rotated near copy (0.7, suppressed)
    and box B at (12, 50), 8 x 4, 0.3 rad (0.6, class 'shim'). ``classify`` scores four classes
    0.1, 0.55, 0.25, 0.1.
    """
    people = {0: "person", 1: "robot"}
    pose = pose_outputs(
        [
            ((32, 32, 20, 40), 0, 0.9, (30, 20, 0.95, 34, 44, 0.2)),
            ((33, 32, 20, 40), 0, 0.8, (31, 21, 0.9, 35, 45, 0.3)),
        ],
        num_classes=2,
        keypoint_values=6,
    )
    meta = {"kpt_shape": "[2, 3]"}
    constant_model(
        root / "pose.onnx", [pose], input_size=(64, 64), names=people, task="pose", metadata=meta
    )
    e2e = np.zeros((4, 6 + 6), np.float32)
    e2e[0] = [22, 12, 42, 52, 0.9, 1, 30, 20, 0.95, 34, 44, 0.2]
    e2e[1] = [2, 2, 6, 6, 0.1, 0, 3, 3, 0.5, 4, 4, 0.5]  # under the threshold
    constant_model(
        root / "pose-e2e.onnx",
        [e2e],
        input_size=(64, 64),
        names=people,
        task="pose",
        metadata={**meta, "end2end": "True"},
    )
    parts = {0: "blade", 1: "shim", 2: "bolt"}
    obb = obb_outputs(
        [
            ((32, 32, 30, 10, 2.0), 0, 0.9),
            ((32, 32, 30, 10, 2.05), 0, 0.7),
            ((12, 50, 8, 4, 0.3), 1, 0.6),
        ],
        num_classes=3,
    )
    constant_model(root / "obb.onnx", [obb], input_size=(64, 64), names=parts, task="obb")
    rows = np.zeros((3, 7), np.float32)
    rows[0] = [32, 32, 30, 10, 0.9, 0, 2.0]
    rows[1] = [12, 50, 8, 4, 0.6, 1, 0.3]
    constant_model(
        root / "obb-e2e.onnx",
        [rows],
        input_size=(64, 64),
        names=parts,
        task="obb",
        metadata={"end2end": "True"},
    )
    probs = np.array([0.1, 0.55, 0.25, 0.1], np.float32)
    constant_model(
        root / "classify.onnx",
        [probs],
        input_size=(64, 64),
        names={0: "ok", 1: "scratch", 2: "spot", 3: "crack"},
        task="classify",
    )
    return root
