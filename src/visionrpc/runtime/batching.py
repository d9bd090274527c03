"""Opportunistic batching: concurrent requests for one model share one ONNX Runtime call.

A request is *admitted* first (counted against ``max_queue_size`` before any decode work is spent,
so overload is shed early with ResourceLimitError), then *submitted* with its prepared input. A
dispatcher task takes everything queued, up to ``max_batch_size``. It waits for stragglers only
while other admitted requests are still being prepared, and never longer than
``max_queue_delay_us`` after the oldest queued request; a lone request never waits. Up to
``instances`` batches run at once (Triton's instance count), each in an executor (one per instance
when given a list, so an instance always runs on the same thread) so the event loop never blocks.
When every instance is busy the queue grows and the next batch is larger. The queue is ordered by
admission. A failing batch fails only its own requests, and a caller that gives up (cancellation)
affects nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from visionrpc.errors import ResourceLimitError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Batched(Generic[R]):
    """One request's result plus how it fared in the queue."""

    value: R
    queue_ms: float  # from submit until its batch started
    run_ms: float  # duration of the batch call
    batch_size: int


@dataclass
class _Entry(Generic[T, R]):
    place: int
    item: T
    future: asyncio.Future[Batched[R]]
    enqueued_at: float

    def __lt__(self, other: _Entry[T, R]) -> bool:
        return self.place < other.place


