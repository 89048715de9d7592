"""An in-process unary call whose handler runs inside the awaiting task, not in a task of its own.

A task per call cost the facade's every request a task created, scheduled and
finished, and a hand-off of the answer from the handler's task to the caller's
(measured: about 25,000 instructions of the facade's ~390,000 per unary request,
bench/micro_facade_stream.py --callgrind). Here the handler's coroutine is
driven by the task that awaits the call: each of its steps runs in the
handler's own contextvars.Context, and what it waits on wakes that task directly.

What a server gives a handler is kept, as in_process_stream.InlineStreamCall
keeps it for streams:
- its own contextvars: every step runs in one fresh Context (Context.run around
  each send/throw), so nothing it sets leaks into the caller and nothing of
  the caller's leaks in; tasks it starts copy that Context;
- cancellation: cancel() cancels the awaiting task while it is inside the
  handler, so the handler sees CancelledError where it waits; the await then
  raises a plain CancelledError with the awaiting task uncancelled (its own
  cancellation by anyone else passes through untouched, and cancels the call);
- the deadline: an entry on the services' DeadlineTimer; its passing cancels
  the handler the same way, and the call fails with DEADLINE_EXCEEDED;
- errors: the handler's exceptions become the AioRpcError a grpc.aio server
  would report (in_process._call_error);
- deferred observation: opened for the handler, run after the caller has the
  answer, batched with other calls' (InProcessServices.run_after_answer);
- shutdown: InProcessServices.stop() waits for running calls (ended()), then cancels them.
What differs from a task per call: the handler starts when the call is first
awaited (every caller here awaits at once; a call cancelled before that never
runs its handler), and it runs in whichever task awaits it first; a second
awaiter waits for that one's outcome.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from gateway_core.observability import after_answer

if TYPE_CHECKING:
    from gateway_core.in_process import InProcessServices, _Context

ResponseT = TypeVar("ResponseT")

_NEW, _RUNNING, _DONE = 0, 1, 2


class InlineUnaryCall(Generic[ResponseT]):
    """grpc.aio.UnaryUnaryCall's client contract (await, cancel, metadata) for a handler run by its
    awaiting task; see the module docstring. One per call."""

    __slots__ = (
        "_services", "_handler", "_request", "_context", "_state", "_response", "_error", "_driver",
        "_cancelled_by_us", "_cancelled", "_expired", "_timed", "_ended",
    )

    def __init__(self, services: InProcessServices, handler: grpc.RpcMethodHandler | None, request: Any,
                 context: _Context, refused: grpc.aio.AioRpcError | None = None) -> None:
        self._services = services
        self._handler = handler
        self._request = request
        self._context = context
        self._state = _NEW
        self._response: Any = None
        # How the call failed: an AioRpcError, or CancelledError for a cancelled call.
        self._error: BaseException | None = None
        self._driver: asyncio.Task[Any] | None = None  # the task inside the handler right now
        self._cancelled_by_us = False  # we cancelled that task (cancel() or the deadline)
        self._cancelled = False
        self._expired = False
        self._timed = False  # the deadline is on the services' DeadlineTimer
        self._ended: asyncio.Future[None] | None = None  # for stop() and a second awaiter, made when asked
        if refused is not None:
            self._finish(refused)

    # --- awaiting ---------------------------------------------------------------------------

    def __await__(self) -> Generator[Any, Any, ResponseT]:
        if self._state == _RUNNING:  # awaited a second time while the first awaiter runs it
            yield from asyncio.shield(self.ended()).__await__()
        if self._state == _DONE:
            return self._result()
        if self._cancelled:  # cancelled before anyone awaited it: the handler never ran
            self._finish(asyncio.CancelledError())
            raise asyncio.CancelledError()
        return (yield from self._run())

    def _run(self) -> Generator[Any, Any, ResponseT]:
        """Runs the handler to its end in the awaiting task (see the module docstring)."""
        handler = self._handler
        if handler is None or handler.unary_unary is None:
            from gateway_core.in_process import _unimplemented  # noqa: PLC0415 - in_process imports us

            raise self._fail(_unimplemented())
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        services, context = self._services, self._context
        self._state, self._driver = _RUNNING, task
        services._inline.add(self)
        if context._deadline is not None:
            self._timed = True
            services.deadlines.add(self, context._deadline, self._expire)
        handler_context = contextvars.Context()  # as a server gives each RPC: nothing of the caller's leaks in
        run = handler_context.run
        # The handler's observation (log lines, metrics) waits until the caller has the answer.
        deferred, token = run(after_answer.open_for_call)
        answered, response = False, None
        try:
            coroutine = run(handler.unary_unary, self._request, context)
            try:
                value = run(coroutine.send, None)
                while True:
                    try:
                        sent = yield value
                    except GeneratorExit:
                        run(coroutine.close)
                        raise
                    except BaseException as error:  # noqa: BLE001 - thrown in by the task (a cancellation): passed on
                        value = run(coroutine.throw, error)
                    else:
                        value = run(coroutine.send, sent)
            except StopIteration as stop:
                response, answered = stop.value, True
        except asyncio.CancelledError:
            if self._cancelled_by_us and task.uncancel() <= cancelling:
                self._cancelled_by_us = False
                if self._expired and not self._cancelled:  # our deadline, and no cancel() besides
                    from gateway_core.in_process import _deadline_exceeded  # noqa: PLC0415

                    raise self._fail(_deadline_exceeded()) from None
                self._finish(asyncio.CancelledError())
                raise asyncio.CancelledError() from None  # the call's cancel(), not the task's: as in grpc.aio
            self._cancelled = context._cancelled = True  # the awaiting task was cancelled: so is the call
            self._finish(asyncio.CancelledError())
            raise
        except grpc.aio.AioRpcError as error:
            self._uncancel_ours(task)
            raise self._fail(error) from None
        except Exception as error:
            from gateway_core.in_process import _call_error  # noqa: PLC0415

            self._uncancel_ours(task)
            raise self._fail(_call_error(error, context, self._expired)) from None
        finally:
            self._driver = None
            run(after_answer.close_for_call, token)
            if deferred.close():
                services.run_after_answer(None, deferred)
            if self._state != _DONE:  # answered (finished below), or GeneratorExit or another BaseException
                self._response = response
                self._finish(None if answered else asyncio.CancelledError())
        self._uncancel_ours(task)  # the handler swallowed our cancellation and answered: as asyncio.timeout
        return response  # type: ignore[return-value]

    def _uncancel_ours(self, task: asyncio.Task[Any]) -> None:
        if self._cancelled_by_us:
            self._cancelled_by_us = False
            task.uncancel()

    def _result(self) -> ResponseT:
        if self._error is not None:
            raise self._error if isinstance(self._error, grpc.aio.AioRpcError) else asyncio.CancelledError()
        return self._response  # type: ignore[no-any-return]

    # --- grpc.aio's call API ----------------------------------------------------------------

    def initial_metadata_pairs(self) -> tuple[tuple[str, str | bytes], ...]:
        """The initial metadata the handler has sent so far, as (key, value) pairs, without waiting
        (complete once the response is in; see InlineStreamCall.initial_metadata_pairs)."""
        return self._context._initial

    def cancel(self) -> bool:
        if self._state == _DONE or self._cancelled:
            return False
        self._cancelled = self._context._cancelled = True
        self._stop_timer()
        if self._driver is not None:
            self._cancelled_by_us = True
            self._driver.cancel()
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._state == _DONE

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return self._context.initial()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return self._context.trailing()

    def ended(self) -> asyncio.Future[None]:
        """A future done once the call is over (for a server's graceful stop)."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self._state == _DONE:
                self._ended.set_result(None)
        return self._ended

    # --- ending -----------------------------------------------------------------------------

    def _expire(self) -> None:
        self._timed = False
        if self._state != _RUNNING:
            return
        self._expired = True
        if self._driver is not None and not self._cancelled_by_us:
            self._cancelled_by_us = True
            self._driver.cancel()

    def _fail(self, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        self._finish(error)
        return error

    def _finish(self, error: BaseException | None) -> None:
        """The call is over: answered (error None), failed or cancelled."""
        if self._state == _DONE:
            return
        self._state = _DONE
        self._error = error
        self._handler = self._request = None  # nothing of the request is kept past the call
        self._stop_timer()
        self._services._inline.discard(self)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def _stop_timer(self) -> None:
        if self._timed:
            self._timed = False
            self._services.deadlines.remove(self)
