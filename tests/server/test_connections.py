"""Connection age and keepalive settings reach gRPC, and a connection closed for its age fails no
call (gRPC sends GOAWAY; the client finishes its calls and opens a new connection)."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import StartServer
from visionrpc.client import AsyncClient
from visionrpc.server.app import server_options
from visionrpc.settings import Settings


def test_unset_connection_settings_leave_grpc_defaults() -> None:
    names = {name for name, _ in server_options(Settings())}
    assert not names & {
        "grpc.max_connection_age_ms",
        "grpc.max_connection_age_grace_ms",
        "grpc.max_connection_idle_ms",
        "grpc.keepalive_time_ms",
        "grpc.keepalive_timeout_ms",
        "grpc.http2.min_recv_ping_interval_without_data_ms",
    }


def test_connection_settings_from_the_environment_become_channel_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "MAX_CONNECTION_AGE_MS": "300000",
        "MAX_CONNECTION_AGE_GRACE_MS": "30000",
        "MAX_CONNECTION_IDLE_MS": "600000",
        "KEEPALIVE_TIME_MS": "60000",
        "KEEPALIVE_TIMEOUT_MS": "10000",
        "KEEPALIVE_PERMIT_WITHOUT_CALLS": "true",
        "MIN_RECV_PING_INTERVAL_MS": "20000",
    }.items():
        monkeypatch.setenv(f"VISIONRPC_CONNECTIONS__{name}", value)
    options = dict(server_options(Settings()))
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    assert options["grpc.max_connection_idle_ms"] == 600_000
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.keepalive_timeout_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 20_000


def test_a_negative_age_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="max_connection_age_ms"):
        Settings(connections={"max_connection_age_ms": -1})


async def test_calls_across_connection_age_goaways_all_succeed(start_server: StartServer) -> None:
    """Pings from 4 tasks for well over several connection ages: every one answered."""
    server = await start_server(
        connections={"max_connection_age_ms": 100, "max_connection_age_grace_ms": 1000}
    )
    async with AsyncClient(server.address, timeout=10) as client:

        async def worker(n: int) -> int:
            for i in range(n):
                assert (await client.ping(str(i))).message == str(i)
                await asyncio.sleep(0.005)
            return n

        done = await asyncio.wait_for(asyncio.gather(*(worker(60) for _ in range(4))), 60)
    assert sum(done) == 240
