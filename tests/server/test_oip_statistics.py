"""ModelStatistics over a real server: what both APIs did to a model, counted per model version as
Triton reports it (inference_count = images, execution_count = model calls, success and fail with
their durations, the stage durations of the successful ones, one entry per batch size). A raw
view's samples count as images of its model, and ``NAME.raw`` reports ``NAME``'s figures."""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.helpers import StartServer, make_settings
from tests.runtime.onnx_builders import dent_model
from tests.server.drain_helpers import JPEG
from tests.server.test_oip_raw import LARGE, pixels, raw_request, serve, size_the_graph_refuses
from visionrpc.runtime.repository import ModelRepository
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc, inference_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb


@dataclass
class Served:
    oip: grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub
    typed: inference_pb2_grpc.InferenceMethodsAsyncStub
    versions: dict[str, str]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name, version in (("dent", "3"), ("idle", "1")):
        (root / name).mkdir()
        dent_model(root / name / "model.onnx")
        (root / name / "model.yaml").write_text(f'version: "{version}"\n')
    return root


@pytest.fixture
async def served(start_server: StartServer, models: Path) -> AsyncIterator[Served]:
    settings = make_settings(models_dir=models, access_log=False, default_model="dent")
    inference = InferenceServicer(settings)
    running = await start_server(
        [inference, OpenInferenceServicer(inference)],
        models_dir=models,
        access_log=False,
        default_model="dent",
    )
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Served(
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
            inference_pb2_grpc.InferenceMethodsStub(channel),
            {"dent": "3", "idle": "1"},
        )


def infer_request(model: str, *images: bytes) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model)
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[len(images)])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in images))
    return request


async def statistics(
    served: Served, name: str = "", version: str = ""
) -> list[oip.ModelStatistics]:
    request = oip.ModelStatisticsRequest(name=name, version=version)
    return list((await served.oip.ModelStatistics(request)).model_stats)


async def test_counts_what_both_apis_did_to_the_model(served: Served) -> None:
    before_ms = time.time_ns() // 1_000_000
    await served.typed.Infer(pb.InferRequest(model="dent", image_bytes=JPEG))
    await served.oip.ModelInfer(infer_request("dent", JPEG, JPEG))  # two images, one call
    answers = [a async for a in served.oip.ModelStreamInfer(iter([infer_request("dent", JPEG)]))]
    assert answers[0].error_message == ""
    frame = await served.typed.InferStream(
        iter([pb.InferRequest(image_bytes=b"not an image")])
    ).read()
    assert isinstance(frame, pb.InferResponse) and frame.HasField("error")

    (got,) = await statistics(served, "dent")
    assert (got.name, got.version) == ("dent", "3")
    assert got.last_inference >= before_ms
    assert got.inference_count == 4  # images inferred, whichever API sent them
    s = got.inference_stats
    assert (s.success.count, s.fail.count) == (4, 1)
    assert s.success.ns > 0 and s.fail.ns > 0 and s.compute_infer.ns > 0
    counts = (s.queue.count, s.compute_input.count, s.compute_infer.count, s.compute_output.count)
    assert counts == (4, 4, 4, 4)  # the stages of the successful requests
    assert got.execution_count == sum(b.compute_infer.count for b in got.batch_stats) > 0
    assert sum(b.batch_size * b.compute_infer.count for b in got.batch_stats) == 4
    assert [b.batch_size for b in got.batch_stats] == sorted(
        {b.batch_size for b in got.batch_stats}
    )

    # the same asked with its version; the idle model has served nothing
    assert await statistics(served, "dent", "3") == [got]
    (idle,) = await statistics(served, "idle")
    assert (idle.name, idle.version, idle.inference_count, idle.execution_count) == (
        "idle",
        "1",
        0,
        0,
    )
    assert idle.inference_stats.success.count == 0 and not idle.batch_stats


async def test_an_empty_name_reports_every_model(served: Served) -> None:
    await served.typed.Infer(pb.InferRequest(model="idle", image_bytes=JPEG))
    every = await statistics(served)
    assert [(m.name, m.version) for m in every] == [("dent", "3"), ("idle", "1")]
    assert [m.inference_count for m in every] == [0, 1]


@pytest.mark.parametrize(
    ("name", "version", "code", "words"),
    [
        ("nope", "", grpc.StatusCode.NOT_FOUND, ["nope"]),
        ("dent", "9", grpc.StatusCode.NOT_FOUND, ["version 3", "not 9"]),
        ("", "3", grpc.StatusCode.INVALID_ARGUMENT, ["without a model name"]),
    ],
)
async def test_asking_for_what_is_not_there_says_so(
    served: Served, name: str, version: str, code: grpc.StatusCode, words: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await statistics(served, name, version)
    assert caught.value.code() == code
    for word in words:
        assert word in (caught.value.details() or ""), caught.value.details()
    assert len(await statistics(served)) == 2  # the server still answers


# -- the raw view (NAME.raw): the same loaded model, so the same counters ---------------------


@pytest.fixture(scope="module")
def packaged() -> ModelRepository:
    """The packaged models, taking raw requests of up to 4 samples."""
    return ModelRepository(make_settings(batching={"max_batch_size": 4}))


@pytest.fixture
async def raw_served(start_server: StartServer, packaged: ModelRepository) -> AsyncIterator[Served]:
    running = await serve(start_server, packaged)
    async with grpc.aio.insecure_channel(running.address, options=LARGE) as channel:
        yield Served(
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
            inference_pb2_grpc.InferenceMethodsStub(channel),
            {"defects": packaged.get("defects").config.version},
        )


async def test_raw_requests_are_counted_per_sample(raw_served: Served) -> None:
    served, version = raw_served, raw_served.versions["defects"]
    await served.oip.ModelInfer(raw_request("defects.raw", pixels(1)))
    (one,) = await statistics(served, "defects")
    assert (one.inference_count, one.inference_stats.success.count) == (1, 1)
    assert one.execution_count == 1  # a lone sample is one model call of batch size 1
    assert [(b.batch_size, b.compute_infer.count) for b in one.batch_stats] == [(1, 1)]

    await served.oip.ModelInfer(raw_request("defects.raw", pixels(2)))  # two samples
    (three,) = await statistics(served, "defects")
    assert (three.name, three.version) == ("defects", version)
    assert (three.inference_count, three.inference_stats.success.count) == (3, 3)
    assert three.inference_stats.success.ns > one.inference_stats.success.ns
    assert three.execution_count > one.execution_count
    assert three.execution_count == sum(b.compute_infer.count for b in three.batch_stats)
    assert sum(b.batch_size * b.compute_infer.count for b in three.batch_stats) == 3
    assert three.inference_stats.fail.count == 0

    # a sample the graph's operators refuse fails in the model call: one failure, no inference
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.oip.ModelInfer(size_the_graph_refuses())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (failed,) = await statistics(served, "defects")
    assert (failed.inference_count, failed.inference_stats.success.count) == (3, 3)
    assert failed.inference_stats.fail.count == 1 and failed.inference_stats.fail.ns > 0

    # the raw view reports its model's figures under the name asked for
    (as_raw,) = await statistics(served, "defects.raw")
    assert await statistics(served, "defects.raw", version) == [as_raw]
    assert as_raw.name == "defects.raw"
    as_raw.name = "defects"
    assert as_raw == failed
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await statistics(served, "defects.raw", "not-" + version)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "defects.raw" in (caught.value.details() or "")
