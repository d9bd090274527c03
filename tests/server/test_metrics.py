"""Prometheus metrics of a real server under real calls, scraped over HTTP and parsed with
prometheus-client's own parser: counts equal the calls made, histograms agree with the timings in
the answers, gauges return to 0, refusals are counted under their limit, and the port is off unless
asked for.
"""

from __future__ import annotations

import asyncio
import math
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    RunningServer,
    StartServer,
    make_settings,
    post_until_dropped,
    reader_and_non_reader,
)
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.metrics import DURATION_BUCKETS, REFUSAL_LIMITS, STAGES, UNKNOWN_MODEL
from visionrpc.v1 import core_pb2, core_pb2_grpc, inference_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb

IMAGE = cv2.imencode(".jpg", np.full((48, 64, 3), 120, np.uint8))[1].tobytes()
INFERENCE = "visionrpc.v1.InferenceMethods"
CORE = "visionrpc.v1.CoreServices"
MODEL = "defects"  # the shipped repository's default
Labels = dict[str, str]


class Scrape:
    """One scrape of /metrics: every sample by name, with helpers to pick one by its labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, Labels, float]] = []
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            self.samples += [(s.name, s.labels, s.value) for s in family.samples]

    def all(self, name: str, **labels: str) -> list[tuple[Labels, float]]:
        return [
            (have, value)
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` with these labels (0 when the series does not exist)."""
        found = self.all(name, **labels)
        assert len(found) <= 1, found
        return found[0][1] if found else 0.0

    def total(self, name: str, **labels: str) -> float:
        return sum(value for _, value in self.all(name, **labels))


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        return Scrape(reply.read().decode())


@pytest.fixture
async def served(
    start_server: StartServer,
) -> AsyncIterator[tuple[RunningServer, grpc.aio.Channel]]:
    settings: dict[str, Any] = {"access_log": False, "metrics": {"port": 0}}
    running = await start_server([InferenceServicer(make_settings(**settings))], **settings)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield running, channel


def model_version(scraped: Scrape) -> str:
    [(labels, value)] = scraped.all("visionrpc_model_info", model=MODEL)
    assert value == 1
    return labels["version"]


