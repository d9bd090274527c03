"""ModelConfig answers: each view of a model described in Triton's ``ModelConfig`` message.

The raw view's config is what Triton would report for the same ONNX file, plus the Ultralytics
export metadata under ``parameters["metadata"]`` as Ultralytics' own Triton export writes it
(a Python dict literal, which Ultralytics' Triton client reads with ``eval``). The vision view's
config describes its BYTES input and detection outputs.
"""

from __future__ import annotations

import ast
import json

from visionrpc.runtime.raw import graph_inputs, graph_outputs
from visionrpc.runtime.repository import LoadedModel
from visionrpc.server.oip import raw, vision
from visionrpc.server.oip.naming import RAW_SUFFIX
from visionrpc.v1 import model_config_pb2 as mc


def data_type(protocol: str) -> mc.DataType.ValueType:
    """The protocol's datatype name ("FP32", "BYTES") as model_config's enum (TYPE_FP32,
    TYPE_STRING)."""
    return mc.DataType.Value("TYPE_STRING" if protocol == "BYTES" else f"TYPE_{protocol}")


def ultralytics_metadata(model: LoadedModel) -> str:
    """The ONNX file's metadata_props as one Python dict literal, each value turned back into
    the literal Ultralytics stored it from (numbers, lists, dicts), other text kept as text."""
    stored = model.onnx.session.get_modelmeta().custom_metadata_map
    values: dict[str, object] = {}
    for key, text in stored.items():
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            values[key] = text
    return repr(values)


def _common(model: LoadedModel, name: str, platform: str) -> mc.ModelConfig:
    provider = model.onnx.provider
    on_gpu = provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    return mc.ModelConfig(
        name=name,
        platform=platform,
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
        instance_group=[
            mc.ModelInstanceGroup(
                name=model.name,
                count=model.instances,
                kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU,
            )
        ],
        dynamic_batching=mc.ModelDynamicBatching(
            max_queue_delay_microseconds=model.batching.max_queue_delay_us
        ),
        default_model_filename=model.path.name,
    )


def raw_config(model: LoadedModel, name: str) -> mc.ModelConfig:
    """The raw view: a dynamic batch dimension gives max_batch_size > 0 and dims without it; a
    fixed one gives max_batch_size 0 and the whole shapes, as Triton reports them."""
    config = _common(model, name, raw.PLATFORM)
    config.backend = raw.BACKEND
    dynamic = model.onnx.dynamic_batch
    config.max_batch_size = model.max_batch_size if dynamic else 0
    skip = 1 if dynamic else 0
    for tensor in graph_inputs(model.onnx):
        config.input.add(
            name=tensor.name,
            data_type=data_type(raw.datatype(tensor.dtype)),
            format=mc.ModelInput.FORMAT_NONE,
            dims=tensor.shape[skip:],
        )
    batched_outputs = model.onnx.spec.batched
    for tensor in graph_outputs(model.onnx):
        config.output.add(
            name=tensor.name,
            data_type=data_type(raw.datatype(tensor.dtype)),
            dims=tensor.shape[skip if batched_outputs else 0 :],
        )
    config.parameters["metadata"].string_value = ultralytics_metadata(model)
    return config


def vision_config(model: LoadedModel, name: str) -> mc.ModelConfig:
    """The vision view: one request carries any number of images (max_batch_size 0, IMAGE [-1]);
    the parameters name the classes, the defaults of the request parameters, and what the
    model measures and judges by itself (its scale, its rules' names)."""
    config = _common(model, name, vision.PLATFORM)
    for tensor_name, datatype, shape in vision.INPUTS:
        config.input.add(name=tensor_name, data_type=data_type(datatype), dims=shape)
    for tensor_name, datatype, shape in vision.outputs(model.onnx.task):
        config.output.add(name=tensor_name, data_type=data_type(datatype), dims=shape)
    settings = model.config
    parameters = {
        "class_names": json.dumps(list(model.class_names)),
        "task": model.onnx.task.value,
        "confidence": repr(settings.confidence_threshold),
        "iou": repr(settings.iou_threshold),
        "max_detections": str(model.default_max_detections),
        "raw_view": name + RAW_SUFFIX,
        # measurements and verdicts: MEASUREMENTS' columns, the model's scale and rule names
        "measurement_columns": json.dumps(list(vision.MEASUREMENT_COLUMNS)),
        "pixels_per_mm": "" if model.pixels_per_mm is None else repr(model.pixels_per_mm),
        "rules": json.dumps([r.name for r in model.rules.rules] if model.rules else []),
    }
    if model.onnx.spec.keypoint_shape:  # pose models: K keypoints of 2 or 3 values
        parameters["keypoint_shape"] = json.dumps(list(model.onnx.spec.keypoint_shape))
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config
