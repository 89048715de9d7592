"""StreamEvents: an upstream stream's total deadline on one timer, with asyncio.timeout_at's semantics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway_core.errors import Reason
from gateway_core.providers.base import ProviderError
from gateway_core.providers.http import Deadline, StreamEvents
from gateway_core.providers.sse import SseEvent


async def paced(gaps: list[float]) -> AsyncIterator[SseEvent]:
    """One event after each gap (seconds), then the end of the body."""
    for index, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield SseEvent(data=str(index))


async def read_all(reader: StreamEvents) -> list[str]:
    seen = []
    while (event := await reader.next()) is not None:
        seen.append(event.data)
    return seen


async def test_reads_every_event_within_the_deadline_and_drops_its_timer() -> None:
    with StreamEvents(paced([0.0] * 50), Deadline.after(5.0)) as reader:
        assert await read_all(reader) == [str(i) for i in range(50)]
        assert reader._timer is not None  # one timer for the whole stream, armed at the first read
        timer = reader._timer
    assert timer.cancelled()  # leaving the stream drops it


async def test_without_a_deadline_no_timer_is_armed() -> None:
    with StreamEvents(paced([0.0, 0.0]), Deadline.after(None)) as reader:
        assert await read_all(reader) == ["0", "1"]
        assert reader._timer is None


async def test_deadline_passing_while_waiting_is_an_upstream_timeout() -> None:
    with StreamEvents(paced([0.0, 5.0]), Deadline.after(0.2)) as reader:
        assert (await reader.next()).data == "0"
        started = asyncio.get_running_loop().time()
        with pytest.raises(ProviderError) as caught:
            await reader.next()
    assert caught.value.reason == Reason.UPSTREAM_TIMEOUT
    assert asyncio.get_running_loop().time() - started < 1.0
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # our cancellation was taken back


async def test_deadline_passing_between_reads_fails_the_next_read_at_once() -> None:
    with StreamEvents(paced([0.0, 0.0]), Deadline.after(0.1)) as reader:
        assert (await reader.next()).data == "0"
        await asyncio.sleep(0.3)  # the consumer is busy when the deadline passes: not cancelled
        with pytest.raises(ProviderError) as caught:
            await reader.next()
    assert caught.value.reason == Reason.UPSTREAM_TIMEOUT


async def test_a_deadline_already_passed_refuses_the_first_read() -> None:
    deadline = Deadline.after(0.0)
    await asyncio.sleep(0.01)
    with StreamEvents(paced([5.0]), deadline) as reader:
        with pytest.raises(ProviderError) as caught:
            await reader.next()
    assert caught.value.reason == Reason.UPSTREAM_TIMEOUT


async def test_an_outside_cancellation_stays_a_cancellation() -> None:
    async def consume() -> list[str]:
        with StreamEvents(paced([0.0, 5.0]), Deadline.after(10.0)) as reader:
            return await read_all(reader)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outside_cancellation_at_the_deadline_is_not_swallowed() -> None:
    """Both at once: like asyncio.timeout_at, the caller's cancellation wins over the timeout."""

    async def consume(reader: StreamEvents) -> None:
        await reader.next()

    with StreamEvents(paced([5.0]), Deadline.after(0.1)) as reader:
        task = asyncio.create_task(consume(reader))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        loop.call_at(reader._timer.when(), task.cancel)  # type: ignore[union-attr]
        with pytest.raises(asyncio.CancelledError):
            await task


async def body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


async def test_events_of_one_network_chunk_are_read_in_order_without_waiting() -> None:
    from gateway_core.providers.sse import iter_sse

    events = iter_sse(body(b"data: a\n\ndata: b\n\nevent: x\ndata: c\n\n", b"data: d\n\n"))
    with StreamEvents(events, Deadline.after(5.0)) as reader:
        first = await reader.next()
        assert first is not None and first.data == "a"
        ready = events.ready()  # b was decoded with a: it is handed out without a wait
        assert ready is not None and ready.data == "b"
        rest = await read_all(reader)
    assert rest == ["c", "d"]
    assert events.ready() is None


async def test_a_passed_deadline_fails_the_next_read_even_if_its_event_is_already_decoded() -> None:
    from gateway_core.providers.sse import iter_sse

    with StreamEvents(iter_sse(body(b"data: a\n\ndata: b\n\n")), Deadline.after(0.1)) as reader:
        assert (await reader.next()).data == "a"
        await asyncio.sleep(0.3)
        with pytest.raises(ProviderError) as caught:
            await reader.next()
    assert caught.value.reason == Reason.UPSTREAM_TIMEOUT