async def test_counts_and_histograms_match_the_calls_made(
    served: tuple[RunningServer, grpc.aio.Channel],
) -> None:
    running, channel = served
    url = running.server.metrics_url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    before = scrape(url)
    version = model_version(before)
    assert before.value("visionrpc_inference_requests_total", model=MODEL) == 0

    infer = inference_pb2_grpc.InferenceMethodsStub(channel)
    core = core_pb2_grpc.CoreServicesStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    answers: list[pb.InferResponse] = []
    for _ in range(3):
        answers.append(await infer.Infer(pb.InferRequest(image_bytes=IMAGE), timeout=30))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await infer.Infer(pb.InferRequest(image_bytes=b"not an image"), timeout=30)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    frames = [pb.InferRequest(image_bytes=IMAGE), pb.InferRequest(image_bytes=b"junk")]
    frames.append(pb.InferRequest(image_bytes=IMAGE))
    streamed = [reply async for reply in infer.InferStream(iter(frames), timeout=30)]
    assert [r.HasField("error") for r in streamed] == [False, True, False]
    answers += [r for r in streamed if not r.HasField("error")]
    for _ in range(2):
        await core.Ping(core_pb2.PingRequest(), timeout=10)
    numbers = [m async for m in core.StreamNumbers(core_pb2.StreamNumbersRequest(count=3))]
    assert len(numbers) == 3
    await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)

    after = scrape(url)
    grpc_calls = "visionrpc_grpc_requests_total"
    assert after.value(grpc_calls, service=INFERENCE, method="Infer", code="OK") == 3
    assert after.value(grpc_calls, service=INFERENCE, method="Infer", code="INVALID_ARGUMENT") == 1
    assert after.value(grpc_calls, service=INFERENCE, method="InferStream", code="OK") == 1
    assert after.value(grpc_calls, service=CORE, method="Ping", code="OK") == 2
    assert after.value(grpc_calls, service=CORE, method="StreamNumbers", code="OK") == 1
    health_checks = after.value(grpc_calls, service="grpc.health.v1.Health", method="Check")
    assert health_checks == 1 + before.value(grpc_calls, service="grpc.health.v1.Health")
    for method, calls in (("Infer", 4), ("InferStream", 1)):
        count = "visionrpc_grpc_request_duration_seconds_count"
        assert after.value(count, service=INFERENCE, method=method) == calls

    per_model = {"model": MODEL, "version": version}
    assert after.value("visionrpc_inference_requests_total", **per_model) == 7  # 4 calls + 3 frames
    failures = after.all("visionrpc_inference_failures_total", **per_model)
    assert [(labels["reason"], value) for labels, value in failures] == [("INVALID_ARGUMENT", 2)]
    assert after.value("visionrpc_inference_images_total", **per_model) == 5
    assert after.value("visionrpc_inference_request_duration_seconds_count", **per_model) == 7

    # each answered request's stage timings are in the stage histograms, to the rounding
    stage = "visionrpc_inference_stage_duration_seconds"
    for name in STAGES:
        assert after.value(f"{stage}_count", stage=name, **per_model) == 5
        expected = sum(getattr(a.timings, f"{name}_ms") for a in answers) / 1000
        assert after.value(f"{stage}_sum", stage=name, **per_model) == pytest.approx(expected)
    buckets = after.all(f"{stage}_bucket", stage="inference", **per_model)
    assert [float(labels["le"]) for labels, _ in buckets] == [*DURATION_BUCKETS, math.inf]
    queue_s = sum(a.timings.queue_ms for a in answers) / 1000
    compute_s = sum(a.timings.inference_ms for a in answers) / 1000
    assert after.value("visionrpc_inference_queue_seconds_total", **per_model) == pytest.approx(
        queue_s
    )
    assert after.value("visionrpc_inference_compute_seconds_total", **per_model) == pytest.approx(
        compute_s
    )

    # every answered request ran in some model run; the batch-size histogram counts those runs
    runs = after.value("visionrpc_inference_executions_total", **per_model)
    assert 1 <= runs <= 5
    assert after.value("visionrpc_inference_batch_size_count", model=MODEL) == runs
    assert after.value("visionrpc_inference_batch_size_sum", model=MODEL) == 5

    # nothing left in work
    for gauge in ("queue_depth", "in_flight"):
        assert after.value(f"visionrpc_inference_{gauge}", model=MODEL) == 0, gauge
    assert after.value("visionrpc_model_instances_busy", model=MODEL) == 0
    assert after.value("visionrpc_model_instances", model=MODEL) >= 1
    assert after.value("visionrpc_active_clients") == 0
    for method in ("InferStream", "StreamNumbers"):
        assert after.total("visionrpc_active_streams", method=method) == 0

    # start-up and process facts
    assert after.value("visionrpc_model_load_duration_seconds", **per_model) > 0
    [(info, _)] = after.all("visionrpc_model_info", model=MODEL)
    assert info["execution_provider"] == "CPUExecutionProvider" and info["task"] == "segment"
    assert after.value("process_cpu_seconds_total") > 0
    assert after.all("python_info")
    assert after.types["visionrpc_inference_request_duration_seconds"] == "histogram"
    assert after.types["visionrpc_model_info"] == "gauge"
    assert after.total("visionrpc_refused_total") == 0
    assert "peer" not in after.text and "ipv4" not in after.text


