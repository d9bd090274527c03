"""The raw view (``NAME.raw``) and ModelConfig of the Open Inference Protocol over a real server.

The raw view's outputs must equal ONNX Runtime run directly on the same input; its tensors are
named and typed as in the graph (FP32, FP16, UINT8); raw samples share the model's batches with
images; every bad tensor gets INVALID_ARGUMENT naming it while the server keeps serving.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from tests.helpers import RunningServer, StartServer, make_settings
from tests.runtime.onnx_builders import box_finder_model, constant_model, yolov8_detect_outputs
from tests.server.test_inference_service import FOUND_SAMPLES, LOW_CONF, encode
from tests.server.test_metrics import scrape
from tests.server.test_oip import JPEG_A, infer_request
from tests.server.test_oip import outputs as vision_outputs
from visionrpc.runtime.repository import ModelRepository, packaged_models_dir
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.synthetic import generate_sample
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc, inference_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import model_config_pb2 as mc

MAX_BATCH = 4
PACKAGED = ("defects", "defects-fp32")
LARGE = [("grpc.max_receive_message_length", -1)]  # as tritonclient opens its channels
NUMPY = {"FP32": "<f4", "FP16": "<f2", "UINT8": "u1", "INT64": "<i8"}


@dataclass
class Served:
    oip: grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub
    typed: inference_pb2_grpc.InferenceMethodsAsyncStub
    repository: ModelRepository


@pytest.fixture(scope="module")
def packaged() -> ModelRepository:
    return ModelRepository(make_settings(batching={"max_batch_size": MAX_BATCH}))


async def serve(
    start_server: StartServer, repository: ModelRepository, **settings: Any
) -> RunningServer:
    inference = InferenceServicer(make_settings(access_log=False, **settings), repository)
    return await start_server(
        [inference, OpenInferenceServicer(inference)], access_log=False, **settings
    )


@pytest.fixture
async def served(start_server: StartServer, packaged: ModelRepository) -> AsyncIterator[Served]:
    running = await serve(start_server, packaged)
    async with grpc.aio.insecure_channel(running.address, options=LARGE) as channel:
        yield Served(
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
            inference_pb2_grpc.InferenceMethodsStub(channel),
            packaged,
        )


def raw_request(
    model: str, array: np.ndarray, *, name: str = "images", typed: bool = False
) -> oip.ModelInferRequest:
    """A raw-view request carrying ``array`` as the protocol would: raw bytes or typed contents."""
    datatype = {np.dtype(v).newbyteorder("="): k for k, v in NUMPY.items()}[array.dtype]
    request = oip.ModelInferRequest(model_name=model, id="raw-1")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    if typed:
        field = {"FP32": "fp32_contents", "UINT8": "uint_contents"}[datatype]
        getattr(tensor.contents, field).extend(array.ravel().tolist())
    else:
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return request


def raw_outputs(response: oip.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        t.name: np.frombuffer(data, dtype=NUMPY[t.datatype]).reshape(tuple(t.shape))
        for t, data in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def onnxruntime_outputs(path: Path, array: np.ndarray) -> dict[str, np.ndarray]:
    """The graph run directly by ONNX Runtime, the reference the raw view must equal."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": array}), strict=True))


def pixels(n: int, size: int = 320, seed: int = 0) -> np.ndarray:
    """n preprocessed samples as Ultralytics sends them: real images, RGB CHW float 0..1."""
    samples = []
    for i in range(n):
        image = generate_sample(*FOUND_SAMPLES[(seed + i) % len(FOUND_SAMPLES)]).image
        samples.append(cv2.resize(image, (size, size)).transpose(2, 0, 1) / 255.0)
    return np.stack(samples).astype(np.float32)


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].shape == array.shape, name
        assert got[name].dtype == array.dtype, name
        np.testing.assert_allclose(got[name], array, rtol=1e-5, atol=1e-4, err_msg=name)


def model_path(name: str) -> Path:
    return packaged_models_dir() / name / "model.onnx"


async def assert_still_serves(served: Served) -> None:
    array = pixels(1)
    got = raw_outputs(await served.oip.ModelInfer(raw_request("defects.raw", array)))
    assert_same(got, onnxruntime_outputs(model_path("defects"), array))


