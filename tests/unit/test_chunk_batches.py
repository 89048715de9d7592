"""batches_of and BatchedChunks: the batch interface streams offer, and chunk-by-chunk reading over it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.chunk_batches import BatchedChunks, batches_of

Chunk = chat_pb2.StreamChatCompletionResponse


class _Scripted(BatchedChunks):
    """Hands out the given batches, then the end."""

    __slots__ = ("batches", "closed")

    def __init__(self, batches: list[list[Chunk]]) -> None:
        super().__init__()
        self.batches = batches
        self.closed = False

    async def next_batch(self) -> list[Chunk] | None:
        return self.batches.pop(0) if self.batches else None

    async def aclose(self) -> None:
        self.closed = True


async def test_chunk_by_chunk_reading_gives_every_chunk_of_every_batch_in_order() -> None:
    stream = _Scripted([[Chunk(id="a"), Chunk(id="b")], [Chunk(id="c")], [Chunk(id="d"), Chunk(id="e")]])
    assert [chunk.id async for chunk in stream] == ["a", "b", "c", "d", "e"]


async def test_a_native_batch_stream_is_used_as_it_is() -> None:
    stream = _Scripted([])
    assert batches_of(stream) is stream


async def test_a_plain_iterator_becomes_batches_of_one_and_closing_reaches_it() -> None:
    closed = []

    async def chunks() -> AsyncIterator[Chunk]:
        try:
            for name in ("a", "b", "c"):
                yield Chunk(id=name)
        finally:
            closed.append(True)

    plain = chunks()
    batches = batches_of(plain)
    assert [c.id for c in await batches.next_batch() or []] == ["a"]
    assert [c.id for c in await batches.next_batch() or []] == ["b"]
    await batches.aclose()
    assert closed == [True]
    assert await batches.next_batch() is None  # a closed generator is over


async def test_a_plain_iterator_read_to_its_end_ends_with_none() -> None:
    async def chunks() -> AsyncIterator[Chunk]:
        yield Chunk(id="only")

    batches = batches_of(chunks())
    assert [c.id for c in await batches.next_batch() or []] == ["only"]
    assert await batches.next_batch() is None
