"""Opportunistic batching: concurrent requests for one model share one ONNX Runtime call.

``schedule(alone, prepare)`` decides how a request runs. When nobody is ahead of it (nothing
admitted, queued or held for stragglers) and an instance is idle, no batch could form, so it runs
whole on that instance's thread in one hop (``alone``), with no hand-off to a decode pool first.
Otherwise it is *admitted* (counted against ``max_queue_size`` before any decode work is spent, so
overload is shed early with ResourceLimitError), prepared (``prepare``) and *submitted*. A
request running alone is not admitted: nothing waits for it to be submitted.

A dispatcher task takes everything queued, up to ``max_batch_size``. It waits for stragglers only
while other admitted requests are still being prepared, and never longer than
``max_queue_delay_us`` after the oldest queued request; a lone request never waits. Up to
``instances`` batches or lone requests run at once (Triton's instance count), each in an executor
(one per instance when given a list or none, so an instance always runs on the same thread) so
the event loop never blocks. When every instance is busy the queue grows and the next batch is
larger. A failing batch fails only its own requests, and a caller that gives up (cancellation)
affects nobody else. Once closed, a batcher answers NotReadyError: the server is going away and
another one may serve the request.

Fairness: each request belongs to a *client* (a plain string the caller chooses, e.g. the server's
connection or identity; ``""`` for all by default). Each client has its own line, ordered by
admission, and batches are filled round-robin across the clients' lines, one request per turn, so
a client with one request waiting is served next even behind another client's hundreds. A client
may hold at most ``max_queue_per_client`` of the ``max_queue_size`` places: its excess is shed
while other clients are still admitted. With a single client this is exactly the queue ordered by
admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from visionrpc.errors import NotReadyError, ResourceLimitError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RETRY_AFTER_S = 0.1
"""The wait a shed request is told to take before retrying (RetryInfo): a full queue drains in
batches, so a short pause usually finds room; clients add their own backoff and jitter."""


def shutting_down(model: str) -> NotReadyError:
    """What a request gets from a closed batcher or pipeline (UNAVAILABLE: retry elsewhere)."""
    return NotReadyError(f"model {model!r} is shutting down; retry on another server")


@dataclass(frozen=True)
class Batched(Generic[R]):
    """One request's result plus how it fared in the queue."""

    value: R
    queue_ms: float  # from schedule/submit until its run started
    batch_size: int  # 1 for a request that ran alone


