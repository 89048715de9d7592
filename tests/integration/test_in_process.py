"""The in-process channel behaves like a real grpc.aio channel, seen from the facade's side.

One scripted ChatService servicer is registered through InProcessServices on
a real grpc.aio server (port 0); every scenario runs once over the real
loopback channel and once over the in-process channel, and the outcomes the
facade would see (messages, status code, details, ErrorInfo, handler-side
cancellation and deadline) must be equal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gateway_core.errors import GatewayError, Reason, abort, error_info
from gateway_core.in_process import InProcessServices
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc
from tests.gateway_support import TRANSPORTS, running_gateway, settings_for


class ScriptedChat(chat_pb2_grpc.ChatServiceServicer):
    """Does what the request's model says; records what it saw of its context."""

    def __init__(self) -> None:
        self.seen_metadata: dict[str, str] = {}
        self.seen_time_remaining: float | None = None
        self.cancelled = asyncio.Event()

    async def CreateChatCompletion(self, request: chat_pb2.CreateChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> chat_pb2.CreateChatCompletionResponse:
        self.seen_metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.seen_time_remaining = context.time_remaining()
        if request.model == "refuse":
            await abort(context, GatewayError(Reason.INSUFFICIENT_BALANCE, "no money", retry_after_seconds=3))
        if request.model == "crash":
            raise RuntimeError("boom")
        if request.model == "limits":
            await context.send_initial_metadata((("x-ratelimit-limit-requests", "5"),))
        if request.model == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return chat_pb2.CreateChatCompletionResponse(id="cmpl-1", model=request.model)

    async def StreamChatCompletion(self, request: chat_pb2.StreamChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        for index in range(3):
            yield chat_pb2.StreamChatCompletionResponse(id=f"chunk-{index}", model=request.model)
        if request.model == "refuse-midway":
            await abort(context, GatewayError(Reason.UPSTREAM_ERROR, "upstream went away"))
        if request.model == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise


@contextlib.asynccontextmanager
async def chat_stub(transport: str) -> AsyncIterator[tuple[chat_pb2_grpc.ChatServiceStub, ScriptedChat]]:
    """A ChatService stub over the named transport, and the servicer behind it."""
    servicer = ScriptedChat()
    server = grpc.aio.server()
    services = InProcessServices(server)
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, services)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel: Any = (
        services.channel() if transport == "in_process" else grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    )
    try:
        yield chat_pb2_grpc.ChatServiceStub(channel), servicer
    finally:
        await channel.close()
        await server.stop(None)


def _failure(error: grpc.aio.AioRpcError) -> tuple[Any, ...]:
    info = error_info(error)
    return error.code(), error.details(), None if info is None else (info.reason, dict(info.metadata))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unary_answer_metadata_and_deadline_reach_the_handler(transport: str) -> None:
    async with chat_stub(transport) as (stub, servicer):
        reply = await stub.CreateChatCompletion(
            chat_pb2.CreateChatCompletionRequest(model="ok"),
            metadata=[("authorization", "Bearer sk-tg-x"), ("x-request-id", "req_1")], timeout=5,
        )
    assert (reply.id, reply.model) == ("cmpl-1", "ok")
    assert servicer.seen_metadata["authorization"] == "Bearer sk-tg-x"
    assert servicer.seen_metadata["x-request-id"] == "req_1"
    assert servicer.seen_time_remaining is not None and 4 < servicer.seen_time_remaining <= 5


async def test_unary_initial_metadata_pairs_are_what_both_transports_report() -> None:
    seen = {}
    for transport in TRANSPORTS:
        async with chat_stub(transport) as (stub, _):
            call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="limits"), timeout=5)
            await call
            seen[transport] = {k: v for k, v in await call.initial_metadata() if k.startswith("x-ratelimit")}
            if transport == "in_process":  # at once, as pairs, once the answer is in (not grpc.aio's API)
                assert call.initial_metadata_pairs() == (("x-ratelimit-limit-requests", "5"),)
    assert seen["in_process"] == seen["grpc"] == {"x-ratelimit-limit-requests": "5"}


async def _unary_failure(transport: str, model: str, timeout: float | None = None) -> tuple[Any, ...]:
    async with chat_stub(transport) as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model=model), timeout=timeout)
    return _failure(caught.value)


@pytest.mark.parametrize("model", ["refuse", "crash"])
async def test_unary_failures_are_the_same_rpc_errors(model: str) -> None:
    over_grpc = await _unary_failure("grpc", model)
    in_process = await _unary_failure("in_process", model)
    assert over_grpc[0] == in_process[0]
    if model == "refuse":  # the rich status the facade turns into 429 + Retry-After
        assert over_grpc == in_process
        assert in_process == (grpc.StatusCode.RESOURCE_EXHAUSTED, "no money",
                              ("INSUFFICIENT_BALANCE", {"retry_after_seconds": "3"}))
    else:
        assert in_process[0] == grpc.StatusCode.UNKNOWN and in_process[2] is None