# -- metadata ---------------------------------------------------------------------------------


async def test_raw_metadata_is_the_graphs(served: Served) -> None:
    version = served.repository.get("defects").config.version
    reply = await served.oip.ModelMetadata(oip.ModelMetadataRequest(name="defects.raw"))
    assert (reply.name, list(reply.versions), reply.platform) == (
        "defects.raw",
        [version],
        "onnxruntime_onnx",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.inputs] == [
        ("images", "FP32", [-1, 3, -1, -1])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.outputs] == [
        ("output0", "FP32", [-1, 39, -1]),
        ("output1", "FP32", [-1, 32, -1, -1]),
    ]
    assert (await served.oip.ModelReady(oip.ModelReadyRequest(name="defects.raw"))).ready
    other = oip.ModelReadyRequest(name="defects.raw", version="not-" + version)
    assert not (await served.oip.ModelReady(other)).ready


# -- inference --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", PACKAGED)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("typed", [False, True], ids=["raw_input_contents", "fp32_contents"])
async def test_raw_infer_equals_onnxruntime(
    served: Served, model: str, batch: int, typed: bool
) -> None:
    array = pixels(batch)
    response = await served.oip.ModelInfer(raw_request(f"{model}.raw", array, typed=typed))
    assert (response.model_name, response.id) == (f"{model}.raw", "raw-1")
    assert response.model_version == served.repository.get(model).config.version
    assert [(t.name, t.datatype) for t in response.outputs] == [
        ("output0", "FP32"),
        ("output1", "FP32"),
    ]
    assert_same(raw_outputs(response), onnxruntime_outputs(model_path(model), array))


async def test_requested_outputs_in_the_order_asked(served: Served) -> None:
    array = pixels(2)
    request = raw_request("defects.raw", array)
    request.outputs.add(name="output1")
    request.outputs.add(name="output0")
    got = raw_outputs(await served.oip.ModelInfer(request))
    expected = onnxruntime_outputs(model_path("defects"), array)
    assert list(got) == ["output1", "output0"]
    assert_same({"output0": got["output0"]}, {"output0": expected["output0"]})


async def test_a_sample_of_another_size_than_the_models_runs_on_the_graph(served: Served) -> None:
    """The graph's height and width are dynamic: a 640x640 sample (Ultralytics' default size)
    runs as the graph would run it, though the vision view letterboxes to 320."""
    array = pixels(1, size=640)
    got = raw_outputs(await served.oip.ModelInfer(raw_request("defects-fp32.raw", array)))
    assert_same(got, onnxruntime_outputs(model_path("defects-fp32"), array))


async def test_raw_and_vision_requests_run_side_by_side(served: Served) -> None:
    arrays = [pixels(1 + i % 3, seed=i) for i in range(6)]
    raw_calls = [served.oip.ModelInfer(raw_request("defects.raw", a)) for a in arrays]
    vision_calls = [served.oip.ModelInfer(infer_request("defects", JPEG_A)) for _ in range(6)]
    answers = await asyncio.gather(*raw_calls, *vision_calls)
    for array, response in zip(arrays, answers[:6], strict=True):
        assert_same(raw_outputs(response), onnxruntime_outputs(model_path("defects"), array))
    typed = await served.typed.Infer(
        pb.InferRequest(model="defects", image_bytes=JPEG_A, confidence_threshold=LOW_CONF)
    )
    for response in answers[6:]:
        scores = vision_outputs(response)["SCORES"]
        assert scores.tolist() == pytest.approx([d.score for d in typed.detections], abs=1e-6)


