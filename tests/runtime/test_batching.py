"""DynamicBatcher: grouping, lone requests, isolation of failures and cancellations, queue limits,
delays and shutting down."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from visionrpc.errors import NotReadyError, ResourceLimitError
from visionrpc.runtime.batching import DynamicBatcher, Occupancy


class Recorder:
    """A batch function that records batch sizes and can be held or made to fail."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(5)
        time.sleep(self.delay_s)
        self.batches.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError(f"bad item in {items}")
        return [i * 10 for i in items]


class Lone:
    """An ``alone`` function: records its ``all_cores`` flags and threads, can be held."""

    def __init__(self, value: int = -100, *, held: bool = False) -> None:
        self.value = value
        self.gate = threading.Event()
        if not held:
            self.gate.set()
        self.started = threading.Event()
        self.flags: list[bool] = []
        self.threads: list[str] = []

    def __call__(self, all_cores: bool) -> int:
        self.flags.append(all_cores)
        self.threads.append(threading.current_thread().name)
        self.started.set()
        self.gate.wait(10)
        return self.value


def prepared(item: int):
    """A ``prepare`` function whose item is ready at once."""

    async def prepare() -> int:
        return item

    return prepare


async def running_alone(batcher: DynamicBatcher[int, int], lone: Lone) -> asyncio.Future:
    """Schedule a request that runs alone (held by ``lone.gate``) and wait until it runs."""
    task = asyncio.ensure_future(batcher.schedule(lone, prepared(-1)))
    assert await asyncio.to_thread(lone.started.wait, 5), "the lone request did not start"
    return task


@pytest.fixture
def executor():
    with ThreadPoolExecutor(1) as pool:
        yield pool


async def test_each_result_reaches_its_caller_and_batches_form(executor) -> None:
    rec = Recorder()
    rec.gate.clear()  # hold the first batch so the others queue up behind it
    batcher = DynamicBatcher(rec, max_batch_size=4, executor=executor, name="m")
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 9)]
    await asyncio.sleep(0.01)
    rec.gate.set()
    results = await asyncio.gather(first, *rest)
    assert [r.value for r in results] == [i * 10 for i in range(9)]
    assert [len(b) for b in rec.batches] == [1, 4, 4]
    assert results[1].batch_size == 4 and results[1].queue_ms > 0
    await batcher.aclose()


async def test_failing_batch_fails_only_its_requests(executor) -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher = DynamicBatcher(rec, max_batch_size=2, executor=executor, name="m")
    blocker = asyncio.ensure_future(batcher.submit(100))
    await asyncio.sleep(0.05)
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in (-1, 2, 3, 4)]
    await asyncio.sleep(0.01)
    rec.gate.set()
    results = await asyncio.gather(blocker, *tasks, return_exceptions=True)
    assert rec.batches == [[100], [-1, 2], [3, 4]]
    assert isinstance(results[1], ValueError) and isinstance(results[2], ValueError)
    assert [r.value for r in results[3:]] == [30, 40]  # type: ignore[union-attr]
    assert (await batcher.submit(5)).value == 50  # the worker survived
    await batcher.aclose()


async def test_cancelling_one_caller_does_not_cancel_others(executor) -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher = DynamicBatcher(rec, max_batch_size=8, executor=executor, name="m")
    blocker = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)
    doomed = asyncio.ensure_future(batcher.submit(2))
    survivor = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0.01)
    doomed.cancel()
    rec.gate.set()
    assert (await survivor).value == 30
    assert (await blocker).value == 10
    assert doomed.cancelled()
    assert rec.batches == [[1], [3]]  # the cancelled request was not even run
    await batcher.aclose()


async def test_cancelling_while_running_keeps_batch_mates(executor) -> None:
    rec = Recorder(delay_s=0.1)
    batcher = DynamicBatcher(rec, max_batch_size=8, executor=executor, name="m")
    a = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.03)  # batch [1] is running
    b = asyncio.ensure_future(batcher.submit(2))
    c = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0.13)  # batch [2, 3] is running
    b.cancel()
    assert (await c).value == 30 and (await a).value == 10
    assert b.cancelled()
    await batcher.aclose()


