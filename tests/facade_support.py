"""Test support for the HTTP facade: a scripted fake ChatService and real servers in a thread.

The fake core and every facade under test (served by a real uvicorn) share one
event loop in a background thread, so tests can use the official `openai` SDK's
sync and async clients, and raw httpx, exactly as users do.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import uvicorn
from fastapi import FastAPI
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway_core.errors import GatewayError
from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from gateway_core.pb.gateway.v1 import chat_pb2_grpc, types_pb2

T = TypeVar("T")


@dataclass(frozen=True)
class Pause:
    """A script step: the fake core stays silent for `seconds` (forever if None)."""

    seconds: float | None = None


Step = Message | GatewayError | Pause


@dataclass
class Recorded:
    """One call the fake core received."""

    method: str
    request: Message
    metadata: dict[str, str]


class FakeChatService(chat_pb2_grpc.ChatServiceServicer):
    """A ChatService answering from scripts the test sets, recording what it was sent.

    `unary` and `stream` are lists of steps: a message is sent, a GatewayError
    ends the call with the core's real rich status, a Pause waits. `cancelled`
    is set when a call is cancelled by its client (the facade).
    """

    def __init__(self) -> None:
        self.unary: list[Step] = []
        self.stream: list[Step] = []
        self.models: list[pb.Model] = []
        self.calls: list[Recorded] = []
        self.cancelled = threading.Event()
        self.reset()

    def reset(self) -> None:
        """Forgets scripts, calls and cancellation, between tests."""
        self.unary, self.stream, self.calls = [], [], []
        self.models = [
            pb.Model(id="fake-model", created=1700000000, owned_by="mock"),
            pb.Model(id="org/model-with/slashes", created=1700000001, owned_by="vllm"),
        ]
        self.cancelled.clear()

    def _record(self, method: str, request: Message, context: grpc.aio.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        self.calls.append(Recorded(method, request, metadata))

    async def _step(self, step: Step, context: grpc.aio.ServicerContext) -> Message | None:
        """Plays one step; returns the message to send, if it is one."""
        if isinstance(step, GatewayError):
            status = step.to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        if isinstance(step, Pause):
            await asyncio.sleep(3600 if step.seconds is None else step.seconds)
            return None
        return step

    async def CreateChatCompletion(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        self._record("CreateChatCompletion", request, context)
        try:
            for step in self.unary:
                message = await self._step(step, context)
                if message is not None:
                    return message
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("the unary script sent no response")

    async def StreamChatCompletion(
        self, request: Message, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Message]:
        self._record("StreamChatCompletion", request, context)
        try:
            for step in self.stream:
                message = await self._step(step, context)
                if message is not None:
                    yield message
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def ListModels(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        self._record("ListModels", request, context)
        return pb.ListModelsResponse(models=self.models)


class Harness:
    """A background event loop running the fake core and facades served by uvicorn."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="facade-harness", daemon=True)
        self._thread.start()
        self.core = FakeChatService()
        self.core.reset()
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._facades: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
        self.core_target = self.run(self._start_core())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Runs coro on the harness loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, app: FastAPI) -> str:
        """Serves app with uvicorn on a free port; returns its base URL."""
        return self.run(self._serve(app))

    def set_serving(self, serving: bool) -> None:
        """What the fake core's grpc.health.v1 says about itself."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.run(self.health.set("", status))

    def close(self) -> None:
        """Stops every facade, then the core, then the loop."""
        self.run(self._stop(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _start_core(self) -> str:
        self._server = grpc.aio.server()
        chat_pb2_grpc.add_ChatServiceServicer_to_server(self.core, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return f"127.0.0.1:{port}"

    async def _serve(self, app: FastAPI) -> str:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", ws="none")
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            if task.done():
                task.result()  # start-up failed: raise its error
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        self._facades.append((server, task))
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        for server, _ in self._facades:
            server.should_exit = True
        await asyncio.gather(*(task for _, task in self._facades))
        if self._server is not None:
            await self._server.stop(grace=None)


def closed_port_target() -> str:
    """A host:port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Polls predicate until true or timeout; returns its last value."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.01)
    return True


async def in_thread(fn: Callable[[], T]) -> T:
    """Runs a blocking check from an async test without blocking its loop."""
    return await asyncio.to_thread(fn)


# --- Script builders -------------------------------------------------------------

CHAT_ID = "chatcmpl-test123"
CREATED = 1741569952


def completion(
    content: str | None = "Hello!",
    *,
    tool_calls: list[pb.ToolCall] | None = None,
    finish_reason: int = types_pb2.FINISH_REASON_STOP,
    extra_json: str = "",
) -> pb.CreateChatCompletionResponse:
    """A whole completion as the core would send it."""
    message = pb.Message(role=types_pb2.ROLE_ASSISTANT, tool_calls=tool_calls or [], extra_json=extra_json)
    if content is not None:
        message.content = content
    return pb.CreateChatCompletionResponse(
        id=CHAT_ID,
        created=CREATED,
        model="fake-model",
        choices=[pb.Choice(index=0, message=message, finish_reason=finish_reason)],
        usage=usage(),
        system_fingerprint="fp_test",
        provider="mock",
    )


def usage() -> types_pb2.Usage:
    """Token counts with every detail non-zero, so dropped fields show."""
    return types_pb2.Usage(
        prompt_tokens=19,
        completion_tokens=10,
        total_tokens=29,
        cached_tokens=3,
        reasoning_tokens=2,
        cost_micros=123,
    )


def chunk(*deltas: pb.ChoiceDelta, with_usage: bool = False) -> pb.StreamChatCompletionResponse:
    """One stream message with the given choice deltas (none and usage for the final one)."""
    message = pb.StreamChatCompletionResponse(id=CHAT_ID, created=CREATED, model="fake-model", choices=deltas)
    if with_usage:
        message.usage.CopyFrom(usage())
    return message


def text_deltas(*pieces: str) -> list[pb.StreamChatCompletionResponse]:
    """A streamed text answer: role first, then the pieces, then stop and usage."""
    steps = [chunk(pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT, content="")))]
    steps += [chunk(pb.ChoiceDelta(index=0, delta=pb.Delta(content=p))) for p in pieces]
    steps.append(chunk(pb.ChoiceDelta(index=0, delta=pb.Delta(), finish_reason=types_pb2.FINISH_REASON_STOP)))
    steps.append(chunk(with_usage=True))
    return steps


def tool_call_deltas() -> list[pb.StreamChatCompletionResponse]:
    """Two parallel tool calls streamed as OpenAI does (protocols.md §2.3)."""

    def call(index: int, **kw: Any) -> pb.StreamChatCompletionResponse:
        return chunk(
            pb.ChoiceDelta(index=0, delta=pb.Delta(tool_calls=[pb.ToolCallDelta(index=index, **kw)]))
        )

    return [
        chunk(pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT))),
        call(
            0, id="call_abc", type="function", function=pb.FunctionCallDelta(name="get_weather", arguments="")
        ),
        call(0, function=pb.FunctionCallDelta(arguments='{"city":')),
        call(0, function=pb.FunctionCallDelta(arguments='"Paris"}')),
        call(
            1, id="call_def", type="function", function=pb.FunctionCallDelta(name="get_time", arguments="{}")
        ),
        chunk(pb.ChoiceDelta(index=0, delta=pb.Delta(), finish_reason=types_pb2.FINISH_REASON_TOOL_CALLS)),
        chunk(with_usage=True),
    ]


def sse_data(body: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order (comments and blank lines dropped)."""
    return [line[len("data: ") :] for line in body.split("\n") if line.startswith("data: ")]
