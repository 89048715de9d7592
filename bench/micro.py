"""Micro-benchmarks of the facade <-> core hop and the facade's SSE path, CPU per call.

    .venv/bin/python bench/micro.py

Measures process CPU time (all threads, so gRPC's own threads count), not
wall time, so it stays comparable on a busy machine:
- the same trivial ChatService servicer called over loopback gRPC and over the
  in-process channel (`tollgate serve`): unary, and a 16-message stream;
- the facade's SSE path (event_stream.stream_chat) per streamed chunk,
  against a core call whose every read really waits once on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gateway_core.in_process import InProcessServices
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc
from http_facade import event_stream


class _Chat(chat_pb2_grpc.ChatServiceServicer):
    async def CreateChatCompletion(self, request: Any, context: Any) -> chat_pb2.CreateChatCompletionResponse:
        return chat_pb2.CreateChatCompletionResponse(id="x", model=request.model)

    async def StreamChatCompletion(self, request: Any, context: Any) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        for _ in range(16):
            yield chat_pb2.StreamChatCompletionResponse(id="x", model=request.model)


async def hop() -> None:
    server = grpc.aio.server()
    services = InProcessServices(server)
    chat_pb2_grpc.add_ChatServiceServicer_to_server(_Chat(), services)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = chat_pb2.CreateChatCompletionRequest(model="m")
    request.messages.add(content="hello " * 200)
    stream_request = chat_pb2.StreamChatCompletionRequest.FromString(request.SerializeToString())
    metadata = [("authorization", "Bearer sk-tg-" + "x" * 40), ("x-request-id", "req_" + "0" * 32)]
    channels: list[tuple[str, Any]] = [
        ("loopback gRPC", grpc.aio.insecure_channel(f"127.0.0.1:{port}")),
        ("in-process", services.channel()),
    ]
    for name, channel in channels:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for _ in range(50):
            await stub.CreateChatCompletion(request, metadata=metadata, timeout=600)
        calls = 1000
        start = time.process_time()
        for _ in range(calls):
            await stub.CreateChatCompletion(request, metadata=metadata, timeout=600)
        unary = (time.process_time() - start) / calls
        streams = 300
        start = time.process_time()
        for _ in range(streams):
            call = stub.StreamChatCompletion(stream_request, metadata=metadata, timeout=600)
            while await call.read() is not grpc.aio.EOF:
                pass
        stream = (time.process_time() - start) / streams
        print(f"{name:>14}: unary {unary * 1e6:6.0f} us CPU/call; 16-message stream {stream * 1e6:6.0f} us CPU/call")
        await channel.close()
    await server.stop(None)


class _SilentCall:
    """A core stream of `count` copies of one chunk; each read waits once on the loop."""

    def __init__(self, chunk: chat_pb2.StreamChatCompletionResponse, count: int) -> None:
        self._chunk, self._left = chunk, count

    async def read(self) -> Any:
        if self._left == 0:
            return grpc.aio.EOF
        self._left -= 1
        await asyncio.sleep(0)
        return self._chunk

    def cancel(self) -> bool:
        return False


async def sse_path() -> None:
    chunk = chat_pb2.StreamChatCompletionResponse(id="c", model="m")
    chunk.choices.add(index=0).delta.content = "hello"

    async def send(message: Any) -> None:
        pass

    async def receive() -> Any:
        await asyncio.sleep(3600)

    async def one(count: int) -> None:
        call = _SilentCall(chunk, count)
        await event_stream.stream_chat(call, chunk, include_usage=False, heartbeat_seconds=15.0,  # type: ignore[arg-type]
                                       headers={}, receive=receive, send=send)

    await one(10)
    streams, chunks = 200, 256
    start = time.process_time()
    for _ in range(streams):
        await one(chunks)
    per_chunk = (time.process_time() - start) / (streams * chunks)
    print(f"facade SSE path: {per_chunk * 1e6:.1f} us CPU per streamed chunk")


if __name__ == "__main__":
    asyncio.run(hop())
    asyncio.run(sse_path())
