"""IdleWatch: the silence limit between stream chunks, one timer per stream."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway_core.chat.idle_watch import IdleTimeout, IdleWatch
from gateway_core.deadline_timer import DeadlineTimer


async def _after(seconds: float, value: str = "chunk") -> str:
    await asyncio.sleep(seconds)
    return value


async def test_a_read_silent_past_the_limit_times_out_near_the_limit() -> None:
    started = time.monotonic()
    with IdleWatch(0.1) as watch, pytest.raises(IdleTimeout):
        await watch.read(_after(5))
    assert 0.09 <= time.monotonic() - started < 1.0


async def test_only_each_wait_counts_not_the_whole_stream_nor_the_time_between_reads() -> None:
    with IdleWatch(0.15) as watch:
        for _ in range(6):  # 6 x 0.08 s of waiting: well past the limit in total, never in one read
            assert await watch.read(_after(0.08)) == "chunk"
            await asyncio.sleep(0.2)  # the reader is slow (a slow client): not the upstream's silence
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_timeout_leaves_the_task_uncancelled_and_the_watch_usable_for_nothing_else() -> None:
    task = asyncio.current_task()
    assert task is not None
    with IdleWatch(0.05) as watch:
        with pytest.raises(IdleTimeout):
            await watch.read(_after(1))
        assert task.cancelling() == 0, "the watch took its own cancellation back"
        await asyncio.sleep(0.01)  # no stray cancellation arrives later


async def test_someone_elses_cancellation_is_a_cancellation_not_a_timeout() -> None:
    async def reader() -> None:
        with IdleWatch(10) as watch:
            await watch.read(_after(5))

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_that_races_the_timeout_still_propagates() -> None:
    async def reader() -> None:
        with IdleWatch(0.05) as watch:
            await watch.read(_after(5))

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)  # about when the watch fires
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_leaving_the_watch_removes_its_deadline() -> None:
    timer = DeadlineTimer()
    with IdleWatch(30, timer) as watch:
        await watch.read(_after(0))
        assert len(timer) == 1
        await watch.read(_after(0))
        assert len(timer) == 1, "one deadline for the whole stream, not one per read"
    assert len(timer) == 0


async def test_watches_sharing_a_timer_add_no_loop_timer_of_their_own() -> None:
    """Many streams on one DeadlineTimer: one loop timer between them; each times out on its own."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer()
    quiet = IdleWatch(0.05, timer)
    busy = IdleWatch(30, timer)
    def armed() -> int:
        return len([h for h in loop._scheduled if not h.cancelled()])  # type: ignore[attr-defined]

    before = armed()
    with busy:
        assert await busy.read(_after(0)) == "chunk"
        with quiet, pytest.raises(IdleTimeout):
            await quiet.read(_after(5))
        assert armed() <= before + 1
        assert await busy.read(_after(0.01)) == "chunk", "the other watch's deadline is untouched"
        assert len(timer) == 1
    assert len(timer) == 0


async def test_a_shorter_limit_set_after_the_first_read_applies_to_the_next_wait() -> None:
    """A stream's first chunk may wait longer (first_token_timeout) than the chunks after it (idle)."""
    with IdleWatch(5.0) as watch:
        assert await watch.read(_after(0.05)) == "chunk"  # armed for 5 s from here
        watch.set_limit(0.1)
        started = time.monotonic()
        with pytest.raises(IdleTimeout):
            await watch.read(_after(5))
        assert time.monotonic() - started < 1.0, "the shorter limit, not the timer armed for the longer one"


async def test_a_longer_limit_set_after_the_first_read_lets_a_longer_wait_through() -> None:
    with IdleWatch(0.1) as watch:
        assert await watch.read(_after(0.01)) == "chunk"
        watch.set_limit(1.0)
        assert await watch.read(_after(0.3)) == "chunk"  # past the first limit, within the new one


async def test_the_inline_steps_time_out_like_read() -> None:
    task = asyncio.current_task()
    assert task is not None
    with IdleWatch(0.05) as watch:
        watch.waiting()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            assert watch.timed_out()
        else:
            raise AssertionError("not cut")
        finally:
            watch.waited()
        assert task.cancelling() == 0
