"""Chat: the hub on its own, then the Chat call end to end."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.helpers import (
    ChatSession,
    RunningServer,
    StartServer,
    post_until_dropped,
    reader_and_non_reader,
    wait_until,
)
from visionrpc.errors import InvalidInputError, ResourceLimitError
from visionrpc.server.reference.chat import ChatHub
from visionrpc.v1 import core_pb2_grpc

# -- hub (no gRPC) ---------------------------------------------------------------------------------


async def test_hub_delivers_one_order_to_everyone() -> None:
    hub = ChatHub(buffer_size=10)
    a, b = hub.join("r", "a"), hub.join("r", "b")
    a.post("1")
    b.post("2")
    a.post("3")
    for participant in (a, b):
        got = [await participant.receive() for _ in range(3)]
        assert [(e.sender, e.text, e.seq) for e in got if e] == [
            ("a", "1", 1),
            ("b", "2", 2),
            ("a", "3", 3),
        ]


async def test_hub_rooms_are_independent_and_freed() -> None:
    hub = ChatHub(buffer_size=10)
    a, b = hub.join("x", "a"), hub.join("y", "b")
    assert a.post("hi").seq == 1 and b.post("hi").seq == 1
    assert hub.rooms() == ["x", "y"]
    hub.leave(a)
    hub.leave(a)  # idempotent
    assert hub.rooms() == ["y"]
    hub.leave(b)
    assert hub.rooms() == []
    assert hub.join("x", "c").post("again").seq == 1  # a freed room starts over


async def test_hub_late_joiner_sees_only_later_messages() -> None:
    hub = ChatHub(buffer_size=10)
    a = hub.join("r", "a")
    a.post("before")
    b = hub.join("r", "b")
    a.post("after")
    event = await b.receive()
    assert event is not None and event.text == "after"


async def test_hub_drops_a_full_participant_without_blocking_others() -> None:
    hub = ChatHub(buffer_size=2)
    slow, fast = hub.join("r", "slow"), hub.join("r", "fast")
    for i in range(5):
        fast.post(str(i))
        assert await fast.receive() is not None
    assert slow.dropped and hub.members("r") == ["fast"] and hub.dropped_total == 1
    with pytest.raises(ResourceLimitError, match="dropped"):
        await slow.receive()
    with pytest.raises(ResourceLimitError):
        slow.post("still here?")


async def test_hub_close_ends_receive_after_buffered_messages() -> None:
    hub = ChatHub(buffer_size=5)
    a = hub.join("r", "a")
    a.post("last")
    a.close()
    first = await a.receive()
    assert first is not None and first.text == "last"
    assert await a.receive() is None


async def test_hub_requires_a_room() -> None:
    with pytest.raises(InvalidInputError):
        ChatHub(buffer_size=1).join("", "a")


# -- over gRPC ------------------------------------------------------------------------------------


async def test_own_messages_come_back_with_seq_and_time(
    stub: core_pb2_grpc.CoreServicesAsyncStub,
) -> None:
    session = ChatSession(stub, "solo", "me")
    session.send("one")
    session.send("two")
    session.close()
    messages = await session.read_rest()
    assert [(m.room, m.sender, m.text, m.seq) for m in messages] == [
        ("solo", "me", "one", 1),
        ("solo", "me", "two", 2),
    ]
    assert all(m.sent_at.seconds > 0 for m in messages)
    assert await session.call.code() == grpc.StatusCode.OK


async def test_concurrent_participants_see_the_same_order(
    server: RunningServer, stub: core_pb2_grpc.CoreServicesAsyncStub
) -> None:
    alice, bob = ChatSession(stub, "room", "alice"), ChatSession(stub, "room", "bob")
    await alice.join()
    await bob.join()
    assert sorted(server.core.hub.members("room")) == ["alice", "bob"]
    for i in range(20):  # interleaved posts from both streams, racing on the server
        alice.send(f"a{i}")
        bob.send(f"b{i}")
    alice_seen = [await alice.read() for _ in range(41)]  # bob's join + 40 posts
    bob_seen = [await bob.read() for _ in range(40)]
    alice_seen = alice_seen[1:]
    key = [(m.seq, m.sender, m.text) for m in alice_seen]
    assert key == [(m.seq, m.sender, m.text) for m in bob_seen]
    seqs = [m.seq for m in alice_seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == 40
    assert {m.text for m in alice_seen} == {f"{p}{i}" for p in "ab" for i in range(20)}
    alice.close()
    bob.close()
    await alice.read_rest()
    await bob.read_rest()


async def test_late_joiner_sees_messages_from_its_join_on(
    stub: core_pb2_grpc.CoreServicesAsyncStub,
) -> None:
    early, late = ChatSession(stub, "r", "early"), ChatSession(stub, "r", "late")
    await early.join()
    early.send("before")
    await early.read()
    joined = await late.join()
    early.send("after")
    after = await late.read()
    assert after.text == "after" and after.seq == joined.seq + 1
    for session in (early, late):
        session.close()
        await session.read_rest()


async def test_slow_reader_is_dropped_while_others_continue(start_server: StartServer) -> None:
    running = await start_server(chat_buffer_size=4)
    hub = running.core.hub
    async with reader_and_non_reader(running.address, "busy") as (fast, slow):
        await post_until_dropped(fast, hub)
        assert hub.members("busy") == ["fast"]
        fast.send("still going")
        assert (await fast.read()).text == "still going"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await slow.read_rest()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = err.value.details() or ""
        assert "dropped" in details and "chat_buffer_size" in details
        fast.close()
        await fast.read_rest()
    await wait_until(lambda: hub.rooms() == [])


async def test_closing_or_cancelling_leaves_and_frees_the_room(
    server: RunningServer, stub: core_pb2_grpc.CoreServicesAsyncStub
) -> None:
    hub = server.core.hub
    a, b = ChatSession(stub, "temp", "a"), ChatSession(stub, "temp", "b")
    await a.join()
    await b.join()
    assert hub.rooms() == ["temp"]
    b.call.cancel()
    await wait_until(lambda: hub.members("temp") == ["a"])
    a.close()
    await a.read_rest()
    await wait_until(lambda: hub.rooms() == [])


async def test_first_message_must_name_a_room(stub: core_pb2_grpc.CoreServicesAsyncStub) -> None:
    session = ChatSession(stub, "", "nobody")
    session.send("hi")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await session.read_rest()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_switching_rooms_mid_stream_is_refused(
    server: RunningServer, stub: core_pb2_grpc.CoreServicesAsyncStub
) -> None:
    session = ChatSession(stub, "one", "me")
    await session.join()
    session.room = "two"
    session.send("hi")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await session.read_rest()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await wait_until(lambda: server.core.hub.rooms() == [])


async def test_closing_without_joining_is_fine(stub: core_pb2_grpc.CoreServicesAsyncStub) -> None:
    session = ChatSession(stub, "r", "me")
    session.close()
    assert await session.read_rest() == []
    assert await session.call.code() == grpc.StatusCode.OK
    await asyncio.sleep(0)
