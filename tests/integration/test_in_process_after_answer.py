"""An in-process unary call hands its answer over first and writes its observation after it, batched.

The real core (SQLite file, mock provider) is called through its in-process
channel, as the facade calls it under `tollgate serve`: when the caller resumes
with the answer, the request's access line and upstream_attempt line are not
written yet; once the batch has run (AFTER_ANSWER_BATCH_SECONDS) each is there
exactly once. A scripted servicer shows that a failure in deferred work is
logged without touching the answer, that a full batch runs at once but still
after the answer, and that a stopping core runs what was deferred before it is done.
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
    account = (await admin.CreateAccount(admin_pb2.CreateAccountRequest(display_name="after"), metadata=ADMIN)).account
    await admin.TopUpAccount(admin_pb2.TopUpAccountRequest(account_id=account.id, amount_micros=10_000_000,
                                                           request_id=f"seed-{account.id}"), metadata=ADMIN)
    created = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=account.id, display_name="after"),
                                       metadata=ADMIN)
    return created.secret


def _request() -> chat_pb2.CreateChatCompletionRequest:
    request = chat_pb2.CreateChatCompletionRequest(model="mock-chat")
    request.messages.add(role=types_pb2.ROLE_USER, content="Hello")
    return request


def _access_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "tollgate.access" and r.getMessage() == "chat request" and r.request_id == request_id]


def _attempt_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tollgate.routing"
            and getattr(r, "upstream_attempt", {}).get("request_id") == request_id]


async def test_the_lines_of_a_unary_call_follow_its_answer_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    core = await start_core(settings_for(tmp_path), address="127.0.0.1:0")
    try:
        key = await _key(core)
        chat = chat_pb2_grpc.ChatServiceStub(core.local.channel())
        metadata = (("authorization", f"Bearer {key}"), ("x-request-id", "req-after-answer-1"))
        response = await chat.CreateChatCompletion(_request(), metadata=metadata, timeout=10)
        # The caller runs first: nothing of the call's observation is written yet.
        assert response.usage.cost_micros > 0
        assert _access_lines(caplog, "req-after-answer-1") == []
        assert _attempt_lines(caplog, "req-after-answer-1") == []
        await asyncio.sleep(0)
        assert _access_lines(caplog, "req-after-answer-1") == []  # waiting for its batch
        await _batch_ran()
        [line] = _access_lines(caplog, "req-after-answer-1")
        [attempt] = _attempt_lines(caplog, "req-after-answer-1")
        assert (line.status, line.mode, line.model) == ("ok", "unary", "mock-chat")
        assert (line.prompt_tokens, line.completion_tokens, line.cost_micros) == (
            response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.cost_micros)
        assert attempt.upstream_attempt["outcome"] == "ok" and attempt.upstream_attempt["attempt"] == 1
        await asyncio.sleep(0.05)
        assert len(_access_lines(caplog, "req-after-answer-1")) == 1
        assert len(_attempt_lines(caplog, "req-after-answer-1")) == 1
    finally:
        await core.stop(grace_seconds=1)


async def test_a_refused_call_gets_its_line_after_its_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    core = await start_core(settings_for(tmp_path), address="127.0.0.1:0")
    try:
        chat = chat_pb2_grpc.ChatServiceStub(core.local.channel())
        metadata = (("authorization", "Bearer sk-tg-not-a-key"), ("x-request-id", "req-after-answer-2"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await chat.CreateChatCompletion(_request(), metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _access_lines(caplog, "req-after-answer-2") == []
        await _batch_ran()
        [line] = _access_lines(caplog, "req-after-answer-2")
        assert line.status == "INVALID_API_KEY"
    finally:
        await core.stop(grace_seconds=1)


class _Deferring(chat_pb2_grpc.ChatServiceServicer):
    """Answers after `delay`, deferring work that records itself (and, for model "broken", work that fails)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.ran: list[str] = []
        self.delay = delay

    async def CreateChatCompletion(self, request: chat_pb2.CreateChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> chat_pb2.CreateChatCompletionResponse:
        await asyncio.sleep(self.delay)
        if request.model == "broken":
            after_answer(_broken)
        after_answer(self.ran.append, request.model)
        return chat_pb2.CreateChatCompletionResponse(id="cmpl-after", model=request.model)


def _broken() -> None:
    raise RuntimeError("observation broke")


def _stub(servicer: _Deferring) -> tuple[chat_pb2_grpc.ChatServiceStub, InProcessServices]:
    services = InProcessServices()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, services)
    return chat_pb2_grpc.ChatServiceStub(services.channel()), services


