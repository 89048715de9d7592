"""Streamed chunks handed on in batches: every chunk one network read completed, in one step.

A stream's chunk used to pass each layer (provider, ObservedProvider, the
attempts, the StreamRun) as one async-generator step: a frame resumed and
suspended per layer per chunk, although the chunks of one upstream read are all
there at once (a burst of 16 tokens arrives in one to three reads). A stream
that can say so offers `next_batch()`: every chunk the bytes received so far
complete, at least one, in order; None at the end. Each layer then does its
per-read work (timing, idle watch, queueing) once per batch.

Providers keep the Provider contract (`stream()` is an async iterator of
chunks); offering `next_batch` is optional. `batches_of` gives any stream the
batch interface: a native one as it is, any other one chunk per batch. A stream may also say, with a true `ended`, that it has
ended cleanly and its next read returns None at once (the StreamRun then lets
the last chunks leave with the billed usage).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from gateway_core.pb.gateway.v1 import chat_pb2

Chunk = chat_pb2.StreamChatCompletionResponse


@runtime_checkable
class ChunkBatches(Protocol):
    """A stream read a batch at a time. One reader; aclose() ends it (closing the upstream) at any point."""

    async def next_batch(self) -> list[Chunk] | None:
        """The next chunks, at least one, waiting only when none has arrived; None at the end.

        A failure after some chunks of a read were translated is raised by the
        next call, once those chunks are handed out: nothing good is lost to it."""
        ...

    async def aclose(self) -> None:
        """Ends the stream early (the upstream is closed); a no-op once it has ended."""
        ...


class BatchedChunks:
    """Chunk-by-chunk async iteration over a next_batch() of the subclass (the Provider contract)."""

    __slots__ = ("_batch", "_next")

    def __init__(self) -> None:
        self._batch: list[Chunk] = []
        self._next = 0  # index in _batch of the next chunk to hand out

    async def next_batch(self) -> list[Chunk] | None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def __aiter__(self) -> BatchedChunks:
        return self

    async def __anext__(self) -> Chunk:
        index = self._next
        if index >= len(self._batch):
            batch = await self.next_batch()
            if batch is None:
                raise StopAsyncIteration
            self._batch, index = batch, 0
        self._next = index + 1
        return self._batch[index]


class _OneByOne:
    """A plain async iterator of chunks as batches of one (it cannot say which chunks are already there)."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: AsyncIterator[Chunk]) -> None:
        self._chunks = chunks

    async def next_batch(self) -> list[Chunk] | None:
        try:
            return [await self._chunks.__anext__()]
        except StopAsyncIteration:
            return None

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


def batches_of(chunks: AsyncIterator[Chunk]) -> ChunkBatches:
    """chunks read a batch at a time: its own next_batch if it has one, else one chunk per batch."""
    if isinstance(chunks, BatchedChunks) or hasattr(chunks, "next_batch"):
        return chunks  # type: ignore[return-value]
    return _OneByOne(chunks)
