"""Chat rooms, free of gRPC so the ordering and back-pressure rules can be reasoned about alone.

Rules:
- ``post`` assigns the room's next ``seq`` and hands the message to every participant in one
  synchronous step, so all participants see one order per room (their own messages included).
- Each participant has a bounded buffer (``chat_buffer_size``). A Chat stream posts with ``send``,
  which applies back-pressure: while some member's buffer is full, the poster waits until that
  member takes a message. So a burst from any number of posters never drops a reader that keeps
  reading: the room moves at the pace of its readers, and a waiting poster stops reading its own
  stream, so HTTP/2 flow control slows the posting client down in turn. A member whose buffer
  has been full for ``post_wait_s`` (``fairness.chat_post_wait_s``) without it taking a message
  has stopped reading: it is dropped (removed from the room; its next ``receive`` raises
  ResourceLimitError, which the client sees as RESOURCE_EXHAUSTED with the reason) and the posts
  go on. So one stalled reader holds a room up for at most that long. ``post`` delivers at once
  and drops any full member without waiting.
- A room exists while it has participants; the last ``leave`` frees it (and its seq counter).

The hub is bound to one asyncio event loop and is not thread-safe; the grpc.aio server runs all
handlers on one loop, which is what makes ``post`` atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from visionrpc.errors import InvalidInputError, ResourceLimitError, shorten

CHAT_LIMIT = "fairness.chat_post_wait_s"
"""The limit a dropped chat participant hit (its buffer stayed full for that long)."""


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

    def __init__(
        self, hub: ChatHub, participant_id: int, room: str, sender: str, capacity: int
    ) -> None:
        self.id = participant_id
        self.room = room
        self.sender = sender
        self._hub = hub
        self._capacity = capacity
        self._inbox: deque[ChatEvent] = deque()
        self._wakeup = asyncio.Event()
        self._dropped: str | None = None
        self._ended: Callable[[], Exception] | None = None
        self._full_since: float | None = None  # monotonic time the buffer last became full
        self._closed = False

    @property
    def dropped(self) -> bool:
        return self._dropped is not None

    @property
    def full(self) -> bool:
        return self._full_since is not None

    def post(self, text: str) -> ChatEvent:
        """Post to this participant's room now, dropping members whose buffer is full."""
        return self._hub.post(self, text)

    async def send(self, text: str) -> ChatEvent:
        """Post to this participant's room once every member has room (bounded wait)."""
        return await self._hub.send(self, text)

    async def receive(self) -> ChatEvent | None:
        """Next message; None once closed and drained; ResourceLimitError once dropped; the
        hub's error at once after ``ChatHub.end_all``."""
        while True:
            if self._ended is not None:
                raise self._ended()
            if self._dropped is not None:
                raise ResourceLimitError(self._dropped, limit=CHAT_LIMIT)
            if self._inbox:
                if self._full_since is not None:
                    self._full_since = None
                    self._hub._made_room(self.room)  # a poster may be waiting for this
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
        if self._full_since is not None:
            self._drop()
            return False
        self._inbox.append(event)
        if len(self._inbox) >= self._capacity:
            self._full_since = time.monotonic()
        self._wakeup.set()
        return True

    def _drop(self) -> None:
        self._dropped = (
            f"chat participant {self.sender!r} in room {self.room!r} was dropped: it had "
            f"{self._capacity} messages waiting (chat_buffer_size) and took none of them for "
            f"{self._hub.post_wait_s:g}s (fairness.chat_post_wait_s) while others posted; read "
            "the stream continuously (or raise those settings) and rejoin"
        )
        self._inbox.clear()
        self._full_since = None
        self._wakeup.set()


@dataclass
class _Room:
    name: str
    members: dict[int, Participant] = field(default_factory=dict)
    last_seq: int = 0
    room_made: asyncio.Event = field(default_factory=asyncio.Event)  # a full inbox was read


class ChatHub:
    """All rooms of one server process."""

    def __init__(
        self,
        buffer_size: int,
        clock: Callable[[], datetime] = _utcnow,
        *,
        post_wait_s: float = 2.0,
    ) -> None:
        if buffer_size < 1 or post_wait_s < 0:
            raise ValueError("buffer_size must be at least 1, post_wait_s at least 0")
        self._buffer_size = buffer_size
        self.post_wait_s = post_wait_s
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
            raise ResourceLimitError(participant._dropped, limit=CHAT_LIMIT)
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
            state.room_made.set()  # posters waiting for room see the end at once
        self._rooms.clear()

    async def send(self, participant: Participant, text: str) -> ChatEvent:
        """``post`` once no member's buffer is full: wait while full members keep taking
        messages; drop those that took none for ``post_wait_s`` since their buffer filled."""
        while True:
            state = self._rooms.get(participant.room)
            if state is None or participant._dropped is not None:
                break  # post() raises the reason
            full = [m for m in state.members.values() if m._full_since is not None]
            if not full:
                break
            now = time.monotonic()
            stalled = [m for m in full if now - (m._full_since or now) >= self.post_wait_s]
            for member in stalled:
                member._drop()
                self.dropped_total += 1
                self._remove(state, member)
            if stalled:
                continue
            oldest = min(m._full_since or now for m in full)
            state.room_made.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.room_made.wait(), oldest + self.post_wait_s - now)
        return self.post(participant, text)

    def _made_room(self, room: str) -> None:
        state = self._rooms.get(room)
        if state is not None:
            state.room_made.set()

    def leave(self, participant: Participant) -> None:
        """Remove the participant (idempotent); an empty room is freed."""
        participant.close()
        state = self._rooms.get(participant.room)
        if state is not None:
            self._remove(state, participant)

    def _remove(self, state: _Room, participant: Participant) -> None:
        state.members.pop(participant.id, None)
        state.room_made.set()  # waiting posters need not wait for a member that left
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
