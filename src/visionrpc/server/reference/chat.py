"""Chat rooms, free of gRPC so the ordering and back-pressure rules can be reasoned about alone.

Rules:
- ``post`` assigns the room's next ``seq`` and hands the message to every participant in one
  synchronous step, so all participants see one order per room (their own messages included).
- Each participant has a bounded buffer. A participant whose buffer is full when a message arrives
  is dropped (removed from the room; its next ``receive`` raises ResourceLimitError) instead of
  making the poster – and so everyone else – wait for it.
- A room exists while it has participants; the last ``leave`` frees it (and its seq counter).

The hub is bound to one asyncio event loop and is not thread-safe; the grpc.aio server runs all
handlers on one loop, which is what makes ``post`` atomic.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from visionrpc.errors import InvalidInputError, ResourceLimitError, shorten


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ChatEvent:
    """A message as posted to a room: what every participant receives."""

    room: str
    sender: str
    text: str
    seq: int
    sent_at: datetime


class Participant:
    """One stream's membership in a room: a bounded inbox plus drop/close state."""

    def __init__(self, hub: ChatHub, participant_id: int, room: str, sender: str, capacity: int):
        self.id = participant_id
        self.room = room
        self.sender = sender
        self._hub = hub
        self._capacity = capacity
        self._inbox: deque[ChatEvent] = deque()
        self._wakeup = asyncio.Event()
        self._dropped: str | None = None
        self._ended: Callable[[], Exception] | None = None
        self._closed = False

    @property
    def dropped(self) -> bool:
        return self._dropped is not None

    def post(self, text: str) -> ChatEvent:
        """Post to this participant's room."""
        return self._hub.post(self, text)

    async def receive(self) -> ChatEvent | None:
        """Next message; None once closed and drained; ResourceLimitError once dropped; the
        hub's error at once after ``ChatHub.end_all``."""
        while True:
            if self._ended is not None:
                raise self._ended()
            if self._dropped is not None:
                raise ResourceLimitError(self._dropped)
            if self._inbox:
                return self._inbox.popleft()
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        """No more posts from this side: ``receive`` ends after the buffered messages."""
        self._closed = True
        self._wakeup.set()

    def _deliver(self, event: ChatEvent) -> bool:
        """Queue ``event``; False (and the participant marked dropped) when the buffer is full."""
        if self._dropped is not None:
            return False
        if len(self._inbox) >= self._capacity:
            self._dropped = (
                f"chat participant {self.sender!r} in room {self.room!r} fell more than "
                f"{self._capacity} messages behind (chat_buffer_size) and was dropped; "
                "read faster or rejoin"
            )
            self._inbox.clear()
            self._wakeup.set()
            return False
        self._inbox.append(event)
        self._wakeup.set()
        return True


@dataclass
class _Room:
    name: str
    members: dict[int, Participant] = field(default_factory=dict)
    last_seq: int = 0


class ChatHub:
    """All rooms of one server process."""

    def __init__(self, buffer_size: int, clock: Callable[[], datetime] = _utcnow) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self._buffer_size = buffer_size
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        self._ids = itertools.count(1)
        self._ended: Callable[[], Exception] | None = None
        self.dropped_total = 0
        """Participants dropped for overflowing their buffer since start-up (for metrics/tests)."""

    def join(self, room: str, sender: str) -> Participant:
        """Add a participant to ``room`` (created on first join). It sees messages from now on."""
        if self._ended is not None:
            raise self._ended()
        if not room:
            raise InvalidInputError("the first chat message must name a room", field="room")
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(room)
        participant = Participant(self, next(self._ids), room, sender, self._buffer_size)
        state.members[participant.id] = participant
        return participant

    def post(self, participant: Participant, text: str) -> ChatEvent:
        """Stamp the message and hand it to every member of the poster's room, poster included."""
        if participant._ended is not None:
            raise participant._ended()
        if participant._dropped is not None:
            raise ResourceLimitError(participant._dropped)
        state = self._rooms.get(participant.room)
        if state is None or participant.id not in state.members:
            raise InvalidInputError(
                f"{shorten(participant.sender)} is not in room {shorten(participant.room)}"
            )
        state.last_seq += 1
        event = ChatEvent(participant.room, participant.sender, text, state.last_seq, self._clock())
        for member in list(state.members.values()):
            if not member._deliver(event):
                self.dropped_total += 1
                self._remove(state, member)
        return event

    def end_all(self, error: Callable[[], Exception]) -> None:
        """End every participant's stream at once with ``error()`` (the server drains); rooms are
        freed and later joins and posts raise it too."""
        self._ended = error
        for state in list(self._rooms.values()):
            for member in state.members.values():
                member._ended = error
                member._wakeup.set()
        self._rooms.clear()

    def leave(self, participant: Participant) -> None:
        """Remove the participant (idempotent); an empty room is freed."""
        participant.close()
        state = self._rooms.get(participant.room)
        if state is not None:
            self._remove(state, participant)

    def _remove(self, state: _Room, participant: Participant) -> None:
        state.members.pop(participant.id, None)
        if not state.members and self._rooms.get(state.name) is state:
            del self._rooms[state.name]

    # -- introspection (tests check that rooms are freed when their last member leaves) --

    def rooms(self) -> list[str]:
        """Names of the rooms that currently have participants."""
        return sorted(self._rooms)

    def members(self, room: str) -> list[str]:
        """Senders currently in ``room`` (empty when the room does not exist)."""
        state = self._rooms.get(room)
        return [p.sender for p in state.members.values()] if state else []
