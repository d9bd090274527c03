"""ModelStreamInfer (Triton's bidirectional stream) over a real server, with the generated stubs.

Answers come in request order, each a ModelStreamInferResponse; a bad request is answered with
its error_message and its id, and the stream goes on. The stream shares the typed InferStream's
machinery: the drain answers what was read and ends UNAVAILABLE, an unreadable frame ends the
call INVALID_ARGUMENT, metrics count each image like one Infer, and each request gets a span.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.helpers import EOF, RunningServer, StartServer, make_settings, wait_until
from tests.runtime.onnx_builders import tiny_models
from tests.server.drain_helpers import JPEG, read_rest, stream_drained
from tests.server.test_inference_service import FOUND_SAMPLES, LOW_CONF, encode
from tests.server.test_metrics import scrape
from visionrpc.runtime.model import OnnxModel
from visionrpc.runtime.repository import ModelRepository
from visionrpc.server.app import VisionServer
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.server.otel import REQUEST_ID_ATTRIBUTE
from visionrpc.synthetic import generate_sample
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc

JPEG_A = encode(generate_sample(*FOUND_SAMPLES[0]).image, ".jpg")
JPEG_B = encode(generate_sample(*FOUND_SAMPLES[1]).image, ".jpg")
STREAM = "inference.GRPCInferenceService/ModelStreamInfer"
FRAME_SPAN = "ModelStreamInfer frame"
Served = tuple["grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub", str]


def framed(*images: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in images)


def request(model: str, request_id: str, *images: bytes) -> oip.ModelInferRequest:
    out = oip.ModelInferRequest(model_name=model, id=request_id)
    out.parameters["confidence"].double_param = LOW_CONF
    out.inputs.add(name="IMAGE", datatype="BYTES", shape=[len(images)])
    out.raw_input_contents.append(framed(*images))
    return out


def tensors(response: oip.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": "<f4", "INT64": "<i8"}
    return {
        t.name: np.frombuffer(raw, dtype=dtypes[t.datatype]).reshape(tuple(t.shape))
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


async def stream_all(
    stub: grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub,
    requests: list[oip.ModelInferRequest],
) -> tuple[list[oip.ModelStreamInferResponse], grpc.StatusCode]:
    call = stub.ModelStreamInfer(iter(requests))
    answers = [a async for a in call]
    return answers, await call.code()


@pytest.fixture(scope="module")
def shipped() -> ModelRepository:
    return ModelRepository(make_settings())


@pytest.fixture
async def served(
    start_server: StartServer, shipped: ModelRepository
) -> AsyncIterator[tuple[grpc_service_pb2_grpc.GRPCInferenceServiceAsyncStub, str]]:
    settings = make_settings(access_log=False)
    inference = InferenceServicer(settings, shipped)
    running = await start_server([inference, OpenInferenceServicer(inference)], access_log=False)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel), shipped.describe().name


async def test_answers_come_in_request_order_and_equal_model_infer(served: Served) -> None:
    stub, model = served
    requests = [
        request(model, "a", JPEG_A),
        request(model, "b", JPEG_B),
        request(model, "c", JPEG_A, JPEG_B),  # two images: one request, answered once
    ]
    answers, code = await stream_all(stub, requests)
    assert code == grpc.StatusCode.OK
    assert [a.infer_response.id for a in answers] == ["a", "b", "c"]
    assert [a.error_message for a in answers] == ["", "", ""]
    for sent, answer in zip(requests, answers, strict=True):
        unary = await stub.ModelInfer(sent)
        got, expected = tensors(answer.infer_response), tensors(unary)
        assert got.keys() == expected.keys() == {"BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX"}
        assert len(got["SCORES"]) > 0
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-3)
    assert set(tensors(answers[2].infer_response)["IMAGE_INDEX"].tolist()) == {0, 1}


def wrong_datatype(model: str) -> oip.ModelInferRequest:
    out = request(model, "bad", JPEG_A)
    out.inputs[0].datatype = "UINT8"
    return out


def bad_framing(model: str) -> oip.ModelInferRequest:
    out = request(model, "bad", JPEG_A)
    out.raw_input_contents[0] = struct.pack("<I", len(JPEG_A) + 10) + JPEG_A
    return out


def unknown_model(model: str) -> oip.ModelInferRequest:
    return request("nope", "bad", JPEG_A)


def not_an_image(model: str) -> oip.ModelInferRequest:
    return request(model, "bad", b"not an image")


def unknown_parameter(model: str) -> oip.ModelInferRequest:
    out = request(model, "bad", JPEG_A)
    out.parameters["conf"].double_param = 0.5
    return out


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (wrong_datatype, ["'IMAGE'", "BYTES", "'UINT8'"]),
        (bad_framing, ["'IMAGE'", "only", "follow"]),
        (unknown_model, ["nope"]),
        (not_an_image, ["image"]),
        (unknown_parameter, ["conf", "confidence"]),
    ],
)
async def test_a_bad_request_gets_its_error_and_the_stream_goes_on(
    served: Served, make: Any, words: list[str]
) -> None:
    stub, model = served
    answers, code = await stream_all(
        stub, [request(model, "before", JPEG_A), make(model), request(model, "after", JPEG_B)]
    )
    assert code == grpc.StatusCode.OK
    before, bad, after = answers
    assert [before.infer_response.id, bad.infer_response.id, after.infer_response.id] == [
        "before",
        "bad",
        "after",
    ]
    assert before.error_message == after.error_message == ""
    assert len(tensors(after.infer_response)["SCORES"]) > 0
    for word in words:
        assert word in bad.error_message, bad.error_message
    # as Triton answers a failed stream request: nothing but its id
    assert not bad.infer_response.outputs and not bad.infer_response.model_name


async def test_the_error_message_is_what_model_infer_says(served: Served) -> None:
    stub, model = served
    (answer,), _ = await stream_all(stub, [wrong_datatype(model)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(wrong_datatype(model))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert answer.error_message == caught.value.details()


async def test_a_frame_that_does_not_parse_ends_the_stream_after_the_ones_before(
    start_server: StartServer, shipped: ModelRepository
) -> None:
    settings = make_settings(access_log=False)
    inference = InferenceServicer(settings, shipped)
    running = await start_server([inference, OpenInferenceServicer(inference)], access_log=False)
    good = request(shipped.describe().name, "good", JPEG_A).SerializeToString()

    def same(data: bytes) -> bytes:
        return data

    async with grpc.aio.insecure_channel(running.address) as channel:
        call = channel.stream_stream(f"/{STREAM}", same, same)(iter([good, b"\xff\xff\xff"]))
        answers = await read_rest(call)
        assert len(answers) == 1
        assert oip.ModelStreamInferResponse.FromString(answers[0]).infer_response.id == "good"
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "frame 2 of the stream is not a ModelInferRequest" in (await call.details() or "")
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)  # still serving
        answers_after, code = await stream_all(
            stub, [request(shipped.describe().name, "x", JPEG_A)]
        )
        assert (code, answers_after[0].error_message) == (grpc.StatusCode.OK, "")


async def test_each_image_of_a_stream_is_counted_like_one_infer(
    start_server: StartServer, shipped: ModelRepository
) -> None:
    settings: dict[str, Any] = {"access_log": False, "metrics": {"port": 0}}
    inference = InferenceServicer(make_settings(**settings), shipped)
    running = await start_server([inference, OpenInferenceServicer(inference)], **settings)
    model = shipped.describe().name
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answers, _ = await stream_all(
            stub, [request(model, "1", JPEG_A, JPEG_B), not_an_image(model)]
        )
    assert [a.error_message == "" for a in answers] == [True, False]
    scraped = await asyncio.to_thread(scrape, running.server.metrics_url)
    assert scraped.value("visionrpc_inference_requests_total", model=model) == 3
    assert scraped.value("visionrpc_inference_images_total", model=model) == 2
    failures = scraped.all("visionrpc_inference_failures_total", model=model)
    assert [(labels["reason"], value) for labels, value in failures] == [("INVALID_ARGUMENT", 1)]
    calls = scraped.value(
        "visionrpc_grpc_requests_total",
        service="inference.GRPCInferenceService",
        method="ModelStreamInfer",
        code="OK",
    )
    assert calls == 1


# -- tracing ---------------------------------------------------------------------------------------


async def test_stream_requests_get_spans_with_their_stages(
    shipped: ModelRepository,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = make_settings(access_log=False)
    inference = InferenceServicer(settings, shipped)
    server = VisionServer(
        settings, [inference, OpenInferenceServicer(inference)], tracer_provider=provider
    )
    await server.start()
    model = shipped.describe().name
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answers, _ = await stream_all(
                stub,
                [request(model, "0", JPEG_A), not_an_image(model), request(model, "2", JPEG_B)],
            )
    finally:
        await server.stop(0)
    assert [a.error_message == "" for a in answers] == [True, False, True]
    await wait_until(lambda: any(s.name == STREAM for s in exporter.get_finished_spans()))
    spans = exporter.get_finished_spans()
    (stream_span,) = [s for s in spans if s.name == STREAM]
    frames = sorted(
        (
            s
            for s in spans
            if s.name == FRAME_SPAN
            and s.parent is not None
            and s.parent.span_id == stream_span.context.span_id
        ),
        key=lambda s: s.start_time or 0,
    )
    assert [(s.attributes or {})[REQUEST_ID_ATTRIBUTE] for s in frames] == ["0", "bad", "2"]
    for good in (frames[0], frames[2]):
        assert good.status.status_code is StatusCode.UNSET
        stages = [
            s.name
            for s in spans
            if s.parent is not None and s.parent.span_id == good.context.span_id
        ]
        assert sorted(stages) == sorted(
            ["decode", "preprocess", "queue", "inference", "postprocess"]
        )
    bad = frames[1]
    assert bad.status.status_code is StatusCode.ERROR
    assert (bad.status.description or "").startswith("INVALID_ARGUMENT: ")
    assert stream_span.status.status_code is StatusCode.UNSET  # one bad request is not the call's


# -- the drain -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("models"))


class Held(threading.Event):
    """Set it to let model calls run; ``entered`` is set once one is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()