class Occupancy:
    """Instances running (batches and lone requests) across the batchers that share it.

    One per pipeline: a lone request may use every core only when no instance of any model runs.
    """

    def __init__(self) -> None:
        self.running = 0


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

    def __init__(self, batcher: DynamicBatcher[T, R], place: int, client: str) -> None:
        self._batcher = batcher
        self._place = place  # order of admission: the request's place in its client's line
        self._client = client
        self._open = True

    async def submit(self, item: T) -> Batched[R]:
        if not self._open:
            raise RuntimeError("this admission was already used or released")
        self._open = False
        return await self._batcher._enqueue(item, self._place, self._client)

    def release(self) -> None:
        if self._open:
            self._open = False
            self._batcher._withdraw(self._client)

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
        max_queue_per_client: int | None = None,
        instances: int = 1,
        executor: Executor | Sequence[Executor] | None = None,
        name: str = "",
        occupancy: Occupancy | None = None,
    ) -> None:
        if (
            min(max_batch_size, max_queue_size, instances, max_queue_per_client or 1) < 1
            or max_queue_delay_us < 0
        ):
            raise ValueError(
                "max_batch_size, max_queue_size, max_queue_per_client and instances must be "
                ">= 1, the delay >= 0"
            )
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        self.max_queue_per_client = min(max_queue_per_client or max_queue_size, max_queue_size)
        self.instances = instances
        self.name = name
        self._own_executors: list[ThreadPoolExecutor] = []
        if executor is None:  # a thread per instance, shut down by aclose
            self._own_executors = [
                ThreadPoolExecutor(1, thread_name_prefix=f"batcher-{name}-{i}")
                for i in range(instances)
            ]
            executor = self._own_executors
        if isinstance(executor, Sequence):
            if len(executor) != instances:
                raise ValueError(f"{len(executor)} executors given for {instances} instances")
            self._executors: list[Executor] = list(executor)
        else:
            self._executors = [executor] * instances
        self._occupancy = occupancy or Occupancy()
        # One line per client, each ordered by admission, not submission: a large image that took
        # longer to decode keeps its place instead of queueing behind requests that arrived after
        # it. ``_turns`` holds the clients with a non-empty line, in round-robin order.
        self._lines: dict[str, list[_Entry[T, R]]] = {}  # heaps
        self._turns: deque[str] = deque()
        self._queued = 0  # entries in the lines (callers that gave up included, until taken)
        self._held: dict[str, int] = {}  # per client: admitted or queued, not yet taken
        self._places = itertools.count()
        self._admitted = 0  # admitted, not yet submitted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._idle = list(range(instances))  # a heap: the lowest idle instance is used first
        self._in_hand = 0  # requests the dispatcher holds while it waits for stragglers
        self._freed: asyncio.Event | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._alone: set[asyncio.Future[Batched[R]]] = set()  # callers of lone requests
        self._closed = False
        self._close_error: NotReadyError | None = None  # what aclose's caller wants said

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def depth(self) -> int:
        """Admitted plus queued requests (a batch waiting for stragglers included): what
        ``max_queue_size`` bounds."""
        return self._admitted + self._queued + self._in_hand

    @property
    def busy(self) -> int:
        """Instances running a batch or a lone request now."""
        return self.instances - len(self._idle)

    @property
    def queued(self) -> int:
        """Requests submitted and waiting to run."""
        return self._queued + self._in_hand

    def held_by(self, client: str) -> int:
        """Requests of ``client`` admitted or queued (what ``max_queue_per_client`` bounds)."""
        return self._held.get(client, 0)

    async def schedule(
        self,
        alone: Callable[[bool], R],
        prepare: Callable[[], Awaitable[T]],
        client: str = "",
    ) -> Batched[R]:
        """Run one request: whole on an idle instance when nobody is ahead of it, else batched.

        ``alone(all_cores)`` runs the whole request on the instance's thread; ``all_cores`` is
        True when no instance of any batcher sharing this one's Occupancy is running. Otherwise
        the request is admitted (or shed), ``prepare()`` makes its item and the item is submitted
        to ``client``'s line.
        """
        if self._closed:
            raise self._shutting_down()
        if not self.depth and self._idle:
            return await self._run_alone(alone)
        with self.admit(client) as slot:  # sheds load before any preparation is spent
            item = await prepare()
            return await slot.submit(item)

    def admit(self, client: str = "") -> Admission[T, R]:
        """Reserve a slot in ``client``'s line now; ResourceLimitError when the queue is full or
        the client holds its share of it."""
        if self._closed:
            raise self._shutting_down()
        if self.depth >= self.max_queue_size:
            raise ResourceLimitError(
                f"model {self.name!r} has {self.depth} requests queued (max_queue_size="
                f"{self.max_queue_size}); retry later or send fewer concurrent requests",
                retry_after_s=RETRY_AFTER_S,
                limit="batching.max_queue_size",
            )
        held = self._held.get(client, 0)
        if held >= self.max_queue_per_client:
            raise ResourceLimitError(
                f"this client has {held} requests queued for model {self.name!r} "
                f"(max_queue_per_client={self.max_queue_per_client}); other clients get the "
                "rest of the queue: wait for answers before sending more",
                retry_after_s=RETRY_AFTER_S,
                limit="fairness.max_queue_per_client",
            )
        self._held[client] = held + 1
        self._admitted += 1
        return Admission(self, next(self._places), client)

    async def submit(self, item: T, client: str = "") -> Batched[R]:
        """Admit and submit in one step."""
        return await self.admit(client).submit(item)

    async def aclose(self, error: NotReadyError | None = None) -> None:
        """Stop the dispatcher and running batches; requests not yet answered (queued, in a
        batch, running alone, or admitted later) fail with ``error``, by default a
        NotReadyError saying the server is going away."""
        self._closed = True
        self._close_error = error
        tasks = [*self._running, *([self._worker] if self._worker is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._worker = None
        error = self._shutting_down()
        for future in list(self._alone):
            if not future.done():
                future.set_exception(error)
        self._fail_queued(error)
        for pool in self._own_executors:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- internals -------------------------------------------------------------------------

    def _shutting_down(self) -> NotReadyError:
        return self._close_error or shutting_down(self.name)

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._freed = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError("DynamicBatcher used from a second event loop")
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._dispatch(), name=f"batcher-{self.name}")
        return loop

    def _claim(self) -> int:
        """Take the lowest idle instance (the caller checked there is one)."""
        self._occupancy.running += 1
        return heapq.heappop(self._idle)

    def _free(self, instance: int) -> None:
        self._occupancy.running -= 1
        heapq.heappush(self._idle, instance)
        if self._freed is not None:
            self._freed.set()

    def _let_go(self, client: str) -> None:
        """One of ``client``'s requests left the queue (taken, withdrawn or failed)."""
        held = self._held[client] - 1
        if held:
            self._held[client] = held
        else:
            del self._held[client]

    def _withdraw(self, client: str) -> None:
        """An admitted request gave up before submitting."""
        self._admitted -= 1
        self._let_go(client)
        if self._wakeup is not None:
            self._wakeup.set()  # a waiting batch need not wait for this one any more

    async def _run_alone(self, alone: Callable[[bool], R]) -> Batched[R]:
        """One request on one instance's thread; the instance is freed when the thread is done,
        even if the caller gave up (cancellation) or ``aclose`` answered it first."""
        loop = self._bind()
        all_cores = self._occupancy.running == 0
        instance = self._claim()
        arrived = time.perf_counter()
        started = arrived

        def call() -> R:
            nonlocal started
            started = time.perf_counter()
            return alone(all_cores)

        answer: asyncio.Future[Batched[R]] = loop.create_future()

        def done(work: Future[R]) -> None:  # on the loop, once the thread is done
            self._free(instance)
            # cancelled: its executor was shut down before it started
            error = self._shutting_down() if work.cancelled() else work.exception()
            if answer.done():  # the caller gave up, or aclose answered it
                return
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(Batched(work.result(), (started - arrived) * 1000, 1))

        try:
            work = self._executors[instance].submit(call)
        except BaseException:
            self._free(instance)
            raise

        def finished(work: Future[R]) -> None:  # in the instance's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(done, work)  # one wake-up, as awaiting it would cost

        work.add_done_callback(finished)
        self._alone.add(answer)
        answer.add_done_callback(self._alone.discard)
        return await answer  # cancelling the caller cancels only this future

    async def _enqueue(self, item: T, place: int, client: str) -> Batched[R]:
        self._admitted -= 1
        try:
            loop = self._bind()
        except BaseException:
            self._let_go(client)
            if self._wakeup is not None:
                self._wakeup.set()
            raise
        assert self._wakeup is not None
        if self._closed:
            self._let_go(client)
            self._wakeup.set()
            raise self._shutting_down()
        entry: _Entry[T, R] = _Entry(place, item, loop.create_future(), time.perf_counter())
        line = self._lines.get(client)
        if line is None:
            line = self._lines[client] = []
            self._turns.append(client)
        heapq.heappush(line, entry)
        self._queued += 1
        self._wakeup.set()
        return await entry.future  # cancelling the caller cancels only this future

    def _take(self, limit: int) -> list[_Entry[T, R]]:
        """Up to ``limit`` requests, one per client's turn (round-robin), each client's in order
        of admission."""
        taken: list[_Entry[T, R]] = []
        turns, lines = self._turns, self._lines
        while turns and len(taken) < limit:
            client = turns.popleft()
            line = lines[client]
            entry = heapq.heappop(line)
            self._queued -= 1
            self._let_go(client)
            if line:
                turns.append(client)
            else:
                del lines[client]
            if not entry.future.done():  # skip callers that already gave up
                taken.append(entry)
        return taken

    async def _fill(self, batch: list[_Entry[T, R]], wakeup: asyncio.Event) -> list[_Entry[T, R]]:
        """Top a batch up with stragglers still being prepared, for at most the queue delay."""
        if self.max_queue_delay_s <= 0:
            return batch
        deadline = batch[0].enqueued_at + self.max_queue_delay_s
        while len(batch) < self.max_batch_size:
            if self._queued:
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
            while not self._queued:
                wakeup.clear()
                await wakeup.wait()
            while not self._idle:  # all instances busy: the queue grows meanwhile
                freed.clear()
                await freed.wait()
            batch = self._take(self.max_batch_size)
            if not batch:
                continue
            instance = self._claim()
            try:
                batch = await self._fill(batch, wakeup)
            except asyncio.CancelledError:
                self._fail(batch, self._shutting_down())
                self._free(instance)
                raise
            batch = [e for e in batch if not e.future.done()]
            if not batch:
                self._free(instance)
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
            self._fail(batch, self._shutting_down())
            raise
        except Exception as exc:
            log.debug("batch of %d for %s failed: %s", len(batch), self.name, exc)
            self._fail(batch, exc)
            return
        finally:
            self._free(instance)
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                queue_ms = (started - entry.enqueued_at) * 1000
                entry.future.set_result(Batched(result, queue_ms, len(batch)))

    @staticmethod
    def _fail(batch: list[_Entry[T, R]], exc: Exception) -> None:
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(exc)

    def _fail_queued(self, exc: Exception) -> None:
        lines = list(self._lines.items())
        self._lines.clear()
        self._turns.clear()
        self._queued = 0
        for client, line in lines:
            for entry in line:
                self._let_go(client)
                if not entry.future.done():
                    entry.future.set_exception(exc)
