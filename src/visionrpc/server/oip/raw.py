"""The raw view of a model (``NAME.raw``): the ONNX graph's own tensors over the protocol.

Inputs are named, typed and shaped as the graph declares them (see :mod:`visionrpc.runtime.raw`
for how their samples share the model's batcher with images); the data comes little-endian in
``raw_input_contents`` or in the typed ``contents`` field of its datatype. Outputs are the graph's
own, unprocessed, in ``raw_output_contents``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visionrpc.errors import InvalidInputError
from visionrpc.runtime.model import GraphTensor
from visionrpc.runtime.raw import RawResult, graph_inputs, graph_outputs
from visionrpc.runtime.repository import LoadedModel
from visionrpc.v1 import grpc_service_pb2 as oip

PLATFORM = "onnxruntime_onnx"
"""Triton's platform name for an ONNX model served by ONNX Runtime."""
BACKEND = "onnxruntime"

DATATYPES: dict[np.dtype[Any], str] = {
    np.dtype(np_name): protocol
    for np_name, protocol in (
        ("bool", "BOOL"),
        ("uint8", "UINT8"),
        ("uint16", "UINT16"),
        ("uint32", "UINT32"),
        ("uint64", "UINT64"),
        ("int8", "INT8"),
        ("int16", "INT16"),
        ("int32", "INT32"),
        ("int64", "INT64"),
        ("float16", "FP16"),
        ("float32", "FP32"),
        ("float64", "FP64"),
    )
}
"""numpy dtypes and the protocol's datatype names."""

CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
"""The typed ``contents`` field each datatype travels in (FP16 has none: raw contents only)."""

TensorDescription = tuple[str, str, tuple[int, ...]]


def datatype(dtype: np.dtype[Any]) -> str:
    return DATATYPES[np.dtype(dtype)]


def describe(tensor: GraphTensor) -> TensorDescription:
    """(name, protocol datatype, shape with -1 for open dimensions), for ModelMetadata."""
    return tensor.name, datatype(tensor.dtype), tensor.shape


def inputs(model: LoadedModel) -> list[TensorDescription]:
    return [describe(t) for t in graph_inputs(model.onnx)]


def outputs(model: LoadedModel) -> list[TensorDescription]:
    return [describe(t) for t in graph_outputs(model.onnx)]


def _shown(tensor: GraphTensor) -> str:
    return f"{tensor.name!r} ({datatype(tensor.dtype)} {list(tensor.shape)})"


def input_batch(request: oip.ModelInferRequest, model: LoadedModel) -> np.ndarray:
    """The request's tensor for the graph's one input, checked against its name, datatype and the
    length of its data (the runtime checks the shape against the graph's)."""
    expected = graph_inputs(model.onnx)
    by_name = {t.name: t for t in expected}
    takes = ", ".join(_shown(t) for t in expected)
    if request.parameters:
        raise InvalidInputError(
            f"the raw view takes no request parameters (got {', '.join(sorted(request.parameters))}"
            "); thresholds and classes are parameters of the vision view "
            f"{model.name!r}",
            field="parameters",
        )
    seen: set[str] = set()
    for tensor in request.inputs:
        if tensor.name not in by_name:
            raise InvalidInputError(
                f"unknown input {tensor.name!r}; {model.name}.raw takes {takes}", field="inputs"
            )
        if tensor.name in seen:
            raise InvalidInputError(f"input {tensor.name!r} is sent twice", field="inputs")
        seen.add(tensor.name)
    missing = [t for t in expected if t.name not in seen]
    if missing:
        raise InvalidInputError(
            f"input {', '.join(_shown(t) for t in missing)} is missing; "
            f"{model.name}.raw takes {takes}",
            field="inputs",
        )
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for "
            f"{len(request.inputs)} input(s); send one per input, in the order of inputs",
            field="raw_input_contents",
        )
    (graph,) = expected  # the runtime serves graphs of one image input
    (index,) = (i for i, t in enumerate(request.inputs) if t.name == graph.name)
    tensor = request.inputs[index]
    raw = request.raw_input_contents[index] if request.raw_input_contents else None
    return _array(tensor, graph, raw)


def _array(
    tensor: oip.ModelInferRequest.InferInputTensor, graph: GraphTensor, raw: bytes | None
) -> np.ndarray:
    name, want = tensor.name, datatype(graph.dtype)
    if tensor.datatype != want:
        raise InvalidInputError(
            f"input {name!r} has datatype {tensor.datatype or '(none)'} but the graph takes "
            f"{want}; send {_shown(graph)}",
            field="inputs.datatype",
        )
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInputError(
            f"input {name!r} has a negative dimension in shape {list(shape)}; send the "
            "sizes of the tensor you send",
            field="inputs.shape",
        )
    count = int(np.prod(shape, dtype=np.int64))
    field = CONTENTS_FIELDS.get(want)
    typed = list(getattr(tensor.contents, field)) if field else []
    if raw is not None:
        if typed:
            raise InvalidInputError(
                f"input {name!r} is sent both in raw_input_contents and in contents; use one",
                field="inputs.contents",
            )
        size = count * graph.dtype.itemsize
        if len(raw) != size:
            raise InvalidInputError(
                f"input {name!r} has shape {list(shape)} {want}, which is {size} bytes, but "
                f"raw_input_contents holds {len(raw)} bytes",
                field="raw_input_contents",
            )
        little = np.frombuffer(raw, dtype=graph.dtype.newbyteorder("<"))
        return little.astype(graph.dtype, copy=False).reshape(shape)
    if field is None:
        raise InvalidInputError(
            f"input {name!r} is {want}, which has no typed contents field; send its data "
            "little-endian in raw_input_contents",
            field="inputs.contents",
        )
    if len(typed) != count:
        raise InvalidInputError(
            f"input {name!r} has shape {list(shape)} ({count} elements) but contents."
            f"{field} holds {len(typed)}",
            field="inputs.contents",
        )
    values = np.asarray(typed)
    if graph.dtype.kind in "iu" and values.size:
        info = np.iinfo(graph.dtype)
        if values.min() < info.min or values.max() > info.max:
            raise InvalidInputError(
                f"input {name!r} is {want} but contents.{field} holds values outside "
                f"{info.min}..{info.max}",
                field="inputs.contents",
            )
    return values.astype(graph.dtype).reshape(shape)


def requested_outputs(request: oip.ModelInferRequest, model: LoadedModel) -> list[str]:
    """The outputs to return, in the order asked (all of the graph's, in its order, when none
    is named); an unknown name is refused."""
    names = [t.name for t in graph_outputs(model.onnx)]
    wanted = [o.name for o in request.outputs]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise InvalidInputError(
            f"unknown output(s) {', '.join(map(repr, unknown))}; {model.name}.raw has "
            f"{', '.join(map(repr, names))}",
            field="outputs",
        )
    asked = [o for o in request.outputs if o.parameters]
    if asked:
        raise InvalidInputError(
            f"output {asked[0].name!r} has parameters ({', '.join(sorted(asked[0].parameters))}); "
            "the raw view returns the graph's tensors as they are and takes none",
            field="outputs.parameters",
        )
    return wanted or names


def response(
    model_name: str, request_id: str, result: RawResult, names: list[str]
) -> oip.ModelInferResponse:
    """The ``names`` outputs of ``result``, little-endian in raw_output_contents."""
    out = oip.ModelInferResponse(model_name=model_name, model_version=result.version, id=request_id)
    for name in names:
        array = result.outputs[name]
        out.outputs.add(name=name, datatype=datatype(array.dtype), shape=array.shape)
        out.raw_output_contents.append(
            array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        )
    return out
