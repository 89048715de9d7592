"""In-process stream calls whose async-generator handler runs inside the reader's own task.

A real servicer registered through InProcessServices (on a real grpc.aio
server, as `tollgate serve` does); the facade-side contract is in
test_in_process.py (same messages, errors, cancellation and deadline as over
gRPC). These tests pin what running the handler in the reader's task must
keep: the handler's own contextvars, its cleanup running at once when the call
is cancelled or its deadline passes while nobody reads, the reader's task not
left cancelled, and a graceful stop waiting for (then cancelling) such calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from gateway_core.in_process import InProcessServices
from gateway_core.in_process_stream import InlineStreamCall
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc

seen_by: contextvars.ContextVar[str] = contextvars.ContextVar("seen_by", default="nobody")


class SteppedChat(chat_pb2_grpc.ChatServiceServicer):
    """Streams three chunks; "gated" waits for `gate` before the last, "hang" hangs after them."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.cleanup: list[str] = []  # what ended each stream: "done", "cancelled", "closed"
        self.handler_tasks: list[asyncio.Task[Any] | None] = []
        self.handler_saw: list[str] = []

    async def StreamChatCompletion(self, request: chat_pb2.StreamChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        self.handler_tasks.append(asyncio.current_task())
        self.handler_saw.append(seen_by.get())
        seen_by.set("handler")
        await context.send_initial_metadata((("x-first", "before the first message"),))
        try:
            yield chat_pb2.StreamChatCompletionResponse(id="chunk-0")
            yield chat_pb2.StreamChatCompletionResponse(id="chunk-1")
            if request.model == "gated":
                await self.gate.wait()
            yield chat_pb2.StreamChatCompletionResponse(id="chunk-2")
            if request.model == "hang":
                await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cleanup.append("cancelled")
            raise
        except GeneratorExit:
            self.cleanup.append("closed")
            raise
        self.cleanup.append("done")


@contextlib.asynccontextmanager
async def stepped() -> AsyncIterator[tuple[chat_pb2_grpc.ChatServiceStub, SteppedChat, InProcessServices]]:
    servicer = SteppedChat()
    server = grpc.aio.server()
    services = InProcessServices(server)
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, services)
    await server.start()
    try:
        yield chat_pb2_grpc.ChatServiceStub(services.channel()), servicer, services
    finally:
        await server.stop(None)


async def _until(condition: Any, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


async def test_the_handler_runs_in_the_readers_task_with_contextvars_of_its_own() -> None:
    async with stepped() as (stub, servicer, _):
        seen_by.set("reader")
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="ok"))
        assert isinstance(call, InlineStreamCall)
        ids = [message.id async for message in call]
        assert ids == ["chunk-0", "chunk-1", "chunk-2"]
        assert servicer.handler_tasks == [asyncio.current_task()]  # no task of its own
        assert servicer.handler_saw == ["nobody"]  # the reader's variables did not leak in
        assert seen_by.get() == "reader"  # nor the handler's out
        assert servicer.cleanup == ["done"]
        assert dict(await call.initial_metadata()) == {"x-first": "before the first message"}
        assert call.initial_metadata_pairs() == (("x-first", "before the first message"),)  # the same, at once
        assert call.done()


async def test_a_message_that_comes_later_wakes_the_reader_and_read_nowait_never_waits() -> None:
    async with stepped() as (stub, servicer, _):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="gated"))
        assert (await call.read()).id == "chunk-0"
        assert call.read_nowait().id == "chunk-1"
        assert call.read_nowait() is None  # the handler waits for the gate: that step is kept
        assert call.read_nowait() is None  # and not started twice
        asyncio.get_running_loop().call_later(0.05, servicer.gate.set)
        assert (await call.read()).id == "chunk-2"  # the kept step, resumed by read()
        assert await call.read() is grpc.aio.EOF
        assert call.read_nowait() is grpc.aio.EOF
        assert servicer.cleanup == ["done"]


