"""One streamed request's hold, upstream read and settlement, in one task apart from its reader.

A stream used to take a task and a shield to write its hold, a pump task to
read the upstream and another task and shield to settle: three task starts and
their wake-ups per stream. StreamRun does all three in one task, as _UnaryRun
does for unary requests, and hands chunks to the reader through one bounded
queue, the chunks of one upstream read as one item; the reader pulls them
without a generator of its own (poll(), then next() only when it must wait).

Every admitted stream is settled exactly once, whoever leaves when:
- the reader leaves while the hold is written: the limits go back at once and
  the hold, once it lands, is settled at zero (no upstream call is made);
- the reader leaves while the upstream is read: the run stops queueing, reads
  on for drain_seconds (while fewer than max_concurrent_drains do) to learn
  the real usage, then closes the upstream and bills what it saw as CANCELLED;
- the reader leaves while the settlement is written: it completes.
An abandoned run's task belongs to the pipeline's background tasks from then on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway_core.chat.meter import Admission, RequestMeter, cancelled_before_upstream, set_billed_usage
from gateway_core.chat.upstream_drain import UpstreamDrain
from gateway_core.handoff import EMPTY, Handoff
from gateway_core.metering.outcome import Hold, UsageOutcome, UsageStatus
from gateway_core.pb.gateway.v1 import chat_pb2

if TYPE_CHECKING:
    from gateway_core.chat.pipeline import ChatPipeline, _Prepared

Chunk = chat_pb2.StreamChatCompletionResponse
# Batches (the chunks of one upstream read each) buffered ahead of a slow reader; beyond this the
# upstream read waits (backpressure), and the connection stops reading its socket past its own buffer.
# A read can complete hundreds of chunks, so a batch is queued in parts of at most BATCH_LIMIT: what a
# stream holds for a slow reader stays bounded in chunks (QUEUE_DEPTH x BATCH_LIMIT), not in reads.
QUEUE_DEPTH = 8
BATCH_LIMIT = 64


class _Last:
    """The last item queued for a stream that ended well: its held chunks and the final chunk, then the
    end, in one hand-off (one put, one take) instead of one item each."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks


