"""Opportunistic batching: concurrent requests for one model share one ONNX Runtime call.

A request is *admitted* first (counted against ``max_queue_size`` before any decode work is spent,
so overload is shed early with ResourceLimitError), then *submitted* with its prepared input. One
worker task per batcher takes everything queued, up to ``max_batch_size``. It waits for stragglers
only while other admitted requests are still being prepared, and never longer than
``max_queue_delay_us`` after the oldest queued request; a lone request never waits. The batch runs
in an executor so the event loop never blocks. A failing batch fails only its own requests, and a
caller that gives up (cancellation) affects nobody else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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
    item: T
    future: asyncio.Future[Batched[R]]
    enqueued_at: float


class Admission(Generic[T, R]):
    """A reserved queue slot: submit exactly once, or release (done by ``with`` on exit)."""

    def __init__(self, batcher: DynamicBatcher[T, R]) -> None:
        self._batcher = batcher
        self._open = True

    async def submit(self, item: T) -> Batched[R]:
        if not self._open:
            raise RuntimeError("this admission was already used or released")
        self._open = False
        return await self._batcher._enqueue(item)

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
        executor: Executor | None = None,
        name: str = "",
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_queue_delay_us < 0:
            raise ValueError("max_batch_size and max_queue_size must be >= 1, the delay >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        self.name = name
        self._executor = executor
        self._queue: collections.deque[_Entry[T, R]] = collections.deque()
        self._admitted = 0  # admitted, not yet submitted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def depth(self) -> int:
        """Admitted plus queued requests: what ``max_queue_size`` bounds."""
        return self._admitted + len(self._queue)

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
        return Admission(self)

    async def submit(self, item: T) -> Batched[R]:
        """Admit and submit in one step."""
        return await self.admit().submit(item)

    async def aclose(self) -> None:
        """Stop the worker; requests still queued fail with ResourceLimitError."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._fail_queued(ResourceLimitError(f"model {self.name!r} is shutting down"))

    # -- internals -------------------------------------------------------------------------

    def _bind(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._wakeup = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError("DynamicBatcher used from a second event loop")
        assert self._wakeup is not None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name=f"batcher-{self.name}")
        return self._wakeup

    def _release(self) -> None:
        self._admitted -= 1
        if self._wakeup is not None:
            self._wakeup.set()  # a waiting batch need not wait for this one any more

    async def _enqueue(self, item: T) -> Batched[R]:
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
        entry: _Entry[T, R] = _Entry(item, self._loop.create_future(), time.perf_counter())
        self._queue.append(entry)
        wakeup.set()
        return await entry.future  # cancelling the caller cancels only this future

    def _take(self, limit: int) -> list[_Entry[T, R]]:
        taken: list[_Entry[T, R]] = []
        while self._queue and len(taken) < limit:
            entry = self._queue.popleft()
            if not entry.future.done():  # skip callers that already gave up
                taken.append(entry)
        return taken

    async def _collect(self, wakeup: asyncio.Event) -> list[_Entry[T, R]]:
        while True:
            while not self._queue:
                wakeup.clear()
                await wakeup.wait()
            batch = self._take(self.max_batch_size)
            if batch:
                break
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
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        wakeup, loop = self._wakeup, self._loop
        while True:
            batch = await self._collect(wakeup)
            batch = [e for e in batch if not e.future.done()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [e.item for e in batch]
                )
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"batch function returned {len(results)} results for {len(batch)} items"
                    )
            except asyncio.CancelledError:
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(
                            ResourceLimitError(f"model {self.name!r} is shutting down")
                        )
                raise
            except Exception as exc:
                log.debug("batch of %d for %s failed: %s", len(batch), self.name, exc)
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                continue
            run_ms = (time.perf_counter() - started) * 1000
            for entry, result in zip(batch, results, strict=True):
                if not entry.future.done():
                    queue_ms = (started - entry.enqueued_at) * 1000
                    entry.future.set_result(Batched(result, queue_ms, run_ms, len(batch)))

    def _fail_queued(self, exc: Exception) -> None:
        while self._queue:
            entry = self._queue.popleft()
            if not entry.future.done():
                entry.future.set_exception(exc)
