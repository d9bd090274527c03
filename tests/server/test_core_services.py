"""CoreServices semantics against a real server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

import visionrpc
from tests.helpers import RunningServer, StartServer, wait_until
from visionrpc.v1 import core_pb2, core_pb2_grpc

INT64_MAX = 2**63 - 1


async def test_ping_echoes_with_server_identity(stub: core_pb2_grpc.CoreServicesAsyncStub) -> None:
    before = datetime.now(UTC)
    first = await stub.Ping(core_pb2.PingRequest(message="hello"))
    second = await stub.Ping(core_pb2.PingRequest(message=""))
    assert first.message == "hello" and second.message == ""
    assert first.server_version == visionrpc.__version__
    assert str(uuid.UUID(first.instance_id)) == first.instance_id
    assert second.instance_id == first.instance_id
    server_time = first.server_time.ToDatetime(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= server_time <= datetime.now(UTC) + timedelta(seconds=1)


async def test_instance_id_differs_per_server(start_server: StartServer) -> None:
    a, b = await start_server(), await start_server()
    assert a.core.instance_id != b.core.instance_id


async def test_stream_numbers_values(stub: core_pb2_grpc.CoreServicesAsyncStub) -> None:
    call = stub.StreamNumbers(core_pb2.StreamNumbersRequest(start=-3, count=4, step=5))
    replies = [(r.index, r.value) async for r in call]
    assert replies == [(0, -3), (1, 2), (2, 7), (3, 12)]
    assert await call.code() == grpc.StatusCode.OK


async def test_stream_numbers_step_zero_means_one(
    stub: core_pb2_grpc.CoreServicesAsyncStub,
) -> None:
    call = stub.StreamNumbers(core_pb2.StreamNumbersRequest(start=7, count=3, step=0))
    assert [r.value async for r in call] == [7, 8, 9]


async def test_stream_numbers_count_zero_is_empty(
    stub: core_pb2_grpc.CoreServicesAsyncStub,
) -> None:
    call = stub.StreamNumbers(core_pb2.StreamNumbersRequest(start=1, count=0))
    assert [r async for r in call] == []
    assert await call.code() == grpc.StatusCode.OK


async def test_stream_numbers_is_paced(stub: core_pb2_grpc.CoreServicesAsyncStub) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    call = stub.StreamNumbers(core_pb2.StreamNumbersRequest(count=4, interval_ms=40))
    assert len([r async for r in call]) == 4
    assert loop.time() - started >= 0.12  # three pauses between four numbers


async def test_stream_numbers_over_limit_is_invalid_argument(start_server: StartServer) -> None:
    running = await start_server(max_stream_count=5)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        ok = stub.StreamNumbers(core_pb2.StreamNumbersRequest(count=5))
        assert len([r async for r in ok]) == 5
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.StreamNumbers(core_pb2.StreamNumbersRequest(count=6)):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "5" in (err.value.details() or "") and "6" in (err.value.details() or "")
    assert running.core.numbers_produced == 5


async def test_stream_numbers_int64_overflow_is_out_of_range(
    stub: core_pb2_grpc.CoreServicesAsyncStub,
) -> None:
    call = stub.StreamNumbers(core_pb2.StreamNumbersRequest(start=INT64_MAX - 1, count=3))
    values = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for reply in call:
            values.append(reply.value)
    assert values == [INT64_MAX - 1, INT64_MAX]
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_cancel_mid_stream_stops_the_producer(
    server: RunningServer, stub: core_pb2_grpc.CoreServicesAsyncStub
) -> None:
    call = stub.StreamNumbers(core_pb2.StreamNumbersRequest(count=10_000, interval_ms=10))
    for _ in range(3):
        await call.read()
    assert server.core.active_streams == 1
    call.cancel()
    await wait_until(lambda: server.core.active_streams == 0, timeout=2)
    produced = server.core.numbers_produced
    await asyncio.sleep(0.2)  # ~20 more numbers if the producer were still running
    assert server.core.numbers_produced == produced
    assert produced < 20
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_deadline_exceeded_stops_the_producer(
    server: RunningServer, stub: core_pb2_grpc.CoreServicesAsyncStub
) -> None:
    call = stub.StreamNumbers(
        core_pb2.StreamNumbersRequest(count=10_000, interval_ms=10), timeout=0.3
    )
    received = 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            received += 1
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0 < received < 100
    await wait_until(lambda: server.core.active_streams == 0, timeout=2)
    produced = server.core.numbers_produced
    await asyncio.sleep(0.2)
    assert server.core.numbers_produced == produced < 100


def _numbers(*values: int):
    async def gen():
        for value in values:
            yield core_pb2.NumberRequest(value=value)

    return gen()


async def test_upload_numbers_summary(stub: core_pb2_grpc.CoreServicesAsyncStub) -> None:
    summary = await stub.UploadNumbers(_numbers(4, -2, 10, 0))
    assert (summary.count, summary.sum, summary.min, summary.max) == (4, 12, -2, 10)
    assert summary.mean == pytest.approx(3.0)


async def test_upload_single_number(stub: core_pb2_grpc.CoreServicesAsyncStub) -> None:
    summary = await stub.UploadNumbers(_numbers(-7))
    assert (summary.count, summary.sum, summary.min, summary.max, summary.mean) == (
        1,
        -7,
        -7,
        -7,
        -7.0,
    )


async def test_empty_upload_is_all_zero(stub: core_pb2_grpc.CoreServicesAsyncStub) -> None:
    summary = await stub.UploadNumbers(_numbers())
    assert (summary.count, summary.sum, summary.min, summary.max, summary.mean) == (0, 0, 0, 0, 0.0)


async def test_upload_sum_overflow_is_out_of_range(
    stub: core_pb2_grpc.CoreServicesAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UploadNumbers(_numbers(INT64_MAX, 1))
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "overflow" in (err.value.details() or "")


async def test_upload_sum_at_int64_limits_is_fine(
    stub: core_pb2_grpc.CoreServicesAsyncStub,
) -> None:
    # intermediate sums beyond int64 do not matter: only the final sum must fit
    summary = await stub.UploadNumbers(_numbers(INT64_MAX, 5, -5))
    assert summary.sum == INT64_MAX
    summary = await stub.UploadNumbers(_numbers(-(2**63)))
    assert summary.sum == -(2**63)
