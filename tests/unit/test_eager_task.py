"""start_eagerly: the first step now, the rest in a task that behaves as create_task's would."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from gateway_core.eager_task import own_task, start_eagerly

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("SEEN", default="unset")


async def test_the_first_step_runs_before_start_eagerly_returns_and_the_rest_in_the_task() -> None:
    steps: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def work() -> str:
        steps.append("first")
        await gate
        steps.append("second")
        assert asyncio.current_task() is task
        return "done"

    task = start_eagerly(work())
    assert steps == ["first"]  # no loop pass in between
    assert isinstance(task, asyncio.Task) and not task.done()
    gate.set_result(None)
    assert await task == "done"
    assert steps == ["first", "second"]


async def test_create_task_would_have_run_nothing_yet() -> None:
    """The loop pass start_eagerly saves: the same coroutine under create_task has not started."""
    steps: list[str] = []

    async def work() -> None:
        steps.append("first")

    task = asyncio.get_running_loop().create_task(work())
    assert steps == []
    await task
    eager = start_eagerly(work())
    assert steps == ["first", "first"] and eager.done()


async def test_a_coroutine_that_ends_in_its_first_step_gives_a_done_future() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise ValueError("refused")

    async def cancelled() -> None:
        raise asyncio.CancelledError

    done = start_eagerly(answer())
    assert done.done() and done.result() == 42
    failed = start_eagerly(fail())
    with pytest.raises(ValueError, match="refused"):
        await failed
    assert start_eagerly(cancelled()).cancelled()


async def test_an_awaited_futures_error_and_a_bare_yield_reach_the_coroutine() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def work() -> str:
        await asyncio.sleep(0)  # a bare yield: the task goes round once
        try:
            await gate
        except KeyError:
            return "caught"
        return "not raised"

    task = start_eagerly(work())
    await asyncio.sleep(0)
    gate.set_exception(KeyError("x"))
    assert await task == "caught"


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def work() -> None:
        try:
            await gate
        finally:
            cleaned.append("finally")

    task = start_eagerly(work())
    await asyncio.sleep(0)  # the task waits on gate now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"] and gate.cancelled()


async def test_a_cancellation_before_the_tasks_first_step_still_reaches_the_coroutine() -> None:
    """A task cancelled before its first step throws into its coroutine: here that coroutine has run
    its first step already, so it sees the cancellation where it waits (and cleans up)."""
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def work() -> None:
        try:
            await gate
        finally:
            cleaned.append("finally")

    task = start_eagerly(work())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"] and task.cancelled()


async def test_a_coroutine_may_swallow_a_cancellation_and_go_on() -> None:
    async def work() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        await asyncio.sleep(0)
        return "went on"

    task = start_eagerly(work())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "went on"


async def test_the_coroutine_runs_in_one_copied_context_first_step_included() -> None:
    SEEN.set("caller")
    gate = asyncio.get_running_loop().create_future()

    async def work() -> tuple[str, str]:
        first = SEEN.get()
        SEEN.set("coroutine")
        await gate
        return first, SEEN.get()

    task = start_eagerly(work())
    assert SEEN.get() == "caller"  # nothing leaks back into the caller's context
    gate.set_result(None)
    assert await task == ("caller", "coroutine")


async def test_a_given_context_is_the_one_used() -> None:
    async def work() -> str:
        return SEEN.get()

    context = contextvars.Context()
    context.run(SEEN.set, "given")
    assert start_eagerly(work(), context=context).result() == "given"


async def test_own_task_waits_one_pass_only_in_the_first_step() -> None:
    events: list[str] = []

    async def work() -> None:
        await own_task()  # in the first step: one pass, then in the task
        events.append("own task" if asyncio.current_task() is task else "caller's task")
        before = len(events)
        asyncio.get_running_loop().call_soon(events.append, "next pass")
        await own_task()  # in the task: no wait at all
        assert len(events) == before

    task = start_eagerly(work())
    assert events == [] and not task.done()
    await task
    assert events[0] == "own task"


async def test_own_task_outside_any_first_step_does_not_wait() -> None:
    events: list[str] = []
    asyncio.get_running_loop().call_soon(events.append, "next pass")
    await own_task()
    assert events == []
