"""Failures the client explains better than gRPC: message limits, and the caller's own iterator.

Real servers on loopback with small limits; each case asserts the code, the message and that the
same client goes on working.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from tests.helpers import RunningServer, StartServer, StartThreadedServer
from visionrpc.client import AsyncClient, Client, MessageSizeError

KiB = 1024


def test_request_over_the_servers_limit_names_the_server_setting(
    start_threaded_server: StartThreadedServer,
) -> None:
    running = start_threaded_server(max_receive_message_bytes=64 * KiB)
    # this client may send more than the server accepts, so the server is the one refusing
    with Client(running.address, options=[("grpc.max_send_message_length", 1 << 30)]) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.ping("x" * (100 * KiB))
        assert isinstance(err.value, MessageSizeError)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = err.value.details() or ""
        assert "the request is 102,4" in details  # the message's size in bytes
        assert "over the server's limit of 65,536" in details
        assert "max_receive_message_bytes, env VISIONRPC_MAX_RECEIVE_MESSAGE_BYTES" in details
        assert client.ping("small").message == "small"


def test_callers_channel_options_win_and_the_clients_own_limit_is_named(
    threaded_server: RunningServer,
) -> None:
    options = [("grpc.max_send_message_length", 4 * KiB)]
    with Client(threaded_server.address, options=options) as client:
        with pytest.raises(MessageSizeError) as err:
            client.ping("x" * (8 * KiB))
        details = err.value.details() or ""
        assert "over this client's send limit of 4,096" in details
        assert '("grpc.max_send_message_length", N)' in details
        assert client.ping("small").message == "small"
    # and the other way: raising the limit above the built-in 64 MiB is possible
    raised = dict(
        Client("127.0.0.1:1", options=[("grpc.max_receive_message_length", 1 << 28)])._options
    )
    assert raised["grpc.max_receive_message_length"] == 1 << 28


def test_response_over_the_clients_receive_limit(threaded_server: RunningServer) -> None:
    options = [("grpc.max_receive_message_length", 2 * KiB)]
    with Client(threaded_server.address, options=options) as client:
        with pytest.raises(MessageSizeError) as err:
            client.ping("x" * (4 * KiB))  # Ping echoes it: the reply is the large message
        details = err.value.details() or ""
        assert "the response is" in details and "this client's receive limit of 2,048" in details
        assert '("grpc.max_receive_message_length", N)' in details


async def test_response_over_the_servers_send_limit(start_server: StartServer) -> None:
    running = await start_server(max_send_message_bytes=2 * KiB)
    async with AsyncClient(running.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.ping("x" * (4 * KiB))
        assert isinstance(err.value, MessageSizeError)
        details = err.value.details() or ""
        assert "the response is" in details and "the server's limit of 2,048" in details
        assert "max_send_message_bytes, env VISIONRPC_MAX_SEND_MESSAGE_BYTES" in details
        assert (await client.ping("ok")).message == "ok"


def test_an_exception_from_the_callers_iterator_is_raised_as_it_was(
    threaded_server: RunningServer,
) -> None:
    def values() -> Iterator[int]:
        yield 1
        raise ValueError("not an integer: 'x'")

    with Client(threaded_server.address) as client:
        with pytest.raises(ValueError, match="not an integer: 'x'"):
            client.upload_numbers(values())
        assert client.upload_numbers([1, 2]).sum == 3


async def test_async_an_exception_from_the_callers_iterator_is_raised_as_it_was(
    server: RunningServer,
) -> None:
    async def values() -> AsyncIterator[int]:
        yield 1
        raise ValueError("sensor unplugged")

    async with AsyncClient(server.address) as client:
        with pytest.raises(ValueError, match="sensor unplugged"):
            await client.upload_numbers(values())

        async def lines() -> AsyncIterator[str]:
            yield "hi"
            raise ValueError("stdin closed badly")

        with pytest.raises(ValueError, match="stdin closed badly"):
            async for _ in client.chat("room", "me", lines()):
                pass
        assert (await client.upload_numbers([4, 5])).sum == 9