async def test_full_queue_sheds_with_resource_limit(executor) -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher = DynamicBatcher(rec, max_batch_size=1, max_queue_size=2, executor=executor, name="m")
    running = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)  # taken into a batch: no longer counted
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceLimitError, match="max_queue_size=2"):
        await batcher.submit(3)
    # admitted-but-not-submitted requests count too
    rec.gate.set()
    await asyncio.gather(running, *queued)
    slot = batcher.admit()
    batcher.admit().release()
    with batcher.admit(), pytest.raises(ResourceLimitError):
        batcher.admit()
    slot.release()
    assert batcher.depth == 0
    await batcher.aclose()


async def test_lone_request_never_waits_for_the_delay(executor) -> None:
    batcher = DynamicBatcher(
        Recorder(), max_batch_size=8, max_queue_delay_us=2_000_000, executor=executor, name="m"
    )
    t0 = time.perf_counter()
    assert (await batcher.submit(1)).value == 10
    assert time.perf_counter() - t0 < 0.5
    await batcher.aclose()


async def test_delay_waits_for_admitted_requests_but_is_bounded(executor) -> None:
    rec = Recorder()
    batcher = DynamicBatcher(
        rec, max_batch_size=8, max_queue_delay_us=300_000, executor=executor, name="m"
    )

    async def late(item: int, after_s: float):
        with batcher.admit() as slot:  # admitted now, "decoding" for a while
            await asyncio.sleep(after_s)
            return await slot.submit(item)

    t0 = time.perf_counter()
    results = await asyncio.gather(batcher.submit(1), late(2, 0.05), late(3, 0.1), late(4, 1.0))
    elapsed = time.perf_counter() - t0
    assert rec.batches[0] == [1, 2, 3]  # waited for 2 and 3 ...
    assert rec.batches[1] == [4]  # ... but not past the 300 ms delay for 4
    assert results[0].queue_ms == pytest.approx(300, abs=120)
    assert elapsed < 1.6


async def test_released_admission_stops_the_wait(executor) -> None:
    rec = Recorder()
    batcher = DynamicBatcher(
        rec, max_batch_size=8, max_queue_delay_us=2_000_000, executor=executor, name="m"
    )

    async def gives_up() -> None:
        with batcher.admit():
            await asyncio.sleep(0.05)
            # e.g. the image failed to decode: never submitted

    t0 = time.perf_counter()
    result, _ = await asyncio.gather(batcher.submit(1), gives_up())
    assert result.value == 10 and time.perf_counter() - t0 < 1.0
    await batcher.aclose()


async def test_close_fails_queued_requests(executor) -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher = DynamicBatcher(rec, max_batch_size=1, executor=executor, name="m")
    running = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    await batcher.aclose()
    rec.gate.set()
    for task in (running, queued):
        with pytest.raises(NotReadyError, match="model 'm' is shutting down; retry on another"):
            await task
    with pytest.raises(NotReadyError, match="shutting down"):
        batcher.admit()
    with pytest.raises(NotReadyError, match="shutting down"):
        await batcher.submit(3)
    with pytest.raises(NotReadyError, match="shutting down"):
        await batcher.schedule(Lone(), prepared(4))


