"""Handoff: the bounded FIFO between a stream's tasks keeps asyncio.Queue's contract where it is used."""

from __future__ import annotations

import asyncio

import pytest

from gateway_core.handoff import EMPTY, Handoff


async def test_items_come_out_in_order_and_the_bound_holds() -> None:
    queue: Handoff[int] = Handoff(3)
    for i in range(3):
        queue.put_nowait(i)
    assert queue.full() and len(queue) == 3
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(3)
    assert [queue.get_nowait() for _ in range(3)] == [0, 1, 2]
    assert queue.empty()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Handoff(0)


async def test_get_waits_for_an_item_and_put_waits_for_room() -> None:
    queue: Handoff[str] = Handoff(1)
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait("a")
    assert await asyncio.wait_for(getter, 1) == "a"

    queue.put_nowait("b")
    putter = asyncio.ensure_future(queue.put("c"))
    await asyncio.sleep(0)
    assert not putter.done()  # full: the putter waits (backpressure)
    assert queue.get_nowait() == "b"
    await asyncio.wait_for(putter, 1)
    assert queue.get_nowait() == "c"


async def test_waiting_getters_are_served_oldest_first() -> None:
    queue: Handoff[int] = Handoff(4)
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert await asyncio.wait_for(first, 1) == 1
    assert await asyncio.wait_for(second, 1) == 2


async def test_a_getter_cancelled_after_its_wake_up_passes_it_on() -> None:
    queue: Handoff[int] = Handoff(4)
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(7)  # wakes the first getter...
    first.cancel()  # ...which is cancelled before it runs: the item must reach the second
    assert await asyncio.wait_for(second, 1) == 7
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_cancelled_waiting_putter_leaves_nothing_behind() -> None:
    queue: Handoff[int] = Handoff(1)
    queue.put_nowait(1)
    putter = asyncio.ensure_future(queue.put(2))
    await asyncio.sleep(0)
    putter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await putter
    assert queue.get_nowait() == 1 and queue.empty()


async def test_clear_drops_the_items_and_frees_waiting_putters() -> None:
    queue: Handoff[int] = Handoff(2)
    queue.put_nowait(1)
    queue.put_nowait(2)
    putter = asyncio.ensure_future(queue.put(3))
    await asyncio.sleep(0)
    queue.clear()
    await asyncio.wait_for(putter, 1)
    assert queue.get_nowait() == 3 and queue.empty()


async def test_poll_takes_an_item_or_says_empty_without_raising() -> None:
    queue: Handoff[int | None] = Handoff(2)
    assert queue.poll() is EMPTY
    queue.put_nowait(None)  # any item, None included, is an item
    queue.put_nowait(1)
    putter = asyncio.ensure_future(queue.put(2))
    await asyncio.sleep(0)
    assert queue.poll() is None
    await asyncio.wait_for(putter, 1)  # taking one made room for the waiting putter
    assert [queue.poll(), queue.poll(), queue.poll()] == [1, 2, EMPTY]