async def test_raw_samples_share_a_batch_with_images(
    start_server: StartServer, tmp_path: Path
) -> None:
    """One instance, kept busy by a large raw sample: a vision request and a raw request of 3
    that arrive meanwhile wait in the model's one queue, then run as one batch of 4, which the
    batch-size histogram shows (two model runs for the five samples)."""
    settings: dict[str, Any] = {
        "models_dir": tmp_path,
        "runtime": {"instances": 1},
        "batching": {"max_batch_size": 8, "max_queue_delay_us": 5_000_000},
        "metrics": {"port": 0},
    }
    (tmp_path / "parts").symlink_to(packaged_models_dir() / "defects-fp32")
    repository = ModelRepository(make_settings(**settings))
    running = await serve(start_server, repository, **settings)
    url = running.server.metrics_url

    async def gauge(name: str) -> float:
        return (await asyncio.to_thread(scrape, url)).value(name, model="parts")

    samples = pixels(3)
    async with grpc.aio.insecure_channel(running.address, options=LARGE) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        blocker = asyncio.ensure_future(stub.ModelInfer(raw_request("parts.raw", pixels(1, 1280))))
        busy = 0.0
        while not busy and not blocker.done():
            busy = await gauge("visionrpc_model_instances_busy")
        image = asyncio.ensure_future(stub.ModelInfer(infer_request("parts", JPEG_A)))
        tensors = asyncio.ensure_future(stub.ModelInfer(raw_request("parts.raw", samples)))
        depth = 0.0
        while depth < 4 and not blocker.done():
            depth = await gauge("visionrpc_inference_queue_depth")
        assert not blocker.done(), "the large sample finished before the others were queued"
        await blocker
        found, answered = await image, await tensors
    assert_same(raw_outputs(answered), onnxruntime_outputs(model_path("defects-fp32"), samples))
    assert len(vision_outputs(found)["SCORES"]) > 0
    scraped = await asyncio.to_thread(scrape, url)

    def runs(up_to: str) -> float:
        return scraped.value("visionrpc_inference_batch_size_bucket", model="parts", le=up_to)

    assert (runs("1.0"), runs("2.0"), runs("4.0"), runs("+Inf")) == (1, 1, 2, 2)
    assert scraped.value("visionrpc_inference_images_total", model="parts") == 5


# -- bad input --------------------------------------------------------------------------------


def wrong_datatype() -> oip.ModelInferRequest:
    return raw_request("defects.raw", pixels(1).astype(np.float16))


def wrong_rank() -> oip.ModelInferRequest:
    return raw_request("defects.raw", pixels(1)[0])


def wrong_channels() -> oip.ModelInferRequest:
    return raw_request("defects.raw", np.zeros((1, 4, 320, 320), np.float32))


def wrong_byte_length() -> oip.ModelInferRequest:
    request = raw_request("defects.raw", pixels(1))
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request


def wrong_element_count() -> oip.ModelInferRequest:
    request = raw_request("defects.raw", np.zeros((1, 3, 32, 32), np.float32), typed=True)
    request.inputs[0].contents.fp32_contents.append(0.0)
    return request


