"""The chunks of an upstream read that ends the stream leave with the billed usage, in one hand-off.

A short answer often arrives whole, in one network read. Its chunks then wait
for the settlement (they would otherwise wake the reader, and take a write to
the client, of their own) and reach the reader together with the final usage
chunk: once the first message is in, every other one is there without waiting.
Chunks of earlier reads still leave as they arrive.

The real core (auth, hold and settle on SQLite, the OpenAI provider) against a
raw upstream, read through the in-process channel as `tollgate serve` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway_core.chat import pipeline as pipeline_module
from gateway_core.chat import stream_run
from gateway_core.metering.ledger import Ledger
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc
from gateway_core.server import Core, start_core
from tests.fakes.raw_openai_upstream import END, ERROR, FINISH, FIRST, HEAD, USAGE, RawUpstream, event, token
from tests.gateway_support import settings_for

BURST = HEAD + b"".join(event(e) for e in (FIRST, token("a"), token("b"), FINISH, USAGE, b"[DONE]")) + END
APART = [(0, HEAD + event(FIRST) + event(token("a"))), (0.3, event(token("b")) + event(FINISH)),
         (0, event(USAGE) + event(b"[DONE]") + END)]
# 300 tokens in one write, between a first read and a late end: one batch far over BATCH_LIMIT. Each token's
# fingerprint differs from its neighbours', so none are merged (text deltas of one head would be one chunk).
FLOOD = [(0, HEAD + event(FIRST) + event(token("a"))),
         (0.05, b"".join(event(token("x", fingerprint=f"fp_{i % 2}")) for i in range(300))),
         (0.5, event(FINISH) + event(USAGE) + event(b"[DONE]") + END)]
BROKEN = HEAD + event(FIRST) + event(token("a")) + event(ERROR) + END


@pytest.fixture
async def core(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Core, str]]:
    async with RawUpstream(request.param) as upstream:
        settings = settings_for(
            tmp_path, providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url, "api_key": "sk-up"}],
            models=[{"name": "m", "routes": [{"provider": "up", "model": "gpt-x"}], "input_price": 1,
                     "output_price": 1, "max_output_tokens": 64}],
        )
        started = await start_core(settings, address="127.0.0.1:0", metrics_address="")
        try:
            created = await started.store.create_first_account(
                "last-batch", pepper=settings.key_pepper, credit_micros=10**9, request_id="credit", key_name="k")
            assert created is not None
            yield started, created[2]
        finally:
            await started.stop(1.0)


def _call(core: Core, key: str) -> Any:
    request = chat_pb2.StreamChatCompletionRequest(model="m", max_tokens=16)
    request.messages.add(role=1, content="hello")
    stub = chat_pb2_grpc.ChatServiceStub(core.local.channel())
    return stub.StreamChatCompletion(request, metadata=(("authorization", f"Bearer {key}"),), timeout=30)


async def _read(call: Any) -> tuple[list[chat_pb2.StreamChatCompletionResponse], int]:
    """Every message, and how many of the reads after the first had to wait for theirs."""
    messages = [await call.read()]
    waits = 0
    while True:
        message = call.read_nowait()
        if message is None:
            waits += 1
            message = await call.read()
        if message is grpc.aio.EOF:
            return messages, waits
        messages.append(message)


def _texts(messages: list[chat_pb2.StreamChatCompletionResponse]) -> list[str]:
    return [c.delta.content for m in messages for c in m.choices]


@pytest.mark.parametrize("core", [[(0, BURST)]], indirect=True)
async def test_an_answer_that_arrives_whole_reaches_the_reader_with_its_billed_usage_at_once(
    core: tuple[Core, str],
) -> None:
    messages, waits = await _read(_call(*core))
    assert _texts(messages) == ["", "ab", ""], "the text deltas of one read leave as one chunk"
    assert messages[-1].HasField("usage") and messages[-1].usage.completion_tokens == 3
    assert messages[-1].usage.cost_micros > 0, "the billed usage"
    assert waits == 0, "the content waited for the settlement and came with it"


@pytest.mark.parametrize("core", [APART], indirect=True)
async def test_chunks_of_earlier_reads_do_not_wait_for_the_end(core: tuple[Core, str]) -> None:
    messages, waits = await _read(_call(*core))
    assert _texts(messages) == ["", "a", "b", ""]
    assert messages[-1].usage.completion_tokens == 3
    assert waits >= 1, "the first read's chunks were handed on before the rest arrived"


@pytest.mark.parametrize("core", [[(0, BROKEN)]], indirect=True)
async def test_chunks_before_an_in_band_failure_still_come_first(core: tuple[Core, str]) -> None:
    call = _call(*core)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)
    assert _texts(received) == ["", "a"]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("core", [[(0, BURST)]], indirect=True)
async def test_a_settlement_that_keeps_failing_ends_the_stream_with_an_error_at_once(
    core: tuple[Core, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def unwritable(*_: Any, **__: Any) -> None:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(Ledger, "settle", unwritable)
    monkeypatch.setattr(pipeline_module, "_SETTLE_RETRY_DELAYS", (0.0,))
    call = _call(*core)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        # Before, the run's task died with the error and the reader waited for the call's 30 s deadline.
        await asyncio.wait_for(_read(call), 5)
    assert failed.value.code() == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("core", [FLOOD], indirect=True)
async def test_a_read_of_hundreds_of_chunks_is_queued_in_bounded_parts_and_all_arrive_in_order(
    core: tuple[Core, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    queued: list[int] = []  # the size of every batch handed to the reader's queue

    class RecordingHandoff(stream_run.Handoff):  # type: ignore[name-defined,misc]
        def put_nowait(self, item: Any) -> None:
            if type(item) is list:
                queued.append(len(item))
            super().put_nowait(item)

        async def put(self, item: Any) -> None:
            if type(item) is list:
                queued.append(len(item))
            await super().put(item)

    monkeypatch.setattr(stream_run, "Handoff", RecordingHandoff)
    messages, _ = await asyncio.wait_for(_read(_call(*core)), 10)
    # A slow reader holds at most QUEUE_DEPTH x BATCH_LIMIT chunks, not QUEUE_DEPTH whole reads.
    assert max(queued) == stream_run.BATCH_LIMIT
    assert sum(queued) >= 300
    assert "".join(_texts(messages)) == "a" + "x" * 300
    assert messages[-1].usage.total_tokens > 0
