"""An in-process streamed call writes its observation after its last message, batched like unary calls'.

The real core (SQLite file, mock provider) is read through its in-process
channel, as the facade reads it under `tollgate serve` (the handler runs in the
reader's task, InlineStreamCall): when the reader has the stream's end, the
access line and the upstream_attempt line are not written yet; once the batch
has run each is there exactly once, with what was billed. A reader that leaves
mid-stream still gets the stream settled and its line written once, and a
stopping core writes what was deferred before it is done.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from gateway_core import in_process
from gateway_core.in_process import AFTER_ANSWER_BATCH_SECONDS, InProcessServices
from gateway_core.observability.after_answer import after_answer
from gateway_core.pb.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc, types_pb2
from gateway_core.server import Core, start_core
from tests.gateway_support import ADMIN_TOKEN, settings_for

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


async def _key(core: Core) -> str:
    admin = admin_pb2_grpc.AdminServiceStub(core.local.channel())
    account = (await admin.CreateAccount(admin_pb2.CreateAccountRequest(display_name="later"), metadata=ADMIN)).account
    await admin.TopUpAccount(admin_pb2.TopUpAccountRequest(account_id=account.id, amount_micros=10_000_000,
                                                           request_id=f"seed-{account.id}"), metadata=ADMIN)
    created = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=account.id, display_name="later"),
                                       metadata=ADMIN)
    return created.secret


def _request(content: str = "Hello") -> chat_pb2.StreamChatCompletionRequest:
    request = chat_pb2.StreamChatCompletionRequest(model="mock-chat")
    request.messages.add(role=types_pb2.ROLE_USER, content=content)
    return request


def _access_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "tollgate.access" and r.getMessage() == "chat request" and r.request_id == request_id]


def _attempt_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tollgate.routing"
            and getattr(r, "upstream_attempt", {}).get("request_id") == request_id]


async def _batch_ran() -> None:
    await asyncio.sleep(AFTER_ANSWER_BATCH_SECONDS * 3)


async def test_the_lines_of_a_stream_follow_its_last_message_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    core = await start_core(settings_for(tmp_path), address="127.0.0.1:0")
    try:
        key = await _key(core)
        chat = chat_pb2_grpc.ChatServiceStub(core.local.channel())
        metadata = (("authorization", f"Bearer {key}"), ("x-request-id", "req-stream-later-1"))
        call = chat.StreamChatCompletion(_request(), metadata=metadata, timeout=10)
        chunks = []
        while (chunk := await call.read()) is not grpc.aio.EOF:
            chunks.append(chunk)
        usage = chunks[-1].usage
        assert usage.cost_micros > 0 and any(c.choices for c in chunks)
        # The reader has the end: nothing of the call's observation is written yet.
        assert _access_lines(caplog, "req-stream-later-1") == []
        assert _attempt_lines(caplog, "req-stream-later-1") == []
        await asyncio.sleep(0)
        assert _access_lines(caplog, "req-stream-later-1") == []  # waiting for its batch
        await _batch_ran()
        [line] = _access_lines(caplog, "req-stream-later-1")
        [attempt] = _attempt_lines(caplog, "req-stream-later-1")
        assert (line.status, line.mode, line.model) == ("ok", "stream", "mock-chat")
        assert (line.prompt_tokens, line.completion_tokens, line.cost_micros) == (
            usage.prompt_tokens, usage.completion_tokens, usage.cost_micros)
        assert attempt.upstream_attempt["outcome"] == "ok" and attempt.upstream_attempt["streamed"] is True
        await _batch_ran()
        assert len(_access_lines(caplog, "req-stream-later-1")) == 1
        assert len(_attempt_lines(caplog, "req-stream-later-1")) == 1
    finally:
        await core.stop(grace_seconds=1)


async def test_a_reader_that_leaves_mid_stream_still_gets_one_line_once_settled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    core = await start_core(settings_for(tmp_path), address="127.0.0.1:0")
    try:
        key = await _key(core)
        chat = chat_pb2_grpc.ChatServiceStub(core.local.channel())
        metadata = (("authorization", f"Bearer {key}"), ("x-request-id", "req-stream-later-2"))
        # A long mock answer: the reader leaves after its first chunk, the run drains and bills alone.
        call = chat.StreamChatCompletion(_request("Hello " * 400), metadata=metadata, timeout=10)
        first = await call.read()
        assert first is not grpc.aio.EOF
        call.cancel()
        for _ in range(200):
            await asyncio.sleep(0.02)
            if _access_lines(caplog, "req-stream-later-2"):
                break
        [line] = _access_lines(caplog, "req-stream-later-2")
        assert (line.mode, line.status) == ("stream", "cancelled")
        await _batch_ran()
        assert len(_access_lines(caplog, "req-stream-later-2")) == 1
        assert len(_attempt_lines(caplog, "req-stream-later-2")) == 1
    finally:
        await core.stop(grace_seconds=1)


class _Streaming(chat_pb2_grpc.ChatServiceServicer):
    """Streams two chunks, deferring work that records itself."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def StreamChatCompletion(self, request: chat_pb2.StreamChatCompletionRequest,
                                   context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        after_answer(self.ran.append, request.model)
        yield chat_pb2.StreamChatCompletionResponse(id="a", model=request.model)
        await asyncio.sleep(0.01)
        yield chat_pb2.StreamChatCompletionResponse(id="b", model=request.model)


async def test_stopping_runs_what_a_stream_deferred_before_it_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(in_process, "AFTER_ANSWER_BATCH_SECONDS", 30.0)  # only stop can run it here
    servicer = _Streaming()
    services = InProcessServices()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, services)
    stub = chat_pb2_grpc.ChatServiceStub(services.channel())
    call = stub.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(model="s1"))
    assert [m.id async for m in call] == ["a", "b"]
    assert servicer.ran == []  # the stream is over, its batch waits
    await services.stop(grace_seconds=1)
    assert servicer.ran == ["s1"]