def unknown_tensor() -> oip.ModelInferRequest:
    request = raw_request("defects.raw", pixels(1))
    request.inputs.add(name="mask", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0\0\0\0")
    return request


def missing_tensor() -> oip.ModelInferRequest:
    return oip.ModelInferRequest(model_name="defects.raw")


def twice() -> oip.ModelInferRequest:
    request = raw_request("defects.raw", pixels(1))
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    return request


def too_large_batch() -> oip.ModelInferRequest:
    return raw_request("defects.raw", np.zeros((MAX_BATCH + 1, 3, 32, 32), np.float32))


def empty_batch() -> oip.ModelInferRequest:
    return raw_request("defects.raw", np.zeros((0, 3, 320, 320), np.float32))


def negative_dimension() -> oip.ModelInferRequest:
    request = raw_request("defects.raw", pixels(1))
    request.inputs[0].shape[2] = -320
    return request


def size_the_graph_refuses() -> oip.ModelInferRequest:
    return raw_request("defects.raw", np.zeros((1, 3, 100, 100), np.float32))


def contents_and_raw() -> oip.ModelInferRequest:
    request = raw_request("defects.raw", np.zeros((1, 3, 32, 32), np.float32))
    request.inputs[0].contents.fp32_contents.extend([0.0] * (3 * 32 * 32))
    return request


def raw_entries_per_input() -> oip.ModelInferRequest:
    request = raw_request("defects.raw", pixels(1))
    request.raw_input_contents.append(b"")
    return request


def parameters() -> oip.ModelInferRequest:
    request = raw_request("defects.raw", pixels(1))
    request.parameters["confidence"].double_param = 0.5
    return request


def unknown_output() -> oip.ModelInferRequest:
    request = raw_request("defects.raw", pixels(1))
    request.outputs.add(name="BOXES")
    return request


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (wrong_datatype, ["'images'", "FP16", "FP32"]),
        (wrong_rank, ["'images'", "[3, 320, 320]", "[-1, 3, -1, -1]"]),
        (wrong_channels, ["'images'", "[1, 4, 320, 320]", "[-1, 3, -1, -1]"]),
        (wrong_byte_length, ["'images'", "1228800 bytes", "1228796"]),
        (wrong_element_count, ["'images'", "3072 elements", "3073"]),
        (unknown_tensor, ["unknown input 'mask'", "'images' (FP32 [-1, 3, -1, -1])"]),
        (missing_tensor, ["'images'", "missing"]),
        (twice, ["'images'", "twice"]),
        (too_large_batch, ["'images'", f"batch of {MAX_BATCH + 1}", f"at most {MAX_BATCH}"]),
        (empty_batch, ["'images'", "[0, 3, 320, 320]"]),
        (negative_dimension, ["'images'", "negative"]),
        (size_the_graph_refuses, ["'images'", "[3, 100, 100]", "3x320x320"]),
        (contents_and_raw, ["'images'", "both"]),
        (raw_entries_per_input, ["raw_input_contents", "2 entries"]),
        (parameters, ["confidence", "vision view 'defects'"]),
        (unknown_output, ["'BOXES'", "'output0'", "'output1'"]),
    ],
)
async def test_bad_raw_input_is_invalid_argument_naming_the_tensor(
    served: Served, make: Callable[[], oip.ModelInferRequest], words: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.oip.ModelInfer(make())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in (caught.value.details() or ""), caught.value.details()
    await assert_still_serves(served)


async def test_unknown_raw_model_is_not_found(served: Served) -> None:
    for call in (
        served.oip.ModelInfer(raw_request("nope.raw", pixels(1))),
        served.oip.ModelMetadata(oip.ModelMetadataRequest(name="nope.raw")),
        served.oip.ModelConfig(oip.ModelConfigRequest(name="nope.raw")),
        served.oip.ModelConfig(oip.ModelConfigRequest(name="defects", version="0")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await assert_still_serves(served)


# -- ModelConfig ------------------------------------------------------------------------------


async def test_model_config_of_the_raw_view(served: Served) -> None:
    model = served.repository.get("defects")
    config = (await served.oip.ModelConfig(oip.ModelConfigRequest(name="defects.raw"))).config
    assert (config.name, config.platform, config.backend) == (
        "defects.raw",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config.max_batch_size == MAX_BATCH
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("images", mc.TYPE_FP32, [3, -1, -1])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("output0", mc.TYPE_FP32, [39, -1]),
        ("output1", mc.TYPE_FP32, [32, -1, -1]),
    ]
    (group,) = config.instance_group
    assert (group.count, group.kind) == (model.instances, mc.ModelInstanceGroup.KIND_CPU)
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.version_policy.latest.num_versions == 1
    metadata = ast.literal_eval(config.parameters["metadata"].string_value)
    assert metadata["names"] == {0: "scratch", 1: "spot", 2: "crack"}
    assert (metadata["task"], metadata["imgsz"], metadata["stride"]) == ("segment", [320, 320], 32)
    assert metadata["args"]["dynamic"] is True


async def test_model_config_of_the_vision_view(served: Served) -> None:
    model = served.repository.get("defects")
    config = (await served.oip.ModelConfig(oip.ModelConfigRequest(name="defects"))).config
    assert (config.name, config.platform, config.max_batch_size) == (
        "defects",
        "visionrpc_vision",
        0,
    )
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("IMAGE", mc.TYPE_STRING, [-1])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("BOXES", mc.TYPE_FP32, [-1, 4]),
        ("SCORES", mc.TYPE_FP32, [-1]),
        ("CLASS_IDS", mc.TYPE_INT64, [-1]),
        ("IMAGE_INDEX", mc.TYPE_INT64, [-1]),
        ("MASKS", mc.TYPE_STRING, [-1]),  # a segmentation model: with the parameter masks
        ("MASK_ORIGINS", mc.TYPE_INT64, [-1, 2]),
        ("MEASUREMENTS", mc.TYPE_FP32, [-1, 6]),  # when measuring or rules apply
        ("VERDICT", mc.TYPE_STRING, [-1]),  # when rules apply
        ("VERDICT_HITS", mc.TYPE_STRING, [-1]),
        ("RESULT", mc.TYPE_STRING, [-1]),  # only when a request names it
    ]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["class_names"] == '["scratch", "spot", "crack"]'
    assert float(params["confidence"]) == model.config.confidence_threshold
    assert float(params["iou"]) == model.config.iou_threshold
    assert params["raw_view"] == "defects.raw"


# -- graphs of other input types --------------------------------------------------------------


@pytest.fixture(scope="module")
def typed_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("typed")
    box_finder_model(root / "half.onnx", input_size=(64, 64), dtype=TensorProto.FLOAT16)
    box_finder_model(root / "bytes.onnx", input_size=(64, 64), dtype=TensorProto.UINT8)
    constant_model(
        root / "fixed.onnx",
        [yolov8_detect_outputs([(20, 20, 10, 10)], [0], [0.9], 1)],
        input_size=(64, 64),
        names={0: "dent"},
        fixed_batch=2,
    )
    return root


@pytest.fixture
async def typed_served(start_server: StartServer, typed_models: Path) -> AsyncIterator[Served]:
    settings: dict[str, Any] = {"models_dir": typed_models, "batching": {"max_batch_size": 4}}
    repository = ModelRepository(make_settings(**settings))
    running = await serve(start_server, repository, **settings)
    async with grpc.aio.insecure_channel(running.address, options=LARGE) as channel:
        yield Served(
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
            inference_pb2_grpc.InferenceMethodsStub(channel),
            repository,
        )


def bright_square(size: int = 64) -> np.ndarray:
    """A dark RGB image with a white square at x 16..40, y 8..24 (for the box finder)."""
    image = np.full((size, size, 3), 20, np.uint8)
    image[8:24, 16:40] = 255
    return image


@pytest.mark.parametrize(
    ("model", "datatype", "dtype", "output"),
    [("half", "FP16", np.float16, "FP16"), ("bytes", "UINT8", np.uint8, "FP32")],
)
async def test_graphs_of_other_input_types(
    typed_served: Served, typed_models: Path, model: str, datatype: str, dtype: Any, output: str
) -> None:
    meta = await typed_served.oip.ModelMetadata(oip.ModelMetadataRequest(name=f"{model}.raw"))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("images", datatype, [-1, 3, 64, 64])
    ]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("output0", output)]
    config = await typed_served.oip.ModelConfig(oip.ModelConfigRequest(name=f"{model}.raw"))
    assert [(t.data_type, list(t.dims)) for t in config.config.input] == [
        (mc.DataType.Value(f"TYPE_{datatype}"), [3, 64, 64])
    ]
    chw = bright_square().transpose(2, 0, 1)[None]
    array = (chw / 255).astype(dtype) if dtype == np.float16 else chw.astype(np.uint8)
    batch = np.concatenate([array, array[:, :, ::-1]])
    response = await typed_served.oip.ModelInfer(raw_request(f"{model}.raw", batch))
    assert [t.datatype for t in response.outputs] == [output]
    assert_same(raw_outputs(response), onnxruntime_outputs(typed_models / f"{model}.onnx", batch))
    # the vision view fills the graph's own type too: the square is found where it was drawn
    found = await typed_served.oip.ModelInfer(infer_request(model, encode(bright_square())))
    assert vision_outputs(found)["BOXES"].tolist() == [pytest.approx([16, 8, 40, 24], abs=1.5)]


async def test_a_fixed_batch_graph_takes_exactly_its_batch(
    typed_served: Served, typed_models: Path
) -> None:
    config = await typed_served.oip.ModelConfig(oip.ModelConfigRequest(name="fixed.raw"))
    assert config.config.max_batch_size == 0
    assert [list(t.dims) for t in config.config.input] == [[2, 3, 64, 64]]
    batch = np.random.default_rng(1).random((2, 3, 64, 64), np.float32)
    response = await typed_served.oip.ModelInfer(raw_request("fixed.raw", batch))
    assert_same(raw_outputs(response), onnxruntime_outputs(typed_models / "fixed.onnx", batch))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await typed_served.oip.ModelInfer(raw_request("fixed.raw", batch[:1]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[2, 3, 64, 64]" in (caught.value.details() or "")
