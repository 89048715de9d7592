"""The stream pump: forwards while the client reads, keeps observing after it left."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway_core.chat import pump as pump_module
from gateway_core.chat.pump import StreamPump
from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2


def _chunk(i: int) -> chat_pb2.StreamChatCompletionResponse:
    return chat_pb2.StreamChatCompletionResponse(id=str(i))


async def _upstream(count: int, *, fail: bool = False, closed: list[bool] | None = None) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
    try:
        for i in range(count):
            await asyncio.sleep(0)
            yield _chunk(i)
        if fail:
            raise GatewayError(Reason.UPSTREAM_ERROR, "broken")
    finally:
        if closed is not None:
            closed.append(True)


async def test_forwards_and_observes_every_chunk() -> None:
    seen: list[str] = []
    pump = StreamPump(_upstream(10), lambda c: seen.append(c.id))
    received = [c.id async for c in pump]
    assert received == seen == [str(i) for i in range(10)]


async def test_error_reaches_the_reader_after_the_chunks_before_it() -> None:
    pump = StreamPump(_upstream(3, fail=True), lambda c: None)
    received = []
    with pytest.raises(GatewayError):
        async for chunk in pump:
            received.append(chunk.id)
    assert received == ["0", "1", "2"]


async def test_detach_frees_a_pump_blocked_on_a_full_queue_and_it_reads_to_the_end() -> None:
    total = pump_module.QUEUE_DEPTH * 3
    seen: list[str] = []
    closed: list[bool] = []
    pump = StreamPump(_upstream(total, closed=closed), lambda c: seen.append(c.id))
    for _ in range(50):  # nobody reads: the pump fills the queue and waits
        await asyncio.sleep(0)
    assert len(seen) <= pump_module.QUEUE_DEPTH + 1
    pump.detach()
    await asyncio.wait_for(pump.task, 5)
    assert len(seen) == total and closed == [True]


async def test_cancelling_the_pump_closes_the_upstream() -> None:
    closed: list[bool] = []

    async def endless() -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        try:
            while True:
                await asyncio.sleep(0.01)
                yield _chunk(0)
        finally:
            closed.append(True)

    pump = StreamPump(endless(), lambda c: None)
    pump.detach()
    await asyncio.sleep(0.05)
    pump.task.cancel()
    await asyncio.gather(pump.task, return_exceptions=True)
    assert closed == [True]