@pytest.mark.parametrize("stopped_in", ["yield", "read_nowait step"])
async def test_cancel_while_nobody_reads_runs_the_handlers_cleanup_at_once(stopped_in: str) -> None:
    async with stepped() as (stub, servicer, services):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="gated"))
        await call.read()
        if stopped_in == "read_nowait step":
            call.read_nowait()
            assert call.read_nowait() is None  # the handler now waits on the gate, inside a kept step
        assert call.cancel()
        assert not call.cancel()  # once
        await _until(lambda: servicer.cleanup == ["cancelled"])
        assert call.done() and call.cancelled()
        assert not services._inline  # nothing left for a shutdown to wait for
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        with pytest.raises(asyncio.CancelledError):
            call.read_nowait()


async def test_cancel_during_a_read_cancels_the_handler_and_leaves_the_reader_uncancelled() -> None:
    async with stepped() as (stub, servicer, _):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="hang"))
        for _ in range(3):
            await call.read()

        async def reader() -> int:
            with pytest.raises(asyncio.CancelledError):
                await call.read()
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()  # the call was cancelled, not this task

        reading = asyncio.ensure_future(reader())
        await asyncio.sleep(0.05)
        call.cancel()
        assert await reading == 0
        assert servicer.cleanup == ["cancelled"]


async def test_a_cancelled_reader_cancels_the_call() -> None:
    async with stepped() as (stub, servicer, _):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="hang"))
        for _ in range(3):
            await call.read()
        reading = asyncio.ensure_future(call.read())
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert servicer.cleanup == ["cancelled"]
        assert call.cancelled() and call.done()


async def test_a_deadline_passing_while_nobody_reads_cancels_the_handler_then_reads_fail() -> None:
    async with stepped() as (stub, servicer, _):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="gated"), timeout=0.1)
        await call.read()
        await _until(lambda: servicer.cleanup == ["cancelled"])  # while the reader is elsewhere
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0


async def test_a_deadline_passing_during_a_read_is_deadline_exceeded_and_the_reader_is_not_cancelled() -> None:
    async with stepped() as (stub, servicer, _):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="hang"), timeout=0.2)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert servicer.cleanup == ["cancelled"]
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0


@pytest.mark.parametrize("ending", ["read to the end", "cancelled"])
async def test_a_calls_deadline_is_an_entry_on_the_services_one_timer_until_the_call_ends(ending: str) -> None:
    async with stepped() as (stub, servicer, services):
        before = asyncio.get_running_loop().time()
        calls = [stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="gated"), timeout=60)
                 for _ in range(3)]
        assert len(services.deadlines) == 3  # one timer for all of them, no timer handle per call
        assert services.deadlines._armed_at >= before + 60  # armed for the earliest deadline
        call = calls[0]
        assert (await call.read()).id == "chunk-0"
        if ending == "read to the end":
            servicer.gate.set()
            assert [message.id async for message in call] == ["chunk-1", "chunk-2"]
        else:
            call.cancel()
        assert len(services.deadlines) == 2  # this call's entry is gone, the others' stay
        for other in calls[1:]:
            other.cancel()
        assert len(services.deadlines) == 0
    async with stepped() as (stub, _, services):  # a call without a timeout adds nothing
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="ok"))
        assert isinstance(call, InlineStreamCall) and len(services.deadlines) == 0
        assert [message.id async for message in call] == ["chunk-0", "chunk-1", "chunk-2"]


async def test_stop_waits_for_an_inline_stream_within_its_grace_then_cancels_it() -> None:
    async with stepped() as (stub, servicer, services):
        finishing = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="gated"))
        hanging = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="hang"))
        await finishing.read()
        for _ in range(3):
            await hanging.read()

        async def read_all(call: Any) -> list[str]:
            return [message.id async for message in call]

        finishing_rest = asyncio.ensure_future(read_all(finishing))
        stopping = asyncio.ensure_future(services.stop(0.3))
        await asyncio.sleep(0.1)
        assert not stopping.done()  # both still run within the grace
        servicer.gate.set()  # one finishes by itself
        assert await finishing_rest == ["chunk-1", "chunk-2"]
        await asyncio.wait_for(stopping, 5)  # the other was cancelled at the end of the grace
        assert sorted(servicer.cleanup) == ["cancelled", "done"]
        assert hanging.cancelled() and hanging.done()
        # A stopping server refuses new calls.
        refused = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="ok"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
