"""Reads a provider stream in its own task, so a request is metered to its end even
when the client leaves half-way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from gateway_core.handoff import EMPTY, Handoff
from gateway_core.pb.gateway.v1 import chat_pb2

Chunk = chat_pb2.StreamChatCompletionResponse
_END = object()
# Chunks buffered ahead of a slow client; beyond this the upstream read waits (backpressure).
QUEUE_DEPTH = 64


class StreamPump:
    """One per request; not thread-safe.

    The pump task reads every upstream chunk and hands it to `observe` (the
    meter) before queueing it for the client. After `detach()` nothing is
    queued any more, but reading and observing go on until the upstream ends
    or the pump is cancelled, which closes the upstream connection.
    """

    def __init__(self, chunks: AsyncIterator[Chunk], observe: Callable[[Chunk], None]) -> None:
        self._chunks = chunks
        self._observe = observe
        self._queue: Handoff[object] = Handoff(QUEUE_DEPTH)
        self._detached = False
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(), name="stream-pump")

    async def _run(self) -> None:
        try:
            queue = self._queue
            async with contextlib.aclosing(self._chunks) as chunks:
                async for chunk in chunks:
                    self._observe(chunk)
                    if not self._detached:
                        try:
                            queue.put_nowait(chunk)  # the usual case: room in the queue, no coroutine
                        except asyncio.QueueFull:
                            await queue.put(chunk)  # a slow reader: wait for room (backpressure)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - handed to the reader, who decides
            self.error = error
        finally:
            if not self._detached:  # a detached pump has no reader left to tell
                await self._queue.put(_END)

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        queue = self._queue
        while True:
            item = queue.poll()  # the usual case when chunks queue up: no coroutine
            if item is EMPTY:
                item = await queue.get()
            if item is _END:
                break
            yield item  # type: ignore[misc]
        if self.error is not None:
            raise self.error

    def detach(self) -> None:
        """The client is gone: stop queueing, and free a pump blocked on a full queue."""
        self._detached = True
        self._queue.clear()
