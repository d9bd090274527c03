"""visionrpc.client against real servers: typed results, cancellation, retries, health."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest

import visionrpc
from tests.helpers import RunningServer, make_settings
from visionrpc.client import (
    USE_CLIENT_DEFAULT,
    AsyncClient,
    ChatMessageResult,
    Client,
    ClientSettings,
    HealthResult,
    NumberResult,
    PingResult,
    UploadResult,
    channel_options,
    service_config,
)
from visionrpc.server.app import VisionServer
from visionrpc.server.interceptors import ACCESS_LOGGER


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- sync Client -----------------------------------------------------------------------------------


def test_ping_returns_typed_result(threaded_server: RunningServer) -> None:
    with Client(threaded_server.address) as client:
        result = client.ping("hi")
    assert isinstance(result, PingResult)
    assert result.message == "hi" and result.server_version == visionrpc.__version__
    assert result.instance_id == threaded_server.core.instance_id
    assert abs(result.server_time - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(AttributeError):
        result.message = "frozen"  # type: ignore[misc]


def test_stream_numbers(threaded_server: RunningServer) -> None:
    with Client(threaded_server.address) as client:
        numbers = list(client.stream_numbers(start=1, count=3, step=10))
    assert numbers == [NumberResult(0, 1), NumberResult(1, 11), NumberResult(2, 21)]


def test_leaving_the_loop_cancels_the_stream(threaded_server: RunningServer) -> None:
    core = threaded_server.core
    with Client(threaded_server.address) as client:
        stream = client.stream_numbers(count=10_000, interval_ms=10)
        for number in stream:
            if number.index == 2:
                break
        stream.close()  # what a for loop's end does for a generator that is dropped
        _wait(lambda: core.active_streams == 0)
    assert core.numbers_produced < 20


def test_upload_numbers(threaded_server: RunningServer) -> None:
    with Client(threaded_server.address) as client:
        assert client.upload_numbers(iter([1, 2, 6])) == UploadResult(3, 9, 1, 6, 3.0)
        assert client.upload_numbers([]) == UploadResult(0, 0, 0, 0, 0.0)
        with pytest.raises(grpc.RpcError) as err:
            client.upload_numbers([2**63 - 1, 1])
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_chat_round_trip(threaded_server: RunningServer) -> None:
    with Client(threaded_server.address) as client:
        messages = list(client.chat("room", "me", ["hello", "bye"]))
    assert [(m.sender, m.text, m.seq) for m in messages] == [("me", "hello", 1), ("me", "bye", 2)]
    assert all(isinstance(m, ChatMessageResult) and m.room == "room" for m in messages)


def test_health(threaded_server: RunningServer) -> None:
    with Client(threaded_server.address) as client:
        assert client.health() == HealthResult("", "SERVING")
        assert client.health("visionrpc.v1.CoreServices").serving
        with pytest.raises(grpc.RpcError) as err:
            client.health("nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_default_deadline_comes_from_settings(threaded_server: RunningServer) -> None:
    client = Client(threaded_server.address, settings=ClientSettings(timeout_s=0.2))
    assert client.timeout == 0.2

    def slow_values():
        yield 1
        time.sleep(1)  # runs on a gRPC thread: the deadline passes meanwhile
        yield 2

    with client, pytest.raises(grpc.RpcError) as err:
        client.upload_numbers(slow_values())  # no timeout given: the client default applies
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_timeout_has_one_meaning_per_value(
    threaded_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A number is seconds and None is no deadline, in the constructor and per call alike;
    USE_CLIENT_DEFAULT defers to the level above (call -> client -> VISIONRPC_TIMEOUT_S)."""
    monkeypatch.setenv("VISIONRPC_TIMEOUT_S", "7")
    assert Client("x:1").timeout == 7.0
    assert Client("x:1", timeout=USE_CLIENT_DEFAULT).timeout == 7.0
    assert Client("x:1", timeout=3).timeout == 3
    assert Client("x:1", timeout=None).timeout is None

    def slow_values():
        yield 1
        time.sleep(0.5)
        yield 2

    with Client(threaded_server.address, timeout=0.2) as client:
        # per call: None means no deadline, even though the client's own is 0.2 s
        assert client.upload_numbers(slow_values(), timeout=None).sum == 3
        with pytest.raises(grpc.RpcError) as err:
            client.upload_numbers(slow_values(), timeout=USE_CLIENT_DEFAULT)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with Client(threaded_server.address, timeout=None) as client:
        assert client.upload_numbers(slow_values()).sum == 3  # no deadline at all


def test_context_manager_closes_the_channel(threaded_server: RunningServer) -> None:
    with Client(threaded_server.address) as client:
        client.ping()
    with pytest.raises(ValueError):  # grpc refuses calls on a closed channel
        client.ping()


def test_channel_options_match_the_server_limits() -> None:
    options = dict(channel_options())
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert options["grpc.max_send_message_length"] == 64 * 1024 * 1024
    assert options["grpc.enable_retries"] == 1
    config = json.loads(service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = config["methodConfig"][0]
    assert {"service": "visionrpc.v1.CoreServices"} in policy["name"]
    assert policy["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]


# -- AsyncClient -----------------------------------------------------------------------------------


async def test_async_client_all_calls(server: RunningServer) -> None:
    async with AsyncClient(server.address) as client:
        assert (await client.ping("a")).message == "a"
        numbers = [n.value async for n in client.stream_numbers(start=5, count=3, step=0)]
        assert numbers == [5, 6, 7]

        async def values():
            for v in (3, 4):
                yield v

        assert await client.upload_numbers(values()) == UploadResult(2, 7, 3, 4, 3.5)
        chat = [m.text async for m in client.chat("r", "me", ["x", "y"])]
        assert chat == ["x", "y"]
        assert (await client.health()).serving


async def test_async_stream_aclose_cancels_the_call(server: RunningServer) -> None:
    async with AsyncClient(server.address) as client:
        stream = client.stream_numbers(count=10_000, interval_ms=10)
        async for number in stream:
            if number.index == 2:
                break
        await stream.aclose()
        deadline = time.monotonic() + 2
        while server.core.active_streams:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)


async def test_unavailable_is_retried_by_grpc(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server still starting answers UNAVAILABLE; the service config retries without a loop."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    class Loading:
        name = "test.v1.Loading"
        release = asyncio.Event()

        def add_to_server(self, server: grpc.aio.Server) -> None:
            pass

        async def start(self) -> None:
            await self.release.wait()

        async def stop(self) -> None:
            pass

    loading = Loading()
    server = VisionServer(make_settings(access_log=True), [loading])
    starting = asyncio.create_task(server.start())
    try:
        while server.port == 0:
            await asyncio.sleep(0.01)

        def codes() -> list[str]:
            records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
            return [r.__dict__["fields"]["grpc_code"] for r in records]

        async with AsyncClient(server.address) as client:
            ping = asyncio.create_task(client.ping("retry me"))
            while "UNAVAILABLE" not in codes():
                assert not ping.done(), "the first attempt did not get UNAVAILABLE"
                await asyncio.sleep(0.005)
            loading.release.set()
            assert (await ping).message == "retry me"
        assert codes()[0] == "UNAVAILABLE" and codes()[-1] == "OK"
    finally:
        loading.release.set()
        await starting
        await server.stop(0)