class Concurrency:
    """A batch function that records how many calls overlap; each call takes ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.batches: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.delay_s)
        with self.lock:
            self.running -= 1
            self.batches.append(list(items))
        return [i * 10 for i in items]


async def test_instances_run_batches_side_by_side_and_never_more() -> None:
    fn = Concurrency(0.1)
    with ThreadPoolExecutor(4) as pool:  # more threads than instances: the batcher is the limit
        batcher = DynamicBatcher(fn, max_batch_size=2, instances=2, executor=pool, name="m")
        t0 = time.perf_counter()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
        elapsed = time.perf_counter() - t0
        await batcher.aclose()
    assert [r.value for r in results] == [i * 10 for i in range(8)]
    assert fn.peak == 2  # two at once, never three
    assert sorted(i for b in fn.batches for i in b) == list(range(8))
    assert elapsed < 0.35  # 4 batches of 0.1 s on 2 instances, not 0.4 s one after another


async def test_lone_request_runs_alone_and_holds_batches_back(executor) -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, max_batch_size=8, instances=1, executor=executor, name="m")
    lone = Lone(7, held=True)
    holder = await running_alone(batcher, lone)
    assert batcher.depth == 0  # running alone is not "admitted, waiting to be submitted"
    waiting = [asyncio.ensure_future(batcher.schedule(Lone(), prepared(i))) for i in (1, 2, 3)]
    await asyncio.sleep(0.05)
    assert rec.batches == [] and batcher.queued == 3 and batcher.depth == 3
    lone.gate.set()
    assert (await holder).value == 7 and (await holder).batch_size == 1
    assert [r.value for r in await asyncio.gather(*waiting)] == [10, 20, 30]
    assert rec.batches == [[1, 2, 3]]  # everything that queued meanwhile went as one batch
    again = Lone(8)
    assert (await batcher.schedule(again, prepared(9))).value == 8  # idle, nothing queued
    assert rec.batches == [[1, 2, 3]] and again.flags == [True]
    await batcher.aclose()


async def test_a_batch_never_waits_for_a_request_running_alone() -> None:
    """Two instances, a long queue delay, one request running alone: a second request, alone or
    batched, runs on the idle instance at once instead of waiting out the 30 s delay."""
    rec = Recorder()
    pools = [ThreadPoolExecutor(1, thread_name_prefix=f"inst{i}") for i in range(2)]
    batcher = DynamicBatcher(
        rec, max_batch_size=8, max_queue_delay_us=30_000_000, instances=2, executor=pools
    )
    first = Lone(1, held=True)
    holder = await running_alone(batcher, first)
    second = Lone(2)
    assert (await asyncio.wait_for(batcher.schedule(second, prepared(-1)), 10)).value == 2
    assert (await asyncio.wait_for(batcher.submit(3), 10)).value == 30  # the batched path
    assert not holder.done() and rec.batches == [[3]]
    assert first.threads == ["inst0_0"] and second.threads == ["inst1_0"]
    # the first had the machine to itself; the second shared it
    assert first.flags == [True] and second.flags == [False]
    first.gate.set()
    assert (await holder).value == 1
    await batcher.aclose()
    for pool in pools:
        pool.shutdown()


async def test_lone_requests_use_every_core_only_when_no_batcher_runs(executor) -> None:
    occupancy = Occupancy()
    with ThreadPoolExecutor(1) as other_pool:
        a = DynamicBatcher(Recorder(), max_batch_size=1, executor=executor, occupancy=occupancy)
        b = DynamicBatcher(Recorder(), max_batch_size=1, executor=other_pool, occupancy=occupancy)
        busy = Lone(held=True)
        holder = await running_alone(a, busy)
        later = Lone()
        await b.schedule(later, prepared(0))  # model b is idle, but model a is running
        busy.gate.set()
        await holder
        last = Lone()
        await b.schedule(last, prepared(0))
        assert (busy.flags, later.flags, last.flags) == ([True], [False], [True])
        assert occupancy.running == 0
        await a.aclose()
        await b.aclose()


async def test_lone_request_failures_and_cancellation_are_its_own(executor) -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, max_batch_size=8, instances=1, executor=executor, name="m")

    def broken(all_cores: bool) -> int:
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        await batcher.schedule(broken, prepared(0))
    lone = Lone(5, held=True)
    doomed = await running_alone(batcher, lone)
    queued = asyncio.ensure_future(batcher.schedule(Lone(), prepared(1)))
    await asyncio.sleep(0.01)
    doomed.cancel()  # the caller gives up; its instance stays busy until the call returns
    await asyncio.sleep(0.05)
    assert not queued.done() and rec.batches == []
    lone.gate.set()
    assert (await queued).value == 10
    assert doomed.cancelled()
    await batcher.aclose()


async def test_prepare_runs_after_admission_and_a_failure_releases_it(executor) -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, max_batch_size=8, max_queue_size=1, executor=executor)
    lone = Lone(held=True)
    holder = await running_alone(batcher, lone)
    calls: list[int] = []

    def preparing(item: int):
        async def prepare() -> int:
            calls.append(item)
            if item < 0:
                raise ValueError("cannot decode")
            return item

        return prepare

    with pytest.raises(ValueError, match="cannot decode"):
        await batcher.schedule(Lone(), preparing(-5))
    assert batcher.depth == 0  # the failed preparation gave its slot back
    queued = asyncio.ensure_future(batcher.schedule(Lone(), preparing(1)))
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceLimitError, match="max_queue_size=1"):
        await batcher.schedule(Lone(), preparing(2))
    assert calls == [-5, 1]  # the shed request was never prepared
    lone.gate.set()
    await holder
    assert (await queued).value == 10
    await batcher.aclose()


async def test_close_answers_waiting_and_lone_requests_unavailable(executor) -> None:
    batcher = DynamicBatcher(Recorder(), max_batch_size=8, instances=1, executor=executor, name="m")
    lone = Lone(held=True)
    holder = await running_alone(batcher, lone)
    waiting = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)
    await batcher.aclose()
    for task in (holder, waiting):
        with pytest.raises(NotReadyError, match="model 'm' is shutting down; retry on another"):
            await task
    lone.gate.set()
    with pytest.raises(NotReadyError):
        await batcher.schedule(Lone(), prepared(2))


async def test_each_instance_runs_on_its_own_executor() -> None:
    seen: list[str] = []

    def run(items: list[int]) -> list[int]:
        seen.append(threading.current_thread().name)
        time.sleep(0.05)
        return items

    pools = [ThreadPoolExecutor(1, thread_name_prefix=f"inst{i}") for i in range(2)]
    batcher = DynamicBatcher(run, max_batch_size=1, instances=2, executor=pools, name="m")
    await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    assert sorted(seen) == ["inst0_0", "inst0_0", "inst1_0", "inst1_0"]
    lone = Lone()
    await batcher.schedule(lone, prepared(0))
    assert lone.threads == ["inst0_0"]  # the lowest idle instance first
    await batcher.aclose()
    for pool in pools:
        pool.shutdown()
    with pytest.raises(ValueError, match="2 executors given for 3 instances"):
        DynamicBatcher(run, max_batch_size=1, instances=3, executor=pools)
    # without executors the batcher keeps a thread per instance itself
    own = DynamicBatcher(run, max_batch_size=1, instances=2, name="own")
    seen.clear()
    await asyncio.gather(*(own.submit(i) for i in range(4)))
    assert sorted(seen) == ["batcher-own-0_0"] * 2 + ["batcher-own-1_0"] * 2
    await own.aclose()


async def test_queue_keeps_arrival_order_when_preparation_finishes_late(executor) -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, max_batch_size=1, instances=1, executor=executor, name="m")
    lone = Lone(held=True)
    holder = await running_alone(batcher, lone)  # the instance is busy, so requests queue up
    first, second = batcher.admit(), batcher.admit()  # arrival order: first, then second

    # the first request's image takes longer to decode: it is submitted after the second
    later = asyncio.ensure_future(second.submit(2))
    await asyncio.sleep(0.01)
    earlier = asyncio.ensure_future(first.submit(1))
    await asyncio.sleep(0.01)
    lone.gate.set()
    await holder
    assert (await earlier).value == 10 and (await later).value == 20
    assert rec.batches == [[1], [2]]  # served in arrival order, not submission order
    await batcher.aclose()