async def test_unary_deadline_is_deadline_exceeded_both_ways() -> None:
    for transport in TRANSPORTS:
        code, _, info = await _unary_failure(transport, "hang", timeout=0.2)
        assert (code, info) == (grpc.StatusCode.DEADLINE_EXCEEDED, None), transport


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelling_a_unary_call_cancels_the_handler(transport: str) -> None:
    async with chat_stub(transport) as (stub, servicer):
        call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="hang"))
        waiting = asyncio.ensure_future(call)
        await asyncio.sleep(0.1)
        call.cancel()
        await asyncio.wait_for(servicer.cancelled.wait(), 5)
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def _stream(transport: str, model: str) -> tuple[list[str], tuple[Any, ...] | None]:
    async with chat_stub(transport) as (stub, _):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model=model), timeout=5)
        ids: list[str] = []
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                ids.append(message.id)
        except grpc.aio.AioRpcError as exc:
            return ids, _failure(exc)
        return ids, None


@pytest.mark.parametrize("model", ["ok", "refuse-midway"])
async def test_streams_deliver_the_same_messages_and_end(model: str) -> None:
    over_grpc = await _stream("grpc", model)
    in_process = await _stream("in_process", model)
    assert over_grpc == in_process
    assert in_process[0] == ["chunk-0", "chunk-1", "chunk-2"]
    if model == "ok":
        assert in_process[1] is None
    else:
        assert in_process[1] == (grpc.StatusCode.UNAVAILABLE, "upstream went away", ("UPSTREAM_ERROR", {}))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelling_a_stream_cancels_its_handler(transport: str) -> None:
    async with chat_stub(transport) as (stub, servicer):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="hang"))
        for _ in range(3):
            await call.read()
        pending = asyncio.ensure_future(call.read())
        await asyncio.sleep(0.1)
        call.cancel()
        await asyncio.wait_for(servicer.cancelled.wait(), 5)
        with pytest.raises(asyncio.CancelledError):
            await pending


async def test_a_stream_deadline_ends_it_with_deadline_exceeded_both_ways() -> None:
    for transport in TRANSPORTS:
        async with chat_stub(transport) as (stub, servicer):
            call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="hang"), timeout=0.3)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                while await call.read() is not grpc.aio.EOF:
                    pass
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, transport
            await asyncio.wait_for(servicer.cancelled.wait(), 5)


@pytest.mark.parametrize("model", ["ok", "refuse-midway"])
async def test_read_nowait_takes_only_what_is_already_produced_and_ends_as_read_does(model: str) -> None:
    async with chat_stub("in_process") as (stub, _):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model=model))
        assert call.read_nowait() is None  # the handler has not run yet: nothing is waited for
        first = await call.read()
        taken, end = [first.id], None
        while end is None:  # nothing awaited in this loop: the handler ran ahead before it
            try:
                message = call.read_nowait()
            except grpc.aio.AioRpcError as error:
                end = error.code()
                break
            if message is None:
                await asyncio.sleep(0.01)
            elif message is grpc.aio.EOF:
                end = "EOF"
            else:
                taken.append(message.id)
        assert taken == ["chunk-0", "chunk-1", "chunk-2"]
        assert end == ("EOF" if model == "ok" else grpc.StatusCode.UNAVAILABLE)
        if model == "ok":
            assert call.read_nowait() is grpc.aio.EOF  # and stays at the end


async def test_read_nowait_after_cancel_raises_cancelled() -> None:
    async with chat_stub("in_process") as (stub, _):
        call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="hang"))
        await call.read()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            call.read_nowait()


async def test_an_unknown_method_is_unimplemented() -> None:
    services = InProcessServices()
    stub = chat_pb2_grpc.ChatServiceStub(services.channel())  # nothing registered
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListModels(chat_pb2.ListModelsRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED



@pytest.mark.parametrize("transport", TRANSPORTS)
def test_readiness_and_models_over_either_transport(tmp_path: Path, transport: str) -> None:
    """/readyz (grpc.health.v1 Check) and /v1/models (ChatService.ListModels) through a whole gateway."""
    with running_gateway(settings_for(tmp_path), in_process=transport == "in_process") as gateway:
        assert httpx.get(f"{gateway.http_url}/readyz").json() == {"status": "ok"}
        secret = gateway.create_key()[2]
        models = httpx.get(f"{gateway.http_url}/v1/models", headers={"authorization": f"Bearer {secret}"})
        assert sorted(m["id"] for m in models.json()["data"]) == ["mock-chat", "mock-echo"]
        refused = httpx.get(f"{gateway.http_url}/v1/models", headers={"authorization": "Bearer sk-tg-wrong"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