@pytest.fixture
def held_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    """Model calls wait until the returned event is set (so requests pile up unread)."""
    gate = Held()
    run_model = OnnxModel.run

    def held(self: OnnxModel, batch: np.ndarray, all_cores: bool = False) -> list[np.ndarray]:
        gate.entered.set()
        gate.wait(60)
        return run_model(self, batch, all_cores=all_cores)

    monkeypatch.setattr(OnnxModel, "run", held)
    yield gate
    gate.set()


async def _serve(
    start_server: StartServer, models: Path, **overrides: Any
) -> tuple[RunningServer, str]:
    settings: dict[str, Any] = {
        "models_dir": models,
        "runtime": {"instances": 1},
        "grace_period_s": 30.0,
        "access_log": False,
        **overrides,
    }
    inference = InferenceServicer(make_settings(**settings))
    running = await start_server([inference, OpenInferenceServicer(inference)], **settings)
    return running, inference.repository.default_name


async def test_the_drain_answers_every_request_read_then_ends_unavailable(
    start_server: StartServer, models: Path, held_model: Held
) -> None:
    count = 30  # small requests: all fit in the transport's buffers while the model is held
    running, model = await _serve(start_server, models)
    sent_all, keep_open = asyncio.Event(), asyncio.Event()

    async def requests() -> AsyncIterator[oip.ModelInferRequest]:
        for index in range(count):
            yield request(model, str(index), JPEG)
        sent_all.set()
        await keep_open.wait()  # a client that stopped sending: the stream stays open

    async with grpc.aio.insecure_channel(running.address) as channel:
        stream = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            requests()
        )
        await asyncio.wait_for(sent_all.wait(), 15)
        stopping = asyncio.create_task(running.server.stop())
        await wait_until(lambda: not running.server.ready)
        held_model.set()  # the server has read at most a window of requests; the rest wait
        answers = await read_rest(stream)
        assert [a.infer_response.id for a in answers] == [str(i) for i in range(count)]
        assert all(a.error_message == "" for a in answers)
        assert (await stream.code(), await stream.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            stream_drained(count),
        )
        await asyncio.wait_for(stopping, 15)
        keep_open.set()
    assert running.server.in_flight == 0


