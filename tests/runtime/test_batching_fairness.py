"""DynamicBatcher between clients: round-robin lines, a per-client share of the queue, and
ClientSlots (per-client bounded concurrency)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.runtime.test_batching import Recorder
from visionrpc.errors import ResourceLimitError
from visionrpc.runtime.batching import Batched, DynamicBatcher
from visionrpc.runtime.fairness import ClientSlots


@pytest.fixture
def executor():
    with ThreadPoolExecutor(1) as pool:
        yield pool


async def held_batcher(
    executor: ThreadPoolExecutor,
    max_batch_size: int,
    max_queue_size: int = 256,
    max_queue_per_client: int | None = None,
) -> tuple[Recorder, DynamicBatcher[int, int], asyncio.Future[Batched[int]]]:
    """A batcher whose one instance is busy with request 0 (held), so the next ones queue."""
    rec = Recorder()
    rec.gate.clear()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        rec,
        executor=executor,
        name="m",
        max_batch_size=max_batch_size,
        max_queue_size=max_queue_size,
        max_queue_per_client=max_queue_per_client,
    )
    first = asyncio.ensure_future(batcher.submit(0, "busy"))
    await asyncio.sleep(0.05)
    return rec, batcher, first


async def test_clients_are_served_round_robin_each_in_its_own_order(executor) -> None:
    rec, batcher, first = await held_batcher(executor, max_batch_size=1)
    calls = [asyncio.ensure_future(batcher.submit(i, "greedy")) for i in (1, 2, 3, 4)]
    await asyncio.sleep(0.01)
    calls += [asyncio.ensure_future(batcher.submit(i, "polite")) for i in (101, 102)]
    await asyncio.sleep(0.01)
    calls.append(asyncio.ensure_future(batcher.submit(201, "third")))
    await asyncio.sleep(0.01)
    rec.gate.set()
    await asyncio.gather(first, *calls)
    assert rec.batches == [[0], [1], [101], [201], [2], [102], [3], [4]]
    await batcher.aclose()


async def test_batches_are_filled_round_robin(executor) -> None:
    rec, batcher, first = await held_batcher(executor, max_batch_size=4)
    calls = [asyncio.ensure_future(batcher.submit(i, "a")) for i in (1, 2, 3, 4, 5)]
    await asyncio.sleep(0.01)
    calls += [asyncio.ensure_future(batcher.submit(i, "b")) for i in (11, 12)]
    await asyncio.sleep(0.01)
    rec.gate.set()
    await asyncio.gather(first, *calls)
    assert rec.batches == [[0], [1, 11, 2, 12], [3, 4, 5]]
    await batcher.aclose()


async def test_one_client_is_kept_to_its_share_while_others_are_admitted(executor) -> None:
    rec, batcher, first = await held_batcher(
        executor, max_batch_size=1, max_queue_size=6, max_queue_per_client=3
    )
    greedy = [asyncio.ensure_future(batcher.submit(i, "greedy")) for i in (1, 2, 3)]
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceLimitError) as err:
        await batcher.submit(4, "greedy")
    assert "max_queue_per_client=3" in str(err.value) and "other clients" in str(err.value)
    assert batcher.held_by("greedy") == 3
    polite = asyncio.ensure_future(batcher.submit(101, "polite"))  # still admitted
    await asyncio.sleep(0.01)
    rec.gate.set()
    await asyncio.gather(first, *greedy)
    assert (await polite).value == 1010
    assert rec.batches[:3] == [[0], [1], [101]]  # served next, not after the greedy backlog
    assert batcher.held_by("greedy") == 0 and batcher.depth == 0
    await batcher.aclose()


async def test_the_whole_queue_still_bounds_all_clients_together(executor) -> None:
    rec, batcher, first = await held_batcher(
        executor, max_batch_size=1, max_queue_size=2, max_queue_per_client=2
    )
    queued = [asyncio.ensure_future(batcher.submit(i, f"c{i}")) for i in (1, 2)]
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceLimitError, match="max_queue_size=2"):
        await batcher.submit(3, "c3")
    rec.gate.set()
    await asyncio.gather(first, *queued)
    await batcher.aclose()


async def test_withdrawn_and_cancelled_requests_free_their_clients_share(executor) -> None:
    rec, batcher, first = await held_batcher(executor, max_batch_size=1, max_queue_per_client=2)
    batcher.admit("a").release()
    with batcher.admit("a"):
        assert batcher.held_by("a") == 1
    assert batcher.held_by("a") == 0
    doomed = asyncio.ensure_future(batcher.submit(1, "a"))
    kept = asyncio.ensure_future(batcher.submit(2, "a"))
    await asyncio.sleep(0.01)
    doomed.cancel()
    rec.gate.set()
    assert (await kept).value == 20 and (await first).value == 0
    assert rec.batches == [[0], [2]]  # the cancelled one was skipped
    assert batcher.held_by("a") == 0 and batcher.depth == 0
    await batcher.aclose()


async def test_closing_fails_every_clients_queued_requests(executor) -> None:
    rec, batcher, first = await held_batcher(executor, max_batch_size=1)
    queued = [asyncio.ensure_future(batcher.submit(i, c)) for i, c in ((1, "a"), (2, "b"))]
    await asyncio.sleep(0.01)
    await batcher.aclose()
    rec.gate.set()
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    assert batcher.held_by("a") == batcher.held_by("b") == 0


# -- ClientSlots -----------------------------------------------------------------------------


async def test_slots_are_per_client_and_handed_over_in_order() -> None:
    slots = ClientSlots(2)
    assert slots.try_acquire("a") and slots.try_acquire("a")
    assert not slots.try_acquire("a")
    assert slots.try_acquire("b")  # another client is not affected
    order: list[int] = []

    async def wait(n: int) -> None:
        await slots.acquire("a")
        order.append(n)

    waiters = [asyncio.ensure_future(wait(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0.01)
    assert order == [] and not slots.try_acquire("a")  # no overtaking of waiters
    slots.release("a")
    slots.release("a")
    await asyncio.sleep(0.01)
    assert order == [1, 2] and slots.held("a") == 2
    waiters[2].cancel()
    await asyncio.sleep(0.01)
    slots.release("a")
    slots.release("a")
    slots.release("b")
    assert slots.held("a") == slots.held("b") == 0
    assert slots.try_acquire("a")


async def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    slots = ClientSlots(1)
    await slots.acquire("a")
    first = asyncio.ensure_future(slots.acquire("a"))
    second = asyncio.ensure_future(slots.acquire("a"))
    await asyncio.sleep(0.01)
    slots.release("a")  # handed to first ...
    first.cancel()  # ... which gives up before it runs
    await asyncio.sleep(0.01)
    assert second.done() and slots.held("a") == 1
    slots.release("a")
    assert slots.held("a") == 0
