"""An in-process unary call runs its handler's first step when the call is made (start_eagerly).

The handler gets as far as it can before the caller holds the call object (a
unary request's hold is on its way to the writer before the facade awaits);
everything after its first wait runs in the call's own task, as before: the
answer, errors, deadlines, cancellation and deferred observation (after the
answer, also for a call that ended in its first step) are those of a call
whose handler started on the loop's next pass.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway_core import in_process
from gateway_core.in_process import InProcessServices
from gateway_core.observability.after_answer import after_answer
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc


class _Scripted(chat_pb2_grpc.ChatServiceServicer):
    """Records each step; model "now" answers without waiting, "fail" raises without waiting,
    anything else waits `delay` first. Each call defers work recording its model."""

    def __init__(self, delay: float = 0.0) -> None:
        self.steps: list[str] = []
        self.ran: list[str] = []
        self.delay = delay

    async def CreateChatCompletion(self, request: chat_pb2.CreateChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> chat_pb2.CreateChatCompletionResponse:
        self.steps.append(f"begin {request.model}")
        after_answer(self.ran.append, request.model)
        if request.model == "fail":
            raise RuntimeError("handler broke")
        if request.model != "now":
            await asyncio.sleep(self.delay)
            self.steps.append(f"resumed {request.model} in {'the call task' if _in_call_task() else 'another'}")
        return chat_pb2.CreateChatCompletionResponse(id="cmpl-eager", model=request.model)


CALL_TASKS: set[asyncio.Future[object]] = set()


def _in_call_task() -> bool:
    return asyncio.current_task() in CALL_TASKS


def _stub(servicer: _Scripted) -> tuple[chat_pb2_grpc.ChatServiceStub, InProcessServices]:
    services = InProcessServices()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, services)
    return chat_pb2_grpc.ChatServiceStub(services.channel()), services


async def test_the_handler_begins_before_the_call_is_returned_and_goes_on_in_the_calls_task() -> None:
    servicer = _Scripted()
    stub, _ = _stub(servicer)
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="m"))
    assert servicer.steps == ["begin m"]  # no loop pass in between
    CALL_TASKS.add(call._task)  # type: ignore[attr-defined]
    try:
        assert (await call).model == "m"
    finally:
        CALL_TASKS.clear()
    assert servicer.steps == ["begin m", "resumed m in the call task"]


async def test_a_handler_that_answers_without_waiting_gives_a_done_call() -> None:
    servicer = _Scripted()
    stub, _ = _stub(servicer)
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="now"))
    assert call.done() and not call.cancelled()
    assert (await call).id == "cmpl-eager"


async def test_a_handler_that_fails_without_waiting_reports_as_grpc_does() -> None:
    servicer = _Scripted()
    stub, _ = _stub(servicer)
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="fail"))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    assert "handler broke" in (failed.value.details() or "")


@pytest.mark.parametrize("model", ["now", "fail"])
async def test_a_call_ended_in_its_first_step_runs_a_full_batch_after_its_answer(
    monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    monkeypatch.setattr(in_process, "AFTER_ANSWER_BATCH_CALLS", 1)
    monkeypatch.setattr(in_process, "AFTER_ANSWER_BATCH_SECONDS", 30.0)  # only a full batch can run it here
    servicer = _Scripted()
    stub, _ = _stub(servicer)
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model=model))
    try:
        await call
    except grpc.aio.AioRpcError:
        pass
    assert servicer.ran == []  # the caller has its answer (or error) before the batch runs
    await asyncio.sleep(0)
    assert servicer.ran == [model]


async def test_a_call_ended_in_its_first_step_defers_to_the_timed_batch() -> None:
    servicer = _Scripted()
    stub, services = _stub(servicer)
    assert (await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="now"))).model == "now"
    await asyncio.sleep(0)
    assert servicer.ran == []  # waiting for its batch
    await asyncio.sleep(in_process.AFTER_ANSWER_BATCH_SECONDS + 0.05)
    assert servicer.ran == ["now"]
    await services.stop(grace_seconds=1)
    assert servicer.ran == ["now"]


async def test_a_call_cancelled_as_soon_as_made_cancels_its_handler_where_it_waits() -> None:
    servicer = _Scripted(delay=30)
    stub, _ = _stub(servicer)
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="cut"))
    assert servicer.steps == ["begin cut"]
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert call.cancelled() and servicer.steps == ["begin cut"]


async def test_the_deadline_of_a_call_started_eagerly_still_ends_it() -> None:
    servicer = _Scripted(delay=30)
    stub, _ = _stub(servicer)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="slow"), timeout=0.05)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_stopping_registry_refuses_a_new_call_without_running_its_handler() -> None:
    servicer = _Scripted()
    stub, services = _stub(servicer)
    await services.stop(grace_seconds=1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="late"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.steps == []
