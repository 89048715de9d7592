"""The call gate on a real grpc.aio server: new calls refused (UNAVAILABLE) while running ones finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway_core.call_gate import SHUTTING_DOWN, CallGate, GatedServer
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc


class _SlowChat(chat_pb2_grpc.ChatServiceServicer):
    """Streams until released; answers unary calls at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.closed = 0

    async def CreateChatCompletion(self, request: chat_pb2.CreateChatCompletionRequest, context: object) -> chat_pb2.CreateChatCompletionResponse:
        return chat_pb2.CreateChatCompletionResponse(id="ok")

    async def StreamChatCompletion(self, request: chat_pb2.StreamChatCompletionRequest, context: object) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        try:
            yield chat_pb2.StreamChatCompletionResponse(id="first")
            self.started.set()
            await self.release.wait()
            yield chat_pb2.StreamChatCompletionResponse(id="last")
        finally:
            self.closed += 1


async def _serve(servicer: _SlowChat) -> tuple[grpc.aio.Server, CallGate, health.aio.HealthServicer, int]:
    server = grpc.aio.server()
    gate = CallGate()
    gated = GatedServer(server, gate)
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, gated)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, gated)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, gate, health_servicer, port


async def test_a_closed_gate_refuses_new_calls_and_waits_for_running_ones() -> None:
    servicer = _SlowChat()
    server, gate, health_servicer, port = await _serve(servicer)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            chat = chat_pb2_grpc.ChatServiceStub(channel)
            assert (await chat.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest())).id == "ok"
            assert gate.running == 0, "a finished unary call is no longer counted"
            stream = chat.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest())
            assert (await stream.read()).id == "first"
            assert gate.running == 1
            await health_servicer.enter_graceful_shutdown()
            gate.close()
            idle = asyncio.ensure_future(gate.wait_idle())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await chat.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest())
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and refused.value.details() == SHUTTING_DOWN
            with pytest.raises(grpc.aio.AioRpcError) as refused_stream:
                await chat.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest()).read()
            assert refused_stream.value.code() == grpc.StatusCode.UNAVAILABLE
            checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING, "health is not gated"
            await asyncio.sleep(0.05)
            assert not idle.done() and gate.running == 1, "refused calls are not counted; the stream still runs"
            servicer.release.set()
            assert (await stream.read()).id == "last"
            assert await stream.read() is grpc.aio.EOF
            await asyncio.wait_for(idle, timeout=5)
            assert gate.running == 0 and servicer.closed == 1
    finally:
        await server.stop(0)


async def test_a_client_leaving_a_gated_stream_closes_the_servicer_at_once() -> None:
    servicer = _SlowChat()
    server, gate, _, port = await _serve(servicer)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = chat_pb2_grpc.ChatServiceStub(channel).StreamChatCompletion(chat_pb2.StreamChatCompletionRequest())
            assert (await stream.read()).id == "first"
            stream.cancel()
            await asyncio.wait_for(gate.wait_idle(), timeout=5)
            assert servicer.closed == 1 and gate.running == 0
    finally:
        await server.stop(0)