async def test_an_idle_stream_ends_at_once_when_the_server_drains(
    start_server: StartServer, models: Path
) -> None:
    running, model = await _serve(start_server, models)
    outbox: asyncio.Queue[oip.ModelInferRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[oip.ModelInferRequest]:
        while True:
            yield await outbox.get()

    async with grpc.aio.insecure_channel(running.address) as channel:
        stream = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            requests()
        )
        outbox.put_nowait(request(model, "only", JPEG))
        first = await stream.read()
        assert first is not EOF and first.infer_response.id == "only"
        await asyncio.wait_for(running.server.stop(), 15)  # well under the 30 s grace
        assert await read_rest(stream) == []
        assert (await stream.code(), await stream.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            stream_drained(1),
        )


async def test_stream_requests_hold_the_clients_in_flight_slots(
    start_server: StartServer, models: Path, held_model: Held
) -> None:
    """A request read from the stream holds one of its client's in-flight slots until answered,
    as an InferStream frame does: with a limit of 1, a ModelInfer beside it is refused."""
    running, model = await _serve(start_server, models, fairness={"max_in_flight_per_client": 1})
    outbox: asyncio.Queue[oip.ModelInferRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[oip.ModelInferRequest]:
        while True:
            yield await outbox.get()

    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stream = stub.ModelStreamInfer(requests())
        outbox.put_nowait(request(model, "held", JPEG))
        assert await asyncio.to_thread(held_model.entered.wait, 15)  # in the model now
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ModelInfer(request(model, "beside", JPEG), timeout=15)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fairness.max_in_flight_per_client=1" in (refused.value.details() or "")
        held_model.set()
        answer = await stream.read()
        assert answer is not EOF and answer.infer_response.id == "held"
        assert answer.error_message == ""
        stream.cancel()
