"""An in-process server-streaming call whose handler runs inside the reader's own task.

A task for the handler and a window between it and the reader cost a task
hand-off per message (the handler's task wakes the reader's), and a task plus
a deadline context per call. Here the handler (the servicer's async generator)
is advanced by the reader itself: read() awaits the generator's next message in
the reader's task, and read_nowait() runs it one step and takes the message if
the generator produced it without waiting. A message that arrives later wakes
the reader directly from whatever the handler waits on.

What a server would give the handler is kept:
- its own contextvars: every step of the generator runs in one Context of its
  own (contextvars.Context.run around each send/throw), so nothing it sets
  leaks into the reader and nothing of the reader's leaks in;
- cancellation: cancel() while the reader waits inside the handler cancels
  the reader's task, so the handler sees CancelledError where it waits (and
  read() raises a plain CancelledError, the reader's task uncancelled); while
  nobody reads, a short task throws CancelledError into the handler where it
  stopped, so its cleanup (settling, draining) runs at once, as a cancelled
  handler task's would;
- the deadline: an entry on the services' DeadlineTimer (one loop timer for
  every in-process call's deadline, not one per call); it passing cancels the
  handler the same way, and the call ends with DEADLINE_EXCEEDED;
- errors: the handler's exceptions become the AioRpcError a grpc.aio server
  would report (in_process._call_error);
- shutdown: InProcessServices.stop() waits for these calls like for handler
  tasks, then cancels them.
Like an in-process unary call, the handler's observation (the access line, the
upstream_attempt line, their metrics: observability/after_answer.py) is queued
while it runs and batched with other calls' once the handler is over
(InProcessServices.run_after_answer): the last message is the reader's before
any line is written. Work a stream's run queues after that (a settlement that
outlives the call) runs at once, as before.
What is not kept is the handler running ahead of a reader that is not reading:
the chat pipeline's StreamRun reads the upstream ahead by itself (a bounded queue).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from gateway_core.observability import after_answer

if TYPE_CHECKING:
    from gateway_core.in_process import InProcessServices, _Context

ResponseT = TypeVar("ResponseT")
_START = object()  # _Steps: the awaitable has not been started yet


class _Steps:
    """Awaits a coroutine-like object (a generator's __anext__/athrow awaitable), running each of its
    steps inside `context`. It may resume one that was started elsewhere (`yielded`: what its last
    step handed to the event loop) or begin by throwing `throw` into it."""

    __slots__ = ("_step", "_context", "_yielded", "_throw")

    def __init__(self, step: Coroutine[Any, Any, Any], context: contextvars.Context, yielded: Any = _START,
                 throw: BaseException | None = None) -> None:
        self._step = step
        self._context = context
        self._yielded = yielded
        self._throw = throw

    def __await__(self) -> Generator[Any, Any, Any]:
        step, run = self._step, self._context.run
        try:
            if self._throw is not None:
                value = run(step.throw, self._throw)
            elif self._yielded is _START:
                value = run(step.send, None)
            else:
                value = self._yielded  # handed to our task's loop now, as if just yielded
            while True:
                try:
                    sent = yield value
                except GeneratorExit:
                    step.close()
                    raise
                except BaseException as error:  # noqa: BLE001 - thrown in by the task (a cancellation): passed on
                    value = run(step.throw, error)
                else:
                    value = run(step.send, sent)
        except StopIteration as stop:
            return stop.value


class InlineStreamCall(Generic[ResponseT]):
    """grpc.aio.UnaryStreamCall's client contract (read, async for, cancel) plus read_nowait, for a
    handler that is an async generator, run by the reader. One per call; one reader task at a time."""

    def __init__(self, services: InProcessServices, messages: AsyncGenerator[Any, None] | None,
                 context: _Context, handler_context: contextvars.Context,
                 refused: grpc.aio.AioRpcError | None = None,
                 deferred: after_answer.AfterAnswer | None = None) -> None:
        self._services = services
        # The handler's deferred observation (current in handler_context), run once the handler is over.
        self._deferred = deferred
        self._context = context
        self._handler_context = handler_context
        self._messages = messages
        self._started = False
        # A step of the generator begun by read_nowait that had to wait: resumed by the next read().
        self._step: Coroutine[Any, Any, Any] | None = None
        self._yielded: Any = None
        self._reader: asyncio.Task[Any] | None = None  # the task inside the handler right now
        self._reader_cancelled = False  # we cancelled that task (cancel() or the deadline)
        self._closing: asyncio.Task[None] | None = None
        self._outcome: grpc.aio.AioRpcError | None = None
        self._finished = False
        self._cancelled = False
        self._expired = False
        self._ended: asyncio.Future[None] | None = None  # for InProcessServices.stop(), made when asked
        self._timed = False  # the deadline is on the services' DeadlineTimer (one timer for every call)
        if refused is not None or messages is None:
            self._finish(refused)
            return
        services._inline.add(self)
        if context._deadline is not None:
            self._timed = True
            services.deadlines.add(self, context._deadline, self._expire)

    # --- reading ---

    async def read(self) -> Any:
        """The next message, grpc.aio.EOF after the last one; raises the call's error if it failed."""
        if self._cancelled:
            raise asyncio.CancelledError()
        if self._finished:
            return self._end()
        if self._closing is not None:  # the deadline passed while nobody read: its cleanup first
            await asyncio.shield(self._closing)
            return self._end()
        assert self._messages is not None
        step, yielded = self._step, self._yielded
        if step is None:
            step, yielded = self._messages.__anext__(), _START
        else:
            self._step = self._yielded = None
        self._started = True
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._reader = task
        try:
            message = await _Steps(step, self._handler_context, yielded)
        except StopAsyncIteration:
            return self._finish(None)
        except asyncio.CancelledError:
            if self._reader_cancelled and task.uncancel() <= cancelling:
                self._reader_cancelled = False
                if self._expired and not self._cancelled:  # our deadline, and no cancel() besides
                    raise self._finish_error(_deadline_exceeded()) from None
                self._finish(_cancelled_error())
                raise asyncio.CancelledError() from None  # the call's cancel(), not the task's: as in grpc.aio
            self._cancelled = self._context._cancelled = True  # as in grpc.aio: cancelling a read cancels the call
            self._finish(_cancelled_error())
            raise
        except Exception as error:
            if self._reader_cancelled:  # the handler turned our cancellation into an error of its own
                self._reader_cancelled = False
                task.uncancel()
            raise self._finish_error(self._error_of(error)) from None
        finally:
            self._reader = None
        if self._reader_cancelled:  # the handler swallowed our cancellation and answered: it still ends here
            self._reader_cancelled = False
            task.uncancel()
            if self._expired and not self._cancelled:
                self._outcome = _deadline_exceeded()
            self._close_soon()
        return message

    def read_nowait(self) -> Any:
        """The next message if the handler produces it without waiting, else None; never waits.

        Not part of grpc.aio's API: a reader that finds it (the facade) takes
        every message already there in one go, so chunks that arrived together
        leave together (one socket write, not one per chunk). A step that has to
        wait is kept and resumed by the next read(). Returns grpc.aio.EOF after
        the last message and raises as read() does. Before the first read() it
        returns None: the handler starts with a read.
        """
        if self._cancelled:
            raise asyncio.CancelledError()
        if self._finished:
            return self._end()
        if not self._started or self._step is not None or self._closing is not None:
            return None
        assert self._messages is not None
        step = self._messages.__anext__()
        try:
            yielded = self._handler_context.run(step.send, None)
        except StopIteration as produced:
            return produced.value
        except StopAsyncIteration:
            return self._finish(None)
        except asyncio.CancelledError:  # the handler cancelled itself: a cancelled call
            raise self._finish_error(_cancelled_error()) from None
        except Exception as error:
            raise self._finish_error(self._error_of(error)) from None
        self._step, self._yielded = step, yielded
        return None

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    # --- ending ---

    def cancel(self) -> bool:
        if self._finished or self._cancelled:
            return False
        self._cancelled = self._context._cancelled = True
        self._stop_timer()
        self._stop_handler()
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._finished

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return self._context.initial()

    def initial_metadata_pairs(self) -> tuple[tuple[str, str | bytes], ...]:
        """The initial metadata the handler has sent so far, as (key, value) pairs, without waiting.

        Not part of grpc.aio's API: once the first message is read, the handler
        has sent its initial metadata (it goes before any message), and a reader
        that knows this (the facade) reads it here without a coroutine and a
        grpc.aio.Metadata per call.
        """
        return self._context.initial_pairs()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return self._context.trailing()

    def _expire(self) -> None:
        self._timed = False
        if self._finished:
            return
        self._expired = True
        if self._reader is None:
            self._outcome = _deadline_exceeded()
        self._stop_handler()

    def _stop_handler(self) -> None:
        """Throws CancelledError into the handler: where it waits in the reader's task, or (nobody reading) soon."""
        if self._reader is not None:
            self._reader_cancelled = True
            self._reader.cancel()
        else:
            self._close_soon()

    def _close_soon(self) -> None:
        """Ends a handler nobody is reading: CancelledError thrown in where it stopped, in a short task."""
        if self._closing is not None or self._finished:
            return
        if not self._started:  # it never ran: nothing to clean up
            assert self._messages is not None
            self._messages = None
            self._finish(self._outcome or _cancelled_error())
            return
        self._closing = self._services.track(self._close())

    async def _close(self) -> None:
        step, yielded = self._step, self._yielded
        self._step = self._yielded = None
        assert self._messages is not None
        context = self._handler_context
        try:
            if step is not None:  # stopped inside a step begun by read_nowait
                await _Steps(step, context, yielded, throw=asyncio.CancelledError())
            else:  # stopped at a yield
                await _Steps(self._messages.athrow(asyncio.CancelledError()), context)
            # It swallowed the cancellation and yielded again: close it for good.
            await _Steps(self._messages.aclose(), context)
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - ended (StopAsyncIteration), cancelled or
            pass  # failed: the call is over either way, and a failing cleanup is the handler's to log
        finally:
            self._finish(self._outcome or _cancelled_error())

    def _error_of(self, error: Exception) -> grpc.aio.AioRpcError:
        from gateway_core.in_process import _call_error  # noqa: PLC0415 - in_process imports this module

        return _call_error(error, self._context, self._expired)

    def _finish_error(self, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        self._finish(error)
        return error

    def _finish(self, outcome: grpc.aio.AioRpcError | None) -> Any:
        """The handler is over (ended, failed, or closed): the call's outcome is decided."""
        self._finished = True
        if self._outcome is None:
            self._outcome = outcome
        self._stop_timer()
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            self._run_deferred(deferred)
        self._services._inline.discard(self)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        return grpc.aio.EOF if outcome is None else None

    def _run_deferred(self, deferred: after_answer.AfterAnswer) -> None:
        """The handler is over: what it queued runs with the next batch (at once if nothing is queued)."""
        if not deferred.close():
            return
        task = asyncio.current_task()
        if task is None:  # ended from a timer (the deadline, before the handler ran): nothing waits on it
            deferred.run()
            return
        self._services.run_after_answer(task, deferred)

    def _end(self) -> Any:
        if self._outcome is not None:
            raise self._outcome
        return grpc.aio.EOF

    def _stop_timer(self) -> None:
        if self._timed:
            self._timed = False
            self._services.deadlines.remove(self)

    def ended(self) -> asyncio.Future[None]:
        """A future done once the handler is over (for a server's graceful stop)."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self._finished:
                self._ended.set_result(None)
        return self._ended


def _deadline_exceeded() -> grpc.aio.AioRpcError:
    from gateway_core.in_process import _deadline_exceeded as exceeded  # noqa: PLC0415 - in_process imports us

    return exceeded()


def _cancelled_error() -> grpc.aio.AioRpcError:
    from gateway_core.in_process import _rpc_error  # noqa: PLC0415 - in_process imports this module

    return _rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")


def start_inline_stream(services: InProcessServices, handler: grpc.RpcMethodHandler, request: Any,
                        context: _Context) -> InlineStreamCall[Any]:
    """The call of a handler that is an async generator function (the servicer's `yield` style)."""
    handler_context = contextvars.Context()  # as a server gives each RPC: nothing of the caller's leaks in
    # Its observation waits for the end of the call (tasks the handler starts inherit the collector).
    deferred, _ = handler_context.run(after_answer.open_for_call)
    messages = handler_context.run(handler.unary_stream, request, context)  # runs nothing of its body yet
    return InlineStreamCall(services, messages, context, handler_context, deferred=deferred)