async def test_open_streams_and_requests_in_work_are_gauged(
    served: tuple[RunningServer, grpc.aio.Channel],
) -> None:
    running, channel = served
    url = running.server.metrics_url
    infer = inference_pb2_grpc.InferenceMethodsStub(channel)
    outbox: asyncio.Queue[pb.InferRequest | None] = asyncio.Queue()

    async def frames() -> AsyncIterator[pb.InferRequest]:
        while (frame := await outbox.get()) is not None:
            yield frame

    call = infer.InferStream(frames(), timeout=30)
    outbox.put_nowait(pb.InferRequest(image_bytes=IMAGE))
    first = await call.read()
    assert isinstance(first, pb.InferResponse) and not first.HasField("error")
    during = await asyncio.to_thread(scrape, url)
    assert during.value("visionrpc_active_streams", service=INFERENCE, method="InferStream") == 1
    assert during.value("visionrpc_active_clients") == 1  # the stream waits for its next frame
    outbox.put_nowait(None)
    assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]
    assert await call.code() is grpc.StatusCode.OK
    after = await asyncio.to_thread(scrape, url)
    assert after.value("visionrpc_active_streams", service=INFERENCE, method="InferStream") == 0
    assert after.value("visionrpc_active_clients") == 0
    assert after.value("visionrpc_inference_in_flight", model=MODEL) == 0


async def test_refusals_and_unknown_models_are_counted(start_server: StartServer) -> None:
    settings: dict[str, Any] = {
        "access_log": False,
        "metrics": {"port": 0},
        "max_image_pixels": 100,
    }
    running = await start_server([InferenceServicer(make_settings(**settings))], **settings)
    async with grpc.aio.insecure_channel(running.address) as channel:
        infer = inference_pb2_grpc.InferenceMethodsStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await infer.Infer(pb.InferRequest(image_bytes=IMAGE), timeout=30)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 100 pixels" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await infer.Infer(pb.InferRequest(image_bytes=IMAGE, model="nope"), timeout=30)
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
        # the server still serves (a tiny raw frame is under the pixel limit)
        raw = pb.RawImage(width=8, height=8, channels=3, data=bytes(8 * 8 * 3))
        reply = await infer.Infer(pb.InferRequest(raw=raw), timeout=30)
        assert reply.image_width == 8

    scraped = scrape(running.server.metrics_url)
    refusals = {labels["limit"]: value for labels, value in scraped.all("visionrpc_refused_total")}
    assert set(refusals) == set(REFUSAL_LIMITS)
    assert refusals.pop("max_image_pixels") == 1
    assert set(refusals.values()) == {0}
    failures = "visionrpc_inference_failures_total"
    assert scraped.value(failures, model=MODEL, reason="RESOURCE_EXHAUSTED") == 1
    assert scraped.value(failures, model=UNKNOWN_MODEL, reason="NOT_FOUND") == 1
    assert scraped.value("visionrpc_inference_requests_total", model=MODEL) == 2
    assert scraped.value("visionrpc_inference_in_flight", model=UNKNOWN_MODEL) == 0


