"""DeadlineTimer: each deadline expires once, at its time, unless removed; one loop timer for all."""

from __future__ import annotations

import asyncio

from gateway_core.deadline_timer import DeadlineTimer


async def test_deadlines_expire_at_their_time_in_order_and_removed_ones_never() -> None:
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer()
    expired: list[str] = []
    start = loop.time()
    timer.add("late", start + 1.0, lambda: expired.append("late"))
    timer.add("early", start + 0.2, lambda: expired.append("early"))  # earlier: the timer moves
    timer.add("gone", start + 0.3, lambda: expired.append("gone"))
    timer.add("same", start + 0.2, lambda: expired.append("same"))
    timer.remove("gone")
    timer.remove("never-added")
    await asyncio.sleep(0.05)
    assert expired == []
    await asyncio.sleep(start + 0.45 - loop.time())
    assert sorted(expired) == ["early", "same"] and len(timer) == 1
    await asyncio.sleep(start + 1.2 - loop.time())
    assert sorted(expired) == ["early", "late", "same"] and len(timer) == 0


async def test_later_deadlines_come_and_go_without_moving_the_timer() -> None:
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer()
    timer.add("first", loop.time() + 60, lambda: None)
    armed = timer._timer
    for i in range(100):  # requests with the usual timeout, each ending well before it
        timer.add(i, loop.time() + 60, lambda: None)
        timer.remove(i)
    assert timer._timer is armed and len(timer) == 1
    timer.remove("first")
    assert len(timer) == 0


async def test_after_firing_it_is_armed_again_for_the_earliest_left() -> None:
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer()
    expired: list[int] = []
    start = loop.time()
    timer.add(1, start + 0.05, lambda: expired.append(1))
    timer.add(2, start + 1.0, lambda: expired.append(2))
    await asyncio.sleep(0.2)
    assert expired == [1] and timer._timer is not None
    timer.add(3, loop.time() + 0.05, lambda: expired.append(3))  # earlier than the armed one
    await asyncio.sleep(0.2)
    assert expired == [1, 3]
    await asyncio.sleep(start + 1.2 - loop.time())
    assert expired == [1, 3, 2] and timer._timer is None