class _Failed:
    """Queued instead of a _Last when the stream failed: the reader raises `error` after the chunks before it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class StreamRun:
    """One per streamed request; runs on the caller's event loop; read by one reader.

        run = StreamRun(pipeline, prepared, admitted)   # the hold is written in the run's task
        try:
            while (chunk := run.poll()) is not None:   # or `async for chunk in run`
                if chunk is EMPTY: chunk = await run.wait() ...
        finally:
            run.close()                                 # the reader is done (or gone)

    The queue carries the upstream's chunks that have choices (their usage is
    replaced by the billed usage), a list per upstream read, then, once the
    settlement is written, one _Last: the final chunk with the billed usage,
    then the end; or, instead of that, the failure (a refused hold's before any
    chunk). The list of a read that ended the upstream stream is queued only
    after the settlement, in the _Last before the final chunk: the reader takes
    them in one wake-up. `admission` is set before the first item is queued.
    The reader waits for nothing but items: no wake-up when the hold is
    written, the upstream request starts in the same step.
    """

    _HOLD, _UPSTREAM, _SETTLE, _DONE = "hold", "upstream", "settle", "done"

    def __init__(self, pipeline: ChatPipeline, prepared: _Prepared, admitted: Callable[[Admission], None]) -> None:
        """Starts the run's task; admitted(admission) is called in it once the hold is written."""
        self._pipeline = pipeline
        self._prepared = prepared
        self._admitted = admitted
        self._queue: Handoff[Any] = Handoff(QUEUE_DEPTH)
        self._batch: list[Chunk] | None = None  # a batch the reader has taken only the first chunks of
        self._index = 0  # the next chunk of _batch
        self._phase = self._HOLD
        self._abandoned = False
        self._finished = False  # the reader took the end (or the failure)
        self._drain: UpstreamDrain | None = None  # set once the reader left during the upstream read
        # Set once the hold is written, before anything is queued: the first item read finds it set.
        self.admission: Admission | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    # --- the reader's side ---

    def poll(self) -> Chunk | object | None:
        """The next chunk if one is queued, EMPTY if the reader must wait (next()), None at the end."""
        batch = self._batch
        if batch is not None:  # the rest of a batch taken before
            index = self._index
            if index + 1 == len(batch):
                self._batch = None
            else:
                self._index = index + 1
            return batch[index]
        if self._finished:
            return None
        item = self._queue.poll()
        if item is EMPTY:
            return EMPTY
        return self._taken(item)

    async def next(self) -> Chunk | None:
        """The next chunk, waiting for it; None at the end; raises the stream's failure."""
        item = self.poll()
        if item is EMPTY:
            return await self.wait()
        return item  # type: ignore[return-value]

    async def wait(self) -> Chunk | None:
        """next() for a reader whose poll() has just given EMPTY: waits without polling again."""
        return self._taken(await self._queue.get())

    def __aiter__(self) -> StreamRun:
        return self

    async def __anext__(self) -> Chunk:
        item = self.poll()
        if item is EMPTY:
            item = await self.wait()
        if item is None:
            raise StopAsyncIteration
        return item  # type: ignore[return-value]

    def _taken(self, item: Any) -> Chunk | None:
        kind = type(item)
        if kind is _Last:  # the last chunks (at least the final one), then the end: None once poll() has them all
            self._finished = True
            item = item.chunks
        elif kind is _Failed:
            self._finished = True
            raise item.error
        # The chunks of one upstream read (or the last ones): the first now, the rest by poll().
        if len(item) > 1:
            self._batch, self._index = item, 1
        return item[0]  # type: ignore[no-any-return]

    def close(self) -> None:
        """The reader is done: if the stream has not ended for it, the run finishes alone."""
        if self._finished or self._abandoned:
            return
        self._abandoned = True
        self._queue.clear()  # frees a run waiting for room, and nobody will read what is there
        self._batch = None
        pipeline = self._pipeline
        if self.task.done():
            return
        pipeline._background.adopt(self.task)
        if self._phase == self._HOLD:
            pipeline._drop_lease(self._prepared)
        elif self._phase == self._UPSTREAM:
            self._drain = UpstreamDrain(pipeline, self._cut_now)

    def _cut_now(self) -> bool:
        """Ends the upstream read (the drain is over): the task goes on to bill what it saw."""
        if self._phase == self._UPSTREAM and not self.task.done():
            self.task.cancel()
            return True
        return False

    # --- the task ---

    async def _run(self) -> None:
        pipeline, prepared = self._pipeline, self._prepared
        try:
            hold = await pipeline._ledger.hold(**prepared.hold_args)
        except BaseException as error:
            if self._abandoned:  # close() gave the limits back already; a refused hold has nothing to settle
                return
            pipeline._drop_lease(prepared)
            await self._queue.put(_Failed(error))  # the reader raises it before any chunk
            if not isinstance(error, Exception):
                raise
            return
        if self._abandoned:  # the reader left while the hold was written: settle it at zero
            self._phase = self._SETTLE
            await pipeline._settle_with_retries(hold, cancelled_before_upstream(prepared.hold_args))
            return
        admission = self.admission = prepared.admission(hold)
        self._admitted(admission)
        await self._stream(admission, hold)

    async def _stream(self, admission: Admission, hold: Hold) -> None:
        pipeline = self._pipeline
        meter = RequestMeter(admission)
        queue = self._queue
        self._phase = self._UPSTREAM
        held: list[Chunk] | None = None  # the last batch, when it leaves with the final chunk
        try:
            stream = await pipeline._attempts.open_stream(meter)
            # The route that answered, named on every chunk (an admission's provider no longer changes).
            provider = meter.admission.provider.name
            observe = meter.observe_batch
            try:
                batch = stream.first
                while batch is not None:  # the chunks of one upstream read, handed on together
                    observe(batch)
                    # The upstream stream has ended cleanly: its next read would give None at once (not made).
                    ended = stream.ended
                    if not self._abandoned:  # upstream usage is replaced by the billed usage: choices only
                        batch = [chunk for chunk in batch if chunk.choices]
                        for chunk in batch:
                            chunk.provider = provider
                        if batch and ended:
                            # Nothing more will come (a short answer arrives whole): the last chunks wait
                            # for the settlement and leave with the billed usage, one hand-off and one
                            # write to the client instead of two.
                            held = batch
                        elif batch:
                            for part in _parts(batch):
                                try:
                                    queue.put_nowait(part)  # the usual case: room in the queue, no coroutine
                                except asyncio.QueueFull:
                                    await queue.put(part)  # a slow reader: wait for room (backpressure)
                    batch = None if ended else await stream.next_batch()
            except BaseException as error:
                await stream.close(error)
                raise
            await stream.close(None)
        except BaseException as error:
            self._end_upstream()
            if self._abandoned:  # the drain ended (cut, or the upstream failed): bill what was seen
                await self._bill_abandoned(meter)
                if isinstance(error, Exception) or (self._drain is not None and self._drain.fired):
                    return
                raise
            status = UsageStatus.CANCELLED if isinstance(error, asyncio.CancelledError) else UsageStatus.UPSTREAM_ERROR
            await pipeline._settle_with_retries(hold, meter.outcome(status))
            if held and not self._abandoned:
                await queue.put(held)
            if not self._abandoned:
                await queue.put(_Failed(error))  # after the chunks before it
            if not isinstance(error, Exception):
                raise
            return
        self._end_upstream()
        if self._abandoned:  # drained to the end after the reader left
            await self._bill_abandoned(meter)
            return
        outcome = meter.outcome(UsageStatus.OK)
        try:
            settlement = await pipeline._settle_with_retries(hold, outcome)
        except Exception as error:  # every retry failed: the reader gets the error, not a wait until its deadline
            if self._abandoned:
                raise
            await queue.put(_Failed(error))  # the held chunks stay unsent: the answer was not billed
            return
        self._phase = self._DONE
        if not self._abandoned:
            final = _final_chunk(meter, outcome, settlement.charged_micros)
            last = _Last([*held, final] if held else [final])
            try:
                queue.put_nowait(last)  # the usual case: room in the queue, no coroutine
            except asyncio.QueueFull:
                await queue.put(last)  # a slow reader: wait for room (backpressure)

    def _end_upstream(self) -> None:
        """The upstream read is over: no cut may reach the settlement (UpstreamDrain.end_upstream)."""
        self._phase = self._SETTLE
        if self._drain is not None:
            self._drain.end_upstream(self.task)

    async def _bill_abandoned(self, meter: RequestMeter) -> None:
        if self._drain is not None:
            self._drain.release()
        await self._pipeline._settle_with_retries(meter.admission.hold, meter.outcome(UsageStatus.CANCELLED))


def _parts(batch: list[Chunk]) -> list[list[Chunk]]:
    """batch in queue items of at most BATCH_LIMIT chunks (nearly always the batch itself)."""
    if len(batch) <= BATCH_LIMIT:
        return [batch]
    return [batch[start:start + BATCH_LIMIT] for start in range(0, len(batch), BATCH_LIMIT)]


def _final_chunk(meter: RequestMeter, outcome: UsageOutcome, charged_micros: int) -> Chunk:
    """The stream's last chunk: no choices, the billed usage, the id and time of the upstream's chunks."""
    template, admission = meter.template, meter.admission
    chunk = chat_pb2.StreamChatCompletionResponse(
        id=template.id if template else "chatcmpl-" + admission.call.request_id,
        created=template.created if template else int(time.time()),
        model=admission.call.client_model,
        provider=admission.provider.name,
    )
    set_billed_usage(chunk.usage, outcome, charged_micros)  # in place: no Usage message built and copied in
    return chunk
