"""An in-process unary call runs its handler inside the awaiting task, yet as a server would run it.

The handler (a real servicer registered on a real grpc.aio server, called through
the in-process channel) sees no task of its own: it runs in the caller's task,
in a contextvars.Context of its own. What the tests pin: nothing of the caller's
context reaches the handler and nothing the handler sets leaks back; a task the
handler starts copies the handler's context; cancel() and the deadline reach the
handler where it waits and leave the caller's task uncancelled; the caller's own
cancellation passes through and cancels the call; a second awaiter gets the same
outcome; a call cancelled before it is awaited never runs its handler; a stopping
server waits for running calls.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from gateway_core.in_process import InProcessServices
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc

CALLERS = contextvars.ContextVar("callers", default="unset")


class Probe(chat_pb2_grpc.ChatServiceServicer):
    """Records the task, context and cancellations it sees; does what the request's model says."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.seen_caller_value: list[str] = []
        self.child_saw: list[str] = []
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.runs = 0

    async def CreateChatCompletion(self, request: chat_pb2.CreateChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> chat_pb2.CreateChatCompletionResponse:
        self.runs += 1
        self.tasks.append(asyncio.current_task())
        self.seen_caller_value.append(CALLERS.get())
        CALLERS.set("handler")  # must not leak into the caller
        child = asyncio.ensure_future(_read_var())
        self.child_saw.append(await child)
        self.started.set()
        if request.model in ("hang", "swallow"):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                if request.model == "hang":
                    raise
        return chat_pb2.CreateChatCompletionResponse(id="cmpl-1", model=request.model)


async def _read_var() -> str:
    return CALLERS.get()


@pytest.fixture
async def probe() -> AsyncIterator[tuple[chat_pb2_grpc.ChatServiceStub, Probe, InProcessServices]]:
    servicer = Probe()
    server = grpc.aio.server()
    services = InProcessServices(server)
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, services)
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield chat_pb2_grpc.ChatServiceStub(services.channel()), servicer, services
    finally:
        await server.stop(None)


async def test_the_handler_runs_in_the_awaiting_task_in_a_context_of_its_own(probe: Any) -> None:
    stub, servicer, _ = probe
    CALLERS.set("caller")
    response = await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="m"), timeout=5)
    assert response.model == "m"
    assert servicer.tasks == [asyncio.current_task()]  # no task of its own
    assert servicer.seen_caller_value == ["unset"]  # nothing of the caller's leaked in
    assert servicer.child_saw == ["handler"]  # a task it starts copies its context
    assert CALLERS.get() == "caller"  # nothing of the handler's leaked out


async def test_cancel_reaches_the_handler_and_leaves_the_callers_task_uncancelled(probe: Any) -> None:
    stub, servicer, _ = probe
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="hang"), timeout=5)
    asyncio.get_running_loop().call_later(0.05, call.cancel)
    with pytest.raises(asyncio.CancelledError):
        await call
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert servicer.cancelled.is_set()
    assert call.cancelled() and call.done()
    assert not call.cancel()  # already over
    with pytest.raises(asyncio.CancelledError):  # awaited again: the same outcome
        await call


async def test_the_deadline_is_deadline_exceeded_and_the_callers_task_stays_uncancelled(probe: Any) -> None:
    stub, servicer, _ = probe
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="hang"), timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert servicer.cancelled.is_set()


async def test_a_handler_that_swallows_the_deadline_answers_and_the_caller_is_not_cancelled(probe: Any) -> None:
    stub, _, _ = probe
    response = await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="swallow"), timeout=0.05)
    assert response.model == "swallow"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # and no stray cancellation is left to hit the caller later


async def test_cancelling_the_awaiting_task_cancels_the_call(probe: Any) -> None:
    stub, servicer, _ = probe
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="hang"), timeout=5)
    waiting = asyncio.ensure_future(call)
    await asyncio.wait_for(servicer.started.wait(), 5)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert servicer.cancelled.is_set()
    assert call.cancelled() and call.done()


async def test_a_second_awaiter_gets_the_first_ones_answer(probe: Any) -> None:
    stub, servicer, _ = probe
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="m"), timeout=5)
    first, second = await asyncio.gather(asyncio.ensure_future(call), asyncio.ensure_future(call))
    assert first is second and first.model == "m"
    assert servicer.runs == 1
    assert (await call) is first


async def test_a_call_cancelled_before_it_is_awaited_never_runs_its_handler(probe: Any) -> None:
    stub, servicer, _ = probe
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="m"), timeout=5)
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert servicer.runs == 0 and call.done()


async def test_stop_waits_for_a_running_call_then_cancels_it(probe: Any) -> None:
    stub, servicer, services = probe
    waiting = asyncio.ensure_future(stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="hang")))
    await asyncio.wait_for(servicer.started.wait(), 5)
    await services.stop(grace_seconds=0.05)
    assert servicer.cancelled.is_set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a stopped server refuses new calls
        await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="m"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