class Admission(Generic[T, R]):
    """A reserved queue slot: submit exactly once, or release (done by ``with`` on exit)."""

    def __init__(self, batcher: DynamicBatcher[T, R], place: int) -> None:
        self._batcher = batcher
        self._place = place  # order of admission: the request's place in line
        self._open = True

    async def submit(self, item: T) -> Batched[R]:
        if not self._open:
            raise RuntimeError("this admission was already used or released")
        self._open = False
        return await self._batcher._enqueue(item, self._place)

    def release(self) -> None:
        if self._open:
            self._open = False
            self._batcher._release()

    def __enter__(self) -> Admission[T, R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class DynamicBatcher(Generic[T, R]):
    """Groups items into calls of ``run_batch(items) -> results`` (same length, same order).

    Bound to the event loop it is first used on.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        max_queue_size: int = 256,
        instances: int = 1,
        executor: Executor | Sequence[Executor] | None = None,
        name: str = "",
    ) -> None:
        if min(max_batch_size, max_queue_size, instances) < 1 or max_queue_delay_us < 0:
            raise ValueError(
                "max_batch_size, max_queue_size and instances must be >= 1, the delay >= 0"
            )
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        self.instances = instances
        self.name = name
        if isinstance(executor, Sequence):
            if len(executor) != instances:
                raise ValueError(f"{len(executor)} executors given for {instances} instances")
            self._executors: list[Executor | None] = list(executor)
        else:
            self._executors = [executor] * instances
        # Ordered by admission, not submission: a large image that took longer to decode keeps
        # its place in line instead of queueing behind requests that arrived after it.
        self._queue: list[_Entry[T, R]] = []  # a heap
        self._places = itertools.count()
        self._admitted = 0  # admitted, not yet submitted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._idle = list(range(instances))  # a heap: the lowest idle instance is used first
        self._in_hand = 0  # requests the dispatcher holds while it waits for stragglers
        self._freed: asyncio.Event | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def depth(self) -> int:
        """Admitted plus queued requests (a batch waiting for stragglers included): what
        ``max_queue_size`` bounds."""
        return self._admitted + len(self._queue) + self._in_hand

    @property
    def queued(self) -> int:
        """Requests submitted and waiting to run."""
        return len(self._queue) + self._in_hand

    def claim_idle_instance(self) -> int | None:
        """Take an idle instance for work done outside a batch (a lone request run in one hop).

        Returns the instance's number when one was idle and no submitted request is waiting for
        it (else None); the caller runs on ``executor_of(number)`` and then calls
        ``release_instance(number)``.
        """
        if self._closed or not self._idle or self.queued:
            return None
        return heapq.heappop(self._idle)

    @property
    def busy(self) -> int:
        """Instances running a batch or claimed."""
        return self.instances - len(self._idle)

    def executor_of(self, instance: int) -> Executor | None:
        return self._executors[instance]

    def release_instance(self, instance: int) -> None:
        heapq.heappush(self._idle, instance)
        if self._freed is not None:
            self._freed.set()

    def admit(self) -> Admission[T, R]:
        """Reserve a slot now; ResourceLimitError when the queue is full."""
        if self._closed:
            raise ResourceLimitError(
                f"model {self.name!r} is shutting down; retry on another server"
            )
        if self.depth >= self.max_queue_size:
            raise ResourceLimitError(
                f"model {self.name!r} has {self.depth} requests queued (max_queue_size="
                f"{self.max_queue_size}); retry later or send fewer concurrent requests"
            )
        self._admitted += 1
        return Admission(self, next(self._places))

    async def submit(self, item: T) -> Batched[R]:
        """Admit and submit in one step."""
        return await self.admit().submit(item)

    async def aclose(self) -> None:
        """Stop the dispatcher and running batches; requests still queued fail with
        ResourceLimitError."""
        self._closed = True
        tasks = [*self._running, *([self._worker] if self._worker is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._worker = None
        self._fail_queued(ResourceLimitError(f"model {self.name!r} is shutting down"))

    # -- internals -------------------------------------------------------------------------

    def _bind(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._freed = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError("DynamicBatcher used from a second event loop")
        assert self._wakeup is not None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._dispatch(), name=f"batcher-{self.name}")
        return self._wakeup

    def _release(self) -> None:
        self._admitted -= 1
        if self._wakeup is not None:
            self._wakeup.set()  # a waiting batch need not wait for this one any more

    async def _enqueue(self, item: T, place: int) -> Batched[R]:
        self._admitted -= 1
        try:
            wakeup = self._bind()
        except BaseException:
            if self._wakeup is not None:
                self._wakeup.set()
            raise
        if self._closed:
            raise ResourceLimitError(
                f"model {self.name!r} is shutting down; retry on another server"
            )
        assert self._loop is not None
        entry: _Entry[T, R] = _Entry(place, item, self._loop.create_future(), time.perf_counter())
        heapq.heappush(self._queue, entry)
        wakeup.set()
        return await entry.future  # cancelling the caller cancels only this future

    def _take(self, limit: int) -> list[_Entry[T, R]]:
        taken: list[_Entry[T, R]] = []
        while self._queue and len(taken) < limit:
            entry = heapq.heappop(self._queue)
            if not entry.future.done():  # skip callers that already gave up
                taken.append(entry)
        return taken

    async def _fill(self, batch: list[_Entry[T, R]], wakeup: asyncio.Event) -> list[_Entry[T, R]]:
        """Top a batch up with stragglers still being prepared, for at most the queue delay."""
        if self.max_queue_delay_s <= 0:
            return batch
        deadline = batch[0].enqueued_at + self.max_queue_delay_s
        while len(batch) < self.max_batch_size:
            if self._queue:
                batch += self._take(self.max_batch_size - len(batch))
                continue
            remaining = deadline - time.perf_counter()
            if self._admitted <= 0 or remaining <= 0:
                break
            wakeup.clear()
            self._in_hand = len(batch)
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                break
            finally:
                self._in_hand = 0
        return batch

    async def _dispatch(self) -> None:
        """Wait for work and for an idle instance, then take the longest-waiting requests.

        The batch is taken only once an instance is free, so requests that arrived earlier but
        were submitted later (slower to decode) still go first.
        """
        assert self._wakeup is not None and self._freed is not None and self._loop is not None
        wakeup, freed, loop = self._wakeup, self._freed, self._loop
        while True:
            while not self._queue:
                wakeup.clear()
                await wakeup.wait()
            while not self._idle:  # all instances busy: the queue grows meanwhile
                freed.clear()
                await freed.wait()
            batch = self._take(self.max_batch_size)
            if not batch:
                continue
            instance = heapq.heappop(self._idle)
            try:
                batch = await self._fill(batch, wakeup)
            except asyncio.CancelledError:
                self._fail(batch, ResourceLimitError(f"model {self.name!r} is shutting down"))
                self.release_instance(instance)
                raise
            batch = [e for e in batch if not e.future.done()]
            if not batch:
                self.release_instance(instance)
                continue
            task = loop.create_task(self._run(batch, instance), name=f"batch-{self.name}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Entry[T, R]], instance: int) -> None:
        """One batch on one instance; its outcome goes to its own callers only."""
        assert self._loop is not None
        started = time.perf_counter()
        try:
            results = await self._loop.run_in_executor(
                self._executors[instance], self._run_batch, [e.item for e in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(batch)} items"
                )
        except asyncio.CancelledError:
            self._fail(batch, ResourceLimitError(f"model {self.name!r} is shutting down"))
            raise
        except Exception as exc:
            log.debug("batch of %d for %s failed: %s", len(batch), self.name, exc)
            self._fail(batch, exc)
            return
        finally:
            self.release_instance(instance)
        run_ms = (time.perf_counter() - started) * 1000
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                queue_ms = (started - entry.enqueued_at) * 1000
                entry.future.set_result(Batched(result, queue_ms, run_ms, len(batch)))

    @staticmethod
    def _fail(batch: list[_Entry[T, R]], exc: Exception) -> None:
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(exc)

    def _fail_queued(self, exc: Exception) -> None:
        while self._queue:
            entry = self._queue.pop()
            if not entry.future.done():
                entry.future.set_exception(exc)