async def test_refused_by_the_gate_is_counted_with_its_code(start_server: StartServer) -> None:
    """A call refused before any servicer runs (a bad token) is counted too."""
    tokens = '[{"name": "ops", "token": "s3cret", "scopes": ["core"]}]'
    running = await start_server(access_log=False, metrics={"port": 0}, auth={"tokens": tokens})
    async with grpc.aio.insecure_channel(running.address) as channel:
        core = core_pb2_grpc.CoreServicesStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await core.Ping(core_pb2.PingRequest(), timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        await core.Ping(
            core_pb2.PingRequest(), timeout=10, metadata=[("authorization", "Bearer s3cret")]
        )
    scraped = scrape(running.server.metrics_url)
    calls = "visionrpc_grpc_requests_total"
    assert scraped.value(calls, service=CORE, method="Ping", code="UNAUTHENTICATED") == 1
    assert scraped.value(calls, service=CORE, method="Ping", code="OK") == 1


async def test_each_server_has_its_own_registry(start_server: StartServer) -> None:
    first = await start_server(access_log=False, metrics={"port": 0})
    second = await start_server(access_log=False, metrics={"port": 0})
    assert first.server.metrics_port != second.server.metrics_port
    async with grpc.aio.insecure_channel(first.address) as channel:
        await core_pb2_grpc.CoreServicesStub(channel).Ping(core_pb2.PingRequest(), timeout=10)
    ping = {"service": CORE, "method": "Ping", "code": "OK"}
    assert scrape(first.server.metrics_url).value("visionrpc_grpc_requests_total", **ping) == 1
    assert scrape(second.server.metrics_url).value("visionrpc_grpc_requests_total", **ping) == 0


def _listening_ports() -> set[int]:
    """TCP ports this process listens on (Linux: its socket inodes in /proc/net/tcp*)."""
    import os
    from pathlib import Path

    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/fd"), reason="needs Linux /proc")
async def test_metrics_are_off_by_default(start_server: StartServer) -> None:
    before = _listening_ports()
    running = await start_server(access_log=False)
    assert running.settings.metrics.port is None
    assert running.server.metrics is None and running.server.metrics_url == ""
    assert _listening_ports() - before == {running.server.port}  # only gRPC listens
    on = await start_server(access_log=False, metrics={"port": 0})
    assert _listening_ports() - before == {
        running.server.port,
        on.server.port,
        on.server.metrics_port,
    }


async def test_a_dropped_chat_reader_is_a_refusal(start_server: StartServer) -> None:
    running = await start_server(
        access_log=False,
        metrics={"port": 0},
        chat_buffer_size=4,
        fairness={"chat_post_wait_s": 0.2},
    )
    hub = running.core.hub
    async with reader_and_non_reader(running.address, "busy") as (fast, never_reads):
        during = await asyncio.to_thread(scrape, running.server.metrics_url)
        assert during.value("visionrpc_active_streams", service=CORE, method="Chat") == 2
        await post_until_dropped(fast, hub)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await never_reads.read_rest()
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        fast.close()
        await fast.read_rest()
    after = scrape(running.server.metrics_url)
    assert after.value("visionrpc_refused_total", limit="fairness.chat_post_wait_s") == 1
    chat = {"service": CORE, "method": "Chat"}
    assert after.value("visionrpc_grpc_requests_total", code="RESOURCE_EXHAUSTED", **chat) == 1
    assert after.value("visionrpc_grpc_requests_total", code="OK", **chat) == 1
    assert after.value("visionrpc_active_streams", **chat) == 0


async def test_an_infer_over_the_clients_in_flight_limit_is_a_refusal(
    start_server: StartServer,
) -> None:
    settings: dict[str, Any] = {
        "access_log": False,
        "metrics": {"port": 0},
        "fairness": {"max_in_flight_per_client": 1},
    }
    running = await start_server([InferenceServicer(make_settings(**settings))], **settings)
    url = running.server.metrics_url
    async with grpc.aio.insecure_channel(running.address) as channel:
        infer = inference_pb2_grpc.InferenceMethodsStub(channel)
        outbox: asyncio.Queue[pb.InferRequest | None] = asyncio.Queue()

        async def frames() -> AsyncIterator[pb.InferRequest]:
            while (frame := await outbox.get()) is not None:
                yield frame

        stream = infer.InferStream(frames(), timeout=30)  # holds the slot, waiting for a frame
        deadline = asyncio.get_running_loop().time() + 10
        while (await asyncio.to_thread(scrape, url)).value("visionrpc_active_clients") != 1:
            assert asyncio.get_running_loop().time() < deadline, "the stream never took its slot"
            await asyncio.sleep(0.02)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await infer.Infer(pb.InferRequest(image_bytes=IMAGE), timeout=30)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fairness.max_in_flight_per_client=1" in (refused.value.details() or "")
        outbox.put_nowait(None)
        assert await stream.code() is grpc.StatusCode.OK
        reply = await infer.Infer(pb.InferRequest(image_bytes=IMAGE), timeout=30)  # still serves
        assert reply.image_width == 64
    scraped = scrape(url)
    limit = "fairness.max_in_flight_per_client"
    assert scraped.value("visionrpc_refused_total", limit=limit) == 1
    assert scraped.total("visionrpc_refused_total") == 1
    failures = "visionrpc_inference_failures_total"
    assert scraped.value(failures, model=MODEL, reason="RESOURCE_EXHAUSTED") == 1
    assert scraped.value("visionrpc_inference_requests_total", model=MODEL) == 2
    assert scraped.value("visionrpc_inference_in_flight", model=MODEL) == 0
    assert scraped.value("visionrpc_active_clients") == 0
