"""CoreServices: Ping, StreamNumbers, UploadNumbers and Chat on grpc.aio.

The servicer is a thin adapter: it validates, converts protobuf ⇄ Python and raises domain errors
(mapped to statuses by server.status). Chat rooms live in server.chat.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from visionrpc import __version__
from visionrpc.errors import InvalidInputError, OutOfRangeError, shorten
from visionrpc.server.drain import DrainingError, drain_started
from visionrpc.server.reference.chat import ChatEvent, ChatHub, Participant
from visionrpc.server.status import Context, map_errors
from visionrpc.settings import Settings
from visionrpc.v1 import core_pb2, core_pb2_grpc

SERVICE_NAME: str = core_pb2.DESCRIPTOR.services_by_name["CoreServices"].full_name
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _chat_message(event: ChatEvent) -> core_pb2.ChatMessage:
    return core_pb2.ChatMessage(
        room=event.room,
        sender=event.sender,
        text=event.text,
        seq=event.seq,
        sent_at=_timestamp(event.sent_at),
    )


class CoreServicesServicer(core_pb2_grpc.CoreServicesServicer):
    """The four call types. Counters are public so tests and operators can observe behaviour.

    Always part of a VisionServer (see ``server.app.Service``); it has nothing to load or free.
    """

    name = SERVICE_NAME

    def __init__(self, settings: Settings, instance_id: str | None = None) -> None:
        self._settings = settings
        self.instance_id = instance_id or str(uuid.uuid4())
        self.hub = ChatHub(
            settings.chat_buffer_size, post_wait_s=settings.fairness.chat_post_wait_s
        )
        self.numbers_produced = 0
        """StreamNumbers values produced since start-up (shows that cancelled streams stop)."""
        self.active_streams = 0
        """StreamNumbers calls currently producing."""
        self._draining = asyncio.Event()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        core_pb2_grpc.add_CoreServicesServicer_to_server(self, server)

    async def start(self) -> None:
        """Nothing to load."""

    def drain(self) -> None:
        """End every StreamNumbers and Chat stream at once with UNAVAILABLE "draining"
        (``server.drain.Drains``); UploadNumbers runs until its client half-closes."""
        self._draining.set()
        self.hub.end_all(DrainingError)

    async def stop(self) -> None:
        """Nothing to release: open streams ended when the drain began."""

    @map_errors
    async def Ping(self, request: core_pb2.PingRequest, context: Context) -> core_pb2.PingReply:
        return core_pb2.PingReply(
            message=request.message,
            server_time=_timestamp(datetime.now(UTC)),
            server_version=__version__,
            instance_id=self.instance_id,
        )

    @map_errors
    async def StreamNumbers(
        self, request: core_pb2.StreamNumbersRequest, context: Context
    ) -> AsyncIterator[core_pb2.NumberReply]:
        limit = self._settings.max_stream_count
        if request.count > limit:
            raise InvalidInputError(
                f"count {request.count} exceeds the server limit of {limit} (max_stream_count)",
                field="count",
            )
        step = request.step or 1
        interval_s = request.interval_ms / 1000
        self.active_streams += 1
        try:
            # When the client cancels or its deadline passes, grpc cancels this task: the
            # CancelledError surfaces at the next await (sleep or write), so production stops.
            draining = self._draining
            for index in range(request.count):
                if draining.is_set() or (
                    index and interval_s and await drain_started(draining, interval_s)
                ):
                    raise DrainingError()
                value = request.start + index * step
                if not INT64_MIN <= value <= INT64_MAX:
                    raise OutOfRangeError(
                        f"value at index {index} ({request.start} + {index} * {step}) "
                        "does not fit int64"
                    )
                self.numbers_produced += 1
                yield core_pb2.NumberReply(index=index, value=value)
        finally:
            self.active_streams -= 1

    @map_errors
    async def UploadNumbers(
        self, request_iterator: AsyncIterator[core_pb2.NumberRequest], context: Context
    ) -> core_pb2.UploadSummary:
        count = total = 0
        low = high = 0
        async for request in request_iterator:
            value = request.value
            if count == 0:
                low = high = value
            else:
                low, high = min(low, value), max(high, value)
            count += 1
            total += value  # Python ints do not overflow: the range check below is exact
        if not INT64_MIN <= total <= INT64_MAX:
            raise OutOfRangeError(
                f"the sum of the {count} uploaded numbers ({total}) overflows int64; "
                "upload fewer or smaller numbers"
            )
        return core_pb2.UploadSummary(
            count=count, sum=total, min=low, max=high, mean=(total / count) if count else 0.0
        )

    @map_errors
    async def Chat(
        self, request_iterator: AsyncIterator[core_pb2.ChatMessage], context: Context
    ) -> AsyncIterator[core_pb2.ChatMessage]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None:
            return  # the client closed without joining
        participant = self.hub.join(first.room, first.sender)
        reader: asyncio.Task[None] | None = None
        try:
            await participant.send(first.text)
            reader = asyncio.create_task(self._read_chat(requests, participant))
            while (event := await participant.receive()) is not None:
                yield _chat_message(event)
            await reader  # the client half-closed: re-raise what ended its reading, if anything
        finally:
            if reader is not None:
                if not reader.done():
                    reader.cancel()
                elif not reader.cancelled():
                    reader.exception()  # mark retrieved: the call already ended with a status
            self.hub.leave(participant)

    async def _read_chat(
        self, requests: AsyncIterator[core_pb2.ChatMessage], participant: Participant
    ) -> None:
        """Post each incoming message; closing the inbox when the client stops sending."""
        try:
            async for message in requests:
                if message.room and message.room != participant.room:
                    raise InvalidInputError(
                        f"this stream joined room {shorten(participant.room)}; open a new stream "
                        f"to chat in {shorten(message.room)}",
                        field="room",
                    )
                await participant.send(message.text)
        finally:
            participant.close()
