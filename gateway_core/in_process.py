"""Calling the core's gRPC services from the same process, without a socket.

`tollgate serve` runs the facade next to the core; going through loopback
gRPC cost 15-25 % of each request's CPU (HTTP/2 framing, protobuf encoding
both ways, two event-loop hops). InProcessServices records the same method
handlers the grpc.aio server gets (the generated add_*_to_server functions
register on it), and InProcessChannel gives the generated stubs a channel that
runs those handlers directly: messages are passed as objects, never encoded.

The call objects keep the parts of grpc.aio's client contract the facade relies
on, so the facade has one code path for both transports:
- metadata in (context.invocation_metadata()), deadlines (timeout= becomes
  context.time_remaining() and DEADLINE_EXCEEDED when it passes);
- cancel() cancels the handler's task, as a cancelled RPC cancels it on a
  server; cancelling a pending read() cancels the call, as in grpc.aio;
- failures are real grpc.aio.AioRpcError objects with the code, details and
  trailing metadata (the rich status) the handler aborted with;
- the handler runs with its own contextvars, as on a server: a unary one in its
  own task; a stream's async-generator handler inside the reader's task, one
  step per read (in_process_stream.InlineStreamCall: no task hand-off per
  message); any other stream handler in its own task, running ahead of the
  reader by a bounded window (the analogue of HTTP/2 flow control).
Messages are not copied: the core never changes a message after handing it
over, and the facade never changes a request after sending it.

One thing a server cannot do: a unary call's observation (access and
upstream_attempt lines, their metrics; observability/after_answer.py) is
queued while its handler runs and written after the caller has the answer,
batched with other calls' (InProcessServices.run_after_answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from typing import Any, Generic, TypeVar

import grpc

from gateway_core.deadline_timer import DeadlineTimer
from gateway_core.handoff import EMPTY, Handoff
from gateway_core.observability import after_answer

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
MetadataPairs = Sequence[tuple[str, str | bytes]]

# How many messages a stream's handler may produce before the reader takes them.
STREAM_WINDOW_MESSAGES = 32
# How long a unary call's deferred observation may wait to run with other calls', and how many
# calls' make a batch run at once (see InProcessServices.run_after_answer).
AFTER_ANSWER_BATCH_SECONDS = 0.05
AFTER_ANSWER_BATCH_CALLS = 256
_END = object()
_CANCELLED = object()
_NO_METADATA = grpc.aio.Metadata()


class InProcessServices:
    """A registry of gRPC method handlers, mirroring them onto a real server.

    Pass it where the generated add_*_to_server functions expect a server: each
    registration goes to `server` (so external clients still reach the core over
    gRPC) and is also kept here for in-process calls.
    """

    def __init__(self, server: grpc.aio.Server | None = None) -> None:
        self._server = server
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        # Stream methods whose handler is an async generator function: run in the reader's task.
        self._inline_methods: set[str] = set()
        # Strong references: a call's task must not be collected while it runs.
        self._tasks: set[asyncio.Task[Any]] = set()
        # Stream calls whose handler runs in the reader's task (InlineStreamCall), until their handler ends.
        self._inline: set[Any] = set()
        # Deferred observation of unary calls that ended, waiting to run (see run_after_answer),
        # and the timer (or next-pass callback) that will run it.
        self._batch: list[after_answer.AfterAnswer] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        # The deadlines of running unary calls, on one timer.
        self.deadlines = DeadlineTimer()
        self._stopping = False

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        if self._server is not None:
            self._server.add_generic_rpc_handlers(tuple(handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        if self._server is not None:
            self._server.add_registered_method_handlers(service, handlers)
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = handler
            if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
                self._inline_methods.add(f"/{service}/{name}")

    def channel(self) -> InProcessChannel:
        """A channel for generated stubs whose calls run this registry's handlers."""
        return InProcessChannel(self)

    def handler(self, method: str) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(method)

    def runs_inline(self, method: str) -> bool:
        """Whether calls of this stream method run their handler in the reader's task (InlineStreamCall)."""
        return method in self._inline_methods

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if self._stopping:  # as a stopping grpc.aio server does: new calls are refused
            coroutine.close()
            coroutine = _refuse(_rpc_error(grpc.StatusCode.UNAVAILABLE, "the server is shutting down"))
        # A fresh context, as a server gives each RPC: nothing of the caller's leaks in.
        return self._kept(asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context()))

    def track(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Runs a call's own cleanup in a task that stop() waits for (never refused: the call exists)."""
        return self._kept(asyncio.get_running_loop().create_task(coroutine))

    def _kept(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """task, referenced until it ends (and waited for by stop())."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run_after_answer(self, task: asyncio.Task[Any], deferred: after_answer.AfterAnswer) -> None:
        """Runs a call's deferred observation after its caller has the answer, batched with other calls'.

        task is the call's own, still running. The batch runs AFTER_ANSWER_BATCH_SECONDS
        after its first call ended, or once AFTER_ANSWER_BATCH_CALLS have gathered as
        soon as the last of them is done: as a done callback added at the end of its
        handler it is called after the caller's wake-up (added when the caller began
        awaiting the call), so the answer is written first even then. Run one after
        another, the same lines and counts cost the loop much less than each run
        between two requests' work (measured: about 60-90 us less loop CPU per unary
        request at concurrency 1), and at concurrency 1 the next request no longer
        waits behind the previous one's bookkeeping.
        """
        batch = self._batch
        batch.append(deferred)
        if len(batch) >= AFTER_ANSWER_BATCH_CALLS:
            if self._batch_timer is not None:
                self._batch_timer.cancel()
                self._batch_timer = None
            self._batch = []
            task.add_done_callback(lambda _task: _run_all(batch))
        elif self._batch_timer is None:
            self._batch_timer = asyncio.get_running_loop().call_later(AFTER_ANSWER_BATCH_SECONDS, self._run_batch)

    def _run_batch(self) -> None:
        self._batch_timer = None
        batch, self._batch = self._batch, []
        _run_all(batch)

    async def stop(self, grace_seconds: float | None) -> None:
        """Like grpc.aio.Server.stop: refuses new calls, lets running ones finish for up to
        grace_seconds (None: no limit), then cancels the rest and waits for them to end."""
        self._stopping = True
        calls = set(self._inline)
        running: set[asyncio.Future[Any]] = set(self._tasks) | {call.ended() for call in calls}
        if not running:
            self.run_deferred()
            return
        _, pending = await asyncio.wait(running, timeout=grace_seconds)
        for call in calls:
            call.cancel()  # a no-op for those that ended
        for task in pending:
            if task in self._tasks:
                task.cancel()
        # Cancelled inline calls end once their reader (or their cleanup task) has run their handler's end.
        await asyncio.gather(*pending, *set(self._tasks), return_exceptions=True)
        self.run_deferred()

    def run_deferred(self) -> None:
        """Runs deferred observation still waiting for its batch (at stop: nothing is lost)."""
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        self._run_batch()


def _run_all(batch: list[after_answer.AfterAnswer]) -> None:
    for deferred in batch:
        deferred.run()


async def _refuse(error: grpc.aio.AioRpcError) -> Any:
    raise error


class InProcessChannel:
    """The part of grpc.aio.Channel the generated stubs use, backed by InProcessServices."""

    def __init__(self, services: InProcessServices) -> None:
        self._services = services

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool = False) -> _UnaryUnaryMethod:
        return _UnaryUnaryMethod(self._services, method)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> _UnaryStreamMethod:
        return _UnaryStreamMethod(self._services, method)

    async def close(self, grace: float | None = None) -> None:
        """Nothing to close: the services live as long as the core."""


class _Context:
    """What a servicer sees of its call: grpc.aio.ServicerContext's commonly used methods."""

    def __init__(self, metadata: MetadataPairs | None, timeout: float | None) -> None:
        self._metadata = tuple(metadata or ())
        loop = asyncio.get_running_loop()
        self._deadline = None if timeout is None else loop.time() + timeout
        self._code = grpc.StatusCode.OK
        self._details: str | None = None
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._initial: tuple[tuple[str, str | bytes], ...] = ()
        self._cancelled = False
        self.queue: Handoff[Any] | None = None  # set for streams, for write()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def deadline(self) -> float:
        """The loop time the call's deadline falls at (only for a call with a timeout)."""
        assert self._deadline is not None
        return self._deadline

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - asyncio.get_running_loop().time(), 0.0)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: MetadataPairs = ()) -> None:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs an error code, not OK")
        self._code, self._details = code, details
        self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: MetadataPairs) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    async def send_initial_metadata(self, initial_metadata: MetadataPairs) -> None:
        self._initial = tuple(initial_metadata)

    def peer(self) -> str:
        return "in-process"

    def cancelled(self) -> bool:
        return self._cancelled

    async def write(self, message: Any) -> None:
        if self.queue is None:
            raise RuntimeError("write() is only for server-streaming calls")
        await self.queue.put(message)

    def error(self) -> grpc.aio.AioRpcError:
        """The AioRpcError a client would see for the status this context ended with."""
        return _rpc_error(self._code, self._details, self._initial, self._trailing)

    def initial(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(*self._initial)

    def initial_pairs(self) -> tuple[tuple[str, str | bytes], ...]:
        """The initial metadata sent so far, as the handler gave it (no grpc.aio.Metadata built)."""
        return self._initial

    def trailing(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(*self._trailing)


def _rpc_error(code: grpc.StatusCode, details: str | None, initial: MetadataPairs = (),
               trailing: MetadataPairs = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(*initial), grpc.aio.Metadata(*trailing), details=details,
        debug_error_string="in-process call",
    )


def _deadline_exceeded() -> grpc.aio.AioRpcError:
    return _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def _unexpected(exc: BaseException) -> grpc.aio.AioRpcError:
    # The message grpc.aio's server gives a handler's uncaught exception.
    return _rpc_error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")


def _unimplemented() -> grpc.aio.AioRpcError:
    return _rpc_error(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


def _call_error(exc: Exception, context: _Context, deadline_expired: bool) -> grpc.aio.AioRpcError:
    """What a handler's exception reaches the caller as, the way grpc.aio's server reports it."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc
    if isinstance(exc, grpc.aio.AbortError):
        return context.error()
    if isinstance(exc, TimeoutError):
        return _deadline_exceeded() if deadline_expired else _unexpected(exc)
    if context.code() != grpc.StatusCode.OK:  # set_code() and raise, as generated stubs do
        return context.error()
    return _unexpected(exc)


class _UnaryUnaryMethod:
    def __init__(self, services: InProcessServices, method: str) -> None:
        self._services = services
        self._method = method

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: MetadataPairs | None = None,
                 **_unused: Any) -> UnaryUnaryCall[Any]:
        return UnaryUnaryCall(self._services, self._services.handler(self._method), request, metadata, timeout)


class UnaryUnaryCall(Generic[ResponseT]):
    """An in-process unary call: awaitable for the response, cancellable, like grpc.aio.UnaryUnaryCall."""

    def __init__(self, services: InProcessServices, handler: grpc.RpcMethodHandler | None, request: Any,
                 metadata: MetadataPairs | None, timeout: float | None) -> None:
        self._context = _Context(metadata, timeout)
        self._services = services
        self._task = services.spawn(self._run(handler, request, timeout))

    async def _run(self, handler: grpc.RpcMethodHandler | None, request: Any, timeout: float | None) -> ResponseT:
        if handler is None or handler.unary_unary is None:
            raise _unimplemented()
        # The deadline as asyncio.timeout would enforce it (cancel the handler's task when it passes,
        # report DEADLINE_EXCEEDED if that cancellation is what ended it), with no timer handle
        # (the services' DeadlineTimer) and no context-manager coroutines per call.
        deadlines = self._services.deadlines if timeout is not None else None
        expired = False
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        if deadlines is not None:
            def expire() -> None:
                nonlocal expired
                expired = True
                task.cancel()

            deadlines.add(task, self._context.deadline(), expire)
        # The handler's observation (log lines, metrics) waits until the caller has the answer.
        deferred, token = after_answer.open_for_call()
        try:
            response: ResponseT = await handler.unary_unary(request, self._context)
        except asyncio.CancelledError:
            # Our deadline, and no cancel() besides: the caller sees DEADLINE_EXCEEDED, as from grpc.aio.
            if expired and task.uncancel() <= cancelling:
                raise _deadline_exceeded() from None
            raise
        except grpc.aio.AioRpcError:
            raise
        except Exception as exc:
            if expired:
                task.uncancel()
            raise _call_error(exc, self._context, expired) from None
        finally:
            if deadlines is not None:
                deadlines.remove(task)
            after_answer.close_for_call(token)
            if deferred.close():
                self._services.run_after_answer(task, deferred)
        if expired:  # the handler swallowed the deadline's cancellation and answered: as asyncio.timeout
            task.uncancel()
        return response

    def __await__(self) -> Any:
        return self._task.__await__()

    def initial_metadata_pairs(self) -> tuple[tuple[str, str | bytes], ...]:
        """The initial metadata the handler has sent so far, as (key, value) pairs, without waiting
        (complete once the response is in; see InlineStreamCall.initial_metadata_pairs)."""
        return self._context.initial_pairs()

    def cancel(self) -> bool:
        self._context._cancelled = True
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        return self._task.done()

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return self._context.initial()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return self._context.trailing()


class _UnaryStreamMethod:
    def __init__(self, services: InProcessServices, method: str) -> None:
        self._services = services
        self._method = method

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: MetadataPairs | None = None,
                 **_unused: Any) -> UnaryStreamCall[Any] | InlineStreamCall[Any]:
        services = self._services
        if services.stopping:  # as a stopping grpc.aio server does: the call fails at its first read
            refused = _rpc_error(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            return InlineStreamCall(services, None, _Context(metadata, timeout), contextvars.Context(), refused)
        handler = services.handler(self._method)
        if handler is not None and services.runs_inline(self._method):
            return start_inline_stream(services, handler, request, _Context(metadata, timeout))
        return UnaryStreamCall(services, handler, request, metadata, timeout)


class UnaryStreamCall(Generic[ResponseT]):
    """An in-process server-streaming call: read() / async for, cancel(), like grpc.aio.UnaryStreamCall.

    The handler runs in its own task and stays at most STREAM_WINDOW_MESSAGES
    ahead of the reader; read() returns grpc.aio.EOF after the last message
    and raises the call's AioRpcError if it failed. read_nowait() (not in
    grpc.aio) takes a message only if it is already there.
    """

    def __init__(self, services: InProcessServices, handler: grpc.RpcMethodHandler | None, request: Any,
                 metadata: MetadataPairs | None, timeout: float | None) -> None:
        self._context = _Context(metadata, timeout)
        self._messages: Handoff[Any] = Handoff(STREAM_WINDOW_MESSAGES)
        self._context.queue = self._messages
        self._outcome: grpc.aio.AioRpcError | None = None
        self._finished = False
        self._cancelled = False
        self._task = services.spawn(self._run(handler, request, timeout))

    async def _run(self, handler: grpc.RpcMethodHandler | None, request: Any, timeout: float | None) -> None:
        deadline: asyncio.Timeout | None = None
        try:
            if handler is None or handler.unary_stream is None:
                raise _unimplemented()
            async with asyncio.timeout(timeout) as deadline:
                produced = handler.unary_stream(request, self._context)
                if isinstance(produced, AsyncIterator):
                    # aclosing: a cancelled call closes the handler's generator now, not at GC.
                    messages = self._messages
                    async with contextlib.aclosing(produced):
                        async for message in produced:
                            try:
                                messages.put_nowait(message)  # room in the window: no coroutine per message
                            except asyncio.QueueFull:
                                await messages.put(message)  # the reader is behind: wait, as flow control does
                else:  # a handler writing with context.write()
                    await produced
        except asyncio.CancelledError:
            self._outcome = _rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
            return  # cancelled by cancel(): nobody reads any more
        except Exception as exc:
            self._outcome = _call_error(exc, self._context, deadline is not None and deadline.expired())
        # The end marker may wait for queue space; a cancel() then ends this task.
        with contextlib.suppress(asyncio.CancelledError):
            await self._messages.put(_END)

    async def read(self) -> Any:
        """The next message, grpc.aio.EOF after the last one; raises the call's error if it failed."""
        if self._cancelled:
            raise asyncio.CancelledError()
        if self._finished:
            return self._end()
        message = self._messages.poll()  # already there: no coroutine, nothing to cancel
        if message is EMPTY:
            try:
                message = await self._messages.get()
            except asyncio.CancelledError:
                self.cancel()  # as in grpc.aio: cancelling a read cancels the call
                raise
        return self._taken(message)

    def read_nowait(self) -> Any:
        """The next message if the handler has already produced it, else None; never waits.

        Not part of grpc.aio's API: a reader that finds it (the facade) takes
        every message already produced in one go, so chunks that arrived
        together leave together (one socket write, not one per chunk). Returns
        grpc.aio.EOF after the last message and raises as read() does.
        """
        if self._cancelled:
            raise asyncio.CancelledError()
        if self._finished:
            return self._end()
        message = self._messages.poll()
        return None if message is EMPTY else self._taken(message)

    def _taken(self, message: Any) -> Any:
        """What a read returns for a message taken from the window (the end marker: EOF or the error)."""
        if message is _END:
            self._finished = True
            return self._end()
        if message is _CANCELLED:
            raise asyncio.CancelledError()
        return message

    def _end(self) -> Any:
        if self._outcome is not None:
            raise self._outcome
        return grpc.aio.EOF

    def __aiter__(self) -> AsyncIterator[ResponseT]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ResponseT]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    def cancel(self) -> bool:
        if self._task.done() and self._finished:
            return False
        self._cancelled = True
        self._context._cancelled = True
        # Wake a reader waiting for a message: in grpc.aio its read() raises CancelledError.
        self._messages.clear()
        self._messages.put_nowait(_CANCELLED)
        self._task.cancel()
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._task.done()

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return self._context.initial()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return self._context.trailing()


# Last: in_process_stream builds on this module's context and errors.
from gateway_core.in_process_stream import InlineStreamCall, start_inline_stream  # noqa: E402