async def test_a_failure_in_deferred_work_is_logged_and_leaves_the_answer_alone(caplog: pytest.LogCaptureFixture) -> None:
    servicer = _Deferring()
    stub, _ = _stub(servicer)
    with caplog.at_level(logging.ERROR, logger="tollgate.observability"):
        response = await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="broken"))
        assert response.id == "cmpl-after"
        await _batch_ran()
    assert servicer.ran == ["broken"]  # queued after the failing piece, still run
    [failure] = [r for r in caplog.records if r.name == "tollgate.observability"]
    assert "_broken" in failure.getMessage() and failure.exc_info is not None
    # The next call is untouched by the last one's failure.
    assert (await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="next"))).model == "next"
    await _batch_ran()
    assert servicer.ran == ["broken", "next"]


async def test_stopping_runs_what_calls_deferred_before_it_returns() -> None:
    servicer = _Deferring(delay=0.05)
    stub, services = _stub(servicer)
    calls = [asyncio.ensure_future(stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model=f"m{i}")))
             for i in range(3)]
    await asyncio.sleep(0.01)  # the calls are running
    await services.stop(grace_seconds=5)
    assert sorted(servicer.ran) == ["m0", "m1", "m2"]
    assert [c.result().model for c in calls] == ["m0", "m1", "m2"]


async def test_a_cancelled_call_still_runs_its_deferred_work_once() -> None:
    servicer = _Deferring(delay=30)
    stub, _ = _stub(servicer)
    call = stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="cut"))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await _batch_ran()
    assert servicer.ran == []  # cancelled before it deferred anything: nothing to run, nothing invented


async def test_calls_side_by_side_share_one_batch_run_once_soon_after_the_answers() -> None:
    servicer = _Deferring(delay=0.02)
    stub, services = _stub(servicer)
    answers = await asyncio.gather(
        *(stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model=f"m{i}")) for i in range(4)))
    assert [a.model for a in answers] == ["m0", "m1", "m2", "m3"]
    await asyncio.sleep(0)
    assert servicer.ran == []
    await _batch_ran()
    assert sorted(servicer.ran) == ["m0", "m1", "m2", "m3"]  # each exactly once
    await services.stop(grace_seconds=1)
    assert len(servicer.ran) == 4


async def test_a_full_batch_runs_at_once_yet_after_the_last_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(in_process, "AFTER_ANSWER_BATCH_CALLS", 3)
    monkeypatch.setattr(in_process, "AFTER_ANSWER_BATCH_SECONDS", 30.0)  # only a full batch can run it here
    servicer = _Deferring()
    stub, _ = _stub(servicer)
    for model in ("a", "b"):
        await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model=model))
    assert servicer.ran == []
    answer = await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="c"))  # the third: full
    assert answer.model == "c" and servicer.ran == []  # the caller has its answer before the batch runs
    await asyncio.sleep(0)  # the same pass: no waiting for the timer
    assert servicer.ran == ["a", "b", "c"]
    await _batch_ran()
    assert servicer.ran == ["a", "b", "c"]


async def test_stopping_with_no_call_running_runs_the_waiting_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(in_process, "AFTER_ANSWER_BATCH_SECONDS", 30.0)  # only stop can run it here
    servicer = _Deferring()
    stub, services = _stub(servicer)
    await stub.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="last"))
    assert servicer.ran == []
    await services.stop(grace_seconds=1)
    assert servicer.ran == ["last"]


async def _batch_ran() -> None:
    await asyncio.sleep(AFTER_ANSWER_BATCH_SECONDS * 2)
