"""The in-process unary call's deadline, at its edges: what grpc.aio (asyncio.timeout) would do."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway_core.in_process import InProcessServices
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc


class EdgyChat(chat_pb2_grpc.ChatServiceServicer):
    """'swallow': ignores the deadline's cancellation and answers; 'own-timeout': raises its own TimeoutError;
    'hang': waits for the deadline; anything else answers at once, after awaiting a little."""

    def __init__(self) -> None:
        self.cancelling_after: int | None = None

    async def CreateChatCompletion(self, request: chat_pb2.CreateChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> chat_pb2.CreateChatCompletionResponse:
        if request.model == "swallow":
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                pass
            await asyncio.sleep(0)  # a task still counted as cancelled would be cancelled again here
            task = asyncio.current_task()
            assert task is not None
            self.cancelling_after = task.cancelling()
        elif request.model == "own-timeout":
            raise TimeoutError("a timeout of the handler's own")
        elif request.model == "hang":
            await asyncio.sleep(5)
        else:
            await asyncio.sleep(0.01)
        return chat_pb2.CreateChatCompletionResponse(id="cmpl-1", model=request.model)


@pytest.fixture
def chat() -> tuple[chat_pb2_grpc.ChatServiceStub, EdgyChat]:
    services = InProcessServices()
    servicer = EdgyChat()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, services)  # type: ignore[arg-type]
    return chat_pb2_grpc.ChatServiceStub(services.channel()), servicer


async def test_an_answer_within_the_deadline_is_the_answer(chat: tuple[chat_pb2_grpc.ChatServiceStub, EdgyChat]) -> None:
    stub, _ = chat
    reply = await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="quick"), timeout=2)
    assert reply.model == "quick"


async def test_a_passed_deadline_is_deadline_exceeded(chat: tuple[chat_pb2_grpc.ChatServiceStub, EdgyChat]) -> None:
    stub, _ = chat
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="hang"), timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_handler_that_swallows_the_deadline_answers_and_is_no_longer_cancelled(
    chat: tuple[chat_pb2_grpc.ChatServiceStub, EdgyChat],
) -> None:
    stub, servicer = chat
    reply = await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="swallow"), timeout=0.05)
    assert reply.model == "swallow"
    assert servicer.cancelling_after == 1  # as inside asyncio.timeout: the count drops only as it exits


async def test_the_handlers_own_timeout_error_is_no_deadline(chat: tuple[chat_pb2_grpc.ChatServiceStub, EdgyChat]) -> None:
    stub, _ = chat
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="own-timeout"), timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNKNOWN


async def test_cancelling_the_call_is_a_cancellation_even_past_the_deadline(
    chat: tuple[chat_pb2_grpc.ChatServiceStub, EdgyChat],
) -> None:
    stub, _ = chat
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="hang"), timeout=5)
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
