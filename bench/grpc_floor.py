"""The floor of the gRPC hop itself: grpc.aio with no gateway logic, across two processes.

A child process serves the Chat service with a servicer that does nothing but
answer (one canned response, or N canned stream chunks); this process calls it.
It prints the CPU of both processes per call (from /proc and getrusage), so the
split topology's numbers in bench/RESULTS.md can be read against what grpc.aio
costs on this machine before Tollgate does any work.

    .venv/bin/python bench/grpc_floor.py                 # unary and 16-chunk streams, c=1 and c=16
    .venv/bin/python bench/grpc_floor.py --chunks 1 16 256 --calls 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc  # noqa: E402


class _CannedChat(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, chunks: int) -> None:
        self._chunks = chunks
        self._response = chat_pb2.CreateChatCompletionResponse(id="chatcmpl-floor", model="m")
        self._response.choices.add().message.content = "Hello there, how can I help?"
        self._chunk = chat_pb2.StreamChatCompletionResponse(id="chatcmpl-floor", model="m")
        self._chunk.choices.add().delta.content = "Hello "

    async def CreateChatCompletion(self, request: object, context: object) -> chat_pb2.CreateChatCompletionResponse:
        return self._response

    async def StreamChatCompletion(self, request: object, context: object) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        for _ in range(self._chunks):
            yield self._chunk


async def _serve(port: int, chunks: int) -> None:
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(_CannedChat(chunks), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def _drive(port: int, stream: bool, calls: int, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        unary_request = chat_pb2.CreateChatCompletionRequest(model="m")
        stream_request = chat_pb2.StreamChatCompletionRequest(model="m")

        async def one() -> None:
            if stream:
                async for _ in stub.StreamChatCompletion(stream_request):
                    pass
            else:
                await stub.CreateChatCompletion(unary_request)

        left = calls

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        await asyncio.gather(*[worker() for _ in range(concurrency)])


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(chunks: int, concurrency: int, calls: int) -> str:
    """One row: CPU per call of server and client; chunks=0 means a unary call."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--chunks", str(max(chunks, 1))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        uvloop.run(_drive(port, chunks > 0, 50, 1))  # warm-up: connection, first calls
        server_before, client_before, wall = _process_cpu(server.pid), _own_cpu(), time.perf_counter()
        uvloop.run(_drive(port, chunks > 0, calls, concurrency))
        wall = time.perf_counter() - wall
        server_cpu = (_process_cpu(server.pid) - server_before) / calls * 1e3
        client_cpu = (_own_cpu() - client_before) / calls * 1e3
    finally:
        server.kill()
        server.wait()
    kind = "unary" if chunks == 0 else f"stream x{chunks}"
    return (
        f"{kind:<12} c={concurrency:<3} server {server_cpu:5.2f} + client {client_cpu:5.2f} = "
        f"{server_cpu + client_cpu:5.2f} ms CPU per call, {calls / wall:6.0f} calls/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, nargs="*", default=[0, 16], help="0 = unary")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve(args.serve, args.chunks[0]))
        return
    for chunks in args.chunks:
        for concurrency in args.concurrency:
            print(measure(chunks, concurrency, args.calls), flush=True)


if __name__ == "__main__":
    main()
