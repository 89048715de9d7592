"""ObservedProvider counts a stream's upstream waits, not the time its consumer holds each chunk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway_core.observability.observed_provider import ObservedProvider
from gateway_core.observability.request_record import RequestRecord, current
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import UpstreamCall

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
