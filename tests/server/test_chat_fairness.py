"""Chat under bursts: readers that keep up are never dropped; a drop is RESOURCE_EXHAUSTED.

Posters wait (a bounded time) for a full inbox instead of dropping its reader at once, so the room
moves at the pace of its readers; only a reader that stops taking messages is dropped.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.helpers import (
    ChatSession,
    StartServer,
    post_until_dropped,
    reader_and_non_reader,
    wait_until,
)
from visionrpc.errors import ResourceLimitError
from visionrpc.server.reference.chat import ChatHub, Participant
from visionrpc.v1 import core_pb2, core_pb2_grpc

POSTERS, READERS, MESSAGES = 3, 3, 1000


async def read_posts(session: ChatSession, count: int) -> list[core_pb2.ChatMessage]:
    """Read until ``count`` posts (non-empty texts; joins are empty) came, as fast as they come."""
    posts: list[core_pb2.ChatMessage] = []
    while len(posts) < count:
        message = await session.read(timeout=30)
        if message.text:
            posts.append(message)
    return posts


async def test_readers_that_keep_up_are_never_dropped_by_bursting_posters(
    start_server: StartServer,
) -> None:
    running = await start_server(chat_buffer_size=16)  # small: a burst fills it many times over
    hub = running.core.hub
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        readers = [ChatSession(stub, "burst", f"reader{i}") for i in range(READERS)]
        posters = [ChatSession(stub, "burst", f"poster{i}") for i in range(POSTERS)]
        for session in [*readers, *posters]:
            await session.join()
        await wait_until(lambda: len(hub.members("burst")) == READERS + POSTERS)

        expected = POSTERS * MESSAGES
        reading = [
            asyncio.create_task(read_posts(session, expected)) for session in [*readers, *posters]
        ]
        for i in range(MESSAGES):
            for poster in posters:
                poster.send(f"{poster.sender}:{i}")
        seen = await asyncio.wait_for(asyncio.gather(*reading), 120)

        assert hub.dropped_total == 0
        for messages in seen:
            assert len(messages) == expected  # every post reached every reader, none dropped
            seqs = [m.seq for m in messages]
            assert seqs == sorted(seqs)
        for session in [*readers, *posters]:
            session.close()
            assert await session.read_rest(timeout=30) == []
            assert await session.call.code() == grpc.StatusCode.OK
    await wait_until(lambda: hub.rooms() == [])


async def test_a_reader_that_stops_reading_is_dropped_with_resource_exhausted(
    start_server: StartServer,
) -> None:
    running = await start_server(chat_buffer_size=4, fairness={"chat_post_wait_s": 0.2})
    hub = running.core.hub
    async with reader_and_non_reader(running.address, "r") as (fast, slow):
        await post_until_dropped(fast, hub)
        assert hub.members("r") == ["fast"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await slow.read_rest()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = err.value.details() or ""
        assert "dropped" in details and "chat_buffer_size" in details
        assert "chat_post_wait_s" in details and "read" in details
        fast.send("still serving")
        assert (await fast.read()).text == "still serving"
        fast.close()
        await fast.read_rest()
    await wait_until(lambda: hub.rooms() == [])


# -- the hub alone: exact rules ---------------------------------------------------------------


async def test_hub_poster_waits_for_a_full_reader_then_delivers() -> None:
    hub = ChatHub(buffer_size=2, post_wait_s=5)
    poster, reader = hub.join("r", "poster"), hub.join("r", "reader")
    for text in ("1", "2"):  # both inboxes now full
        await poster.send(text)
        assert await poster.receive() is not None
    third = asyncio.create_task(poster.send("3"))
    await asyncio.sleep(0.05)
    assert not third.done()  # waits for the reader rather than dropping it
    first = await reader.receive()
    assert first is not None and first.text == "1"
    event = await asyncio.wait_for(third, 5)
    assert event.seq == 3 and hub.dropped_total == 0
    assert [(await reader.receive()).text for _ in range(2)] == ["2", "3"]  # type: ignore[union-attr]


async def test_hub_drops_a_reader_full_for_the_whole_wait() -> None:
    hub = ChatHub(buffer_size=1, post_wait_s=0.05)
    poster, stuck = hub.join("r", "poster"), hub.join("r", "stuck")
    await poster.send("1")
    assert await poster.receive() is not None
    event = await poster.send("2")  # stuck never reads: dropped after the wait, post goes on
    assert event.seq == 2 and hub.members("r") == ["poster"] and hub.dropped_total == 1
    with pytest.raises(ResourceLimitError, match="chat_post_wait_s"):
        await stuck.receive()


async def test_hub_a_slow_reader_that_keeps_taking_messages_is_never_dropped() -> None:
    hub = ChatHub(buffer_size=1, post_wait_s=0.5)
    slow = hub.join("r", "slow")
    posters = [hub.join("r", f"p{i}") for i in range(2)]

    async def drain(participant: Participant) -> None:
        while await participant.receive() is not None:
            pass

    draining = [asyncio.create_task(drain(p)) for p in posters]

    async def post_all(poster: Participant) -> None:
        for i in range(5):
            await poster.send(f"{poster.sender}:{i}")

    posting = asyncio.gather(*(post_all(p) for p in posters))
    got = []
    for _ in range(10):  # slower than both posters together, faster than the wait
        await asyncio.sleep(0.05)
        event = await slow.receive()
        assert event is not None
        got.append(event.text)
    await asyncio.wait_for(posting, 5)
    assert hub.dropped_total == 0 and sorted(got) == sorted(
        f"p{p}:{i}" for p in range(2) for i in range(5)
    )
    for participant in posters:
        participant.close()
    await asyncio.gather(*draining)
