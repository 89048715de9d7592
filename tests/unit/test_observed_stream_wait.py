"""ObservedProvider counts a stream's upstream waits, not the time its consumer holds each chunk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway_core.observability.observed_provider import ObservedProvider
from gateway_core.observability.request_record import RequestRecord, current
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import UpstreamCall
from gateway_core.providers.chunk_batches import BatchedChunks, batches_of

Chunk = chat_pb2.StreamChatCompletionResponse


class _Slow:
    """A provider whose stream waits `gap` before each of `count` chunks, then fails if told to."""

    name = "slow"

    def __init__(self, gap: float, count: int, fail: bool = False) -> None:
        self.gap, self.count, self.fail = gap, count, fail
        self.closed = False

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        raise NotImplementedError

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        try:
            for i in range(self.count):
                await asyncio.sleep(self.gap)
                yield Chunk(id=f"c{i}")
            await asyncio.sleep(self.gap)
            if self.fail:
                raise RuntimeError("upstream broke")
        finally:
            self.closed = True

    async def aclose(self) -> None:
        return None


def _call() -> UpstreamCall:
    return UpstreamCall(request=chat_pb2.StreamChatCompletionRequest(model="m"), upstream_model="u",
                        client_model="m", request_id="req_wait")


async def _consume(provider: ObservedProvider, hold_each: float, record: RequestRecord) -> list[str]:
    current.set(record)
    ids = []
    async for chunk in provider.stream(_call()):
        ids.append(chunk.id)
        await asyncio.sleep(hold_each)  # a slow consumer: not the upstream's time
    return ids


async def test_the_waits_before_each_chunk_and_the_end_are_counted_and_the_consumers_time_is_not() -> None:
    record = RequestRecord(mode="stream")
    observed = ObservedProvider(_Slow(gap=0.05, count=4), None, system="test")
    ids = await asyncio.create_task(_consume(observed, 0.1, record))
    assert ids == ["c0", "c1", "c2", "c3"]
    assert 0.24 <= record.upstream_wait_seconds < 0.24 + 0.2, "five 50 ms waits, none of the 4 x 100 ms holds"


async def test_a_failing_stream_counts_its_last_wait_and_is_closed() -> None:
    record = RequestRecord(mode="stream")
    inner = _Slow(gap=0.05, count=1, fail=True)
    with pytest.raises(RuntimeError):
        await asyncio.create_task(_consume(ObservedProvider(inner, None, system="test"), 0.0, record))
    assert 0.09 <= record.upstream_wait_seconds < 0.3 and inner.closed


class _SlowBatches(BatchedChunks):
    """A batch stream: `gap` before each of its batches of two chunks."""

    __slots__ = ("gap", "left", "closed")

    def __init__(self, gap: float, batches: int) -> None:
        super().__init__()
        self.gap, self.left, self.closed = gap, batches, False

    async def next_batch(self) -> list[Chunk] | None:
        await asyncio.sleep(self.gap)
        if not self.left:
            return None
        self.left -= 1
        return [Chunk(id=f"b{self.left}-0"), Chunk(id=f"b{self.left}-1")]

    async def aclose(self) -> None:
        self.closed = True


class _BatchProvider(_Slow):
    def __init__(self, stream: _SlowBatches) -> None:
        super().__init__(0, 0)
        self.batches = stream

    def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:  # type: ignore[override]
        return self.batches


async def test_a_batch_streams_waits_are_counted_per_batch_and_closing_reaches_it() -> None:
    record = RequestRecord(mode="stream")
    inner = _SlowBatches(gap=0.05, batches=3)

    async def consume() -> int:
        current.set(record)
        stream = ObservedProvider(_BatchProvider(inner), None, system="test").stream(_call())
        batches = batches_of(stream)
        count = 0
        while (batch := await batches.next_batch()) is not None:
            count += len(batch)
            await asyncio.sleep(0.1)  # the consumer's time
        await batches.aclose()
        return count

    assert await asyncio.create_task(consume()) == 6
    assert 0.19 <= record.upstream_wait_seconds < 0.19 + 0.15, "four 50 ms waits, none of the 3 x 100 ms holds"
    assert inner.closed
