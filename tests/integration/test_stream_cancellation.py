"""A streamed call whose reader leaves at any await is still settled exactly once (StreamRun).

The real core (start_core: SQLite ledger, usage records) is called through the
in-process channel `tollgate serve` uses, whose stream handler runs in the
reader's task. The reader leaves (cancels the call) while the hold is written,
while the upstream streams (drained, or stopped at once when no drain slot is
free, or when the drain runs out) and while the settlement is written. Only
the upstream provider is faked: its `stream` yields one chunk, then waits for
the test to release the rest. The hold and settle are gated by wrapping the
real Ledger methods.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway_core.config import parse_settings
from gateway_core.errors import Reason
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.outcome import UsageStatus
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc
from gateway_core.providers.base import ProviderError, UpstreamCall
from gateway_core.server import Core, start_core
from gateway_core.store.records import Usage

CREDIT = 10**9
MODEL = "m"


class GatedStream:
    """The provider's stream(): one text chunk, then waits for release(), then 4 more, a finish and
    usage 7 + 5 (or a failure, with fail=True); remembers whether it was closed before its end."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.released = asyncio.Event()
        self.closed_early = asyncio.Event()
        self.calls = 0
        self.fail = False

    async def stream(self, call: UpstreamCall) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        self.calls += 1
        ended = False
        try:
            yield _text(call, "one ", role=True)
            self.entered.set()
            await self.released.wait()
            for word in ("two ", "three ", "four ", "five"):
                yield _text(call, word)
            if self.fail:
                raise ProviderError(Reason.UPSTREAM_ERROR, "upstream went away")
            finish = _text(call, "")
            finish.choices[0].finish_reason = 1
            yield finish
            usage = chat_pb2.StreamChatCompletionResponse(id="c", model=call.client_model)
            usage.usage.prompt_tokens, usage.usage.completion_tokens = 7, 5
            yield usage
            ended = True
        finally:
            if not ended:
                self.closed_early.set()


def _text(call: UpstreamCall, text: str, *, role: bool = False) -> chat_pb2.StreamChatCompletionResponse:
    chunk = chat_pb2.StreamChatCompletionResponse(id="c", model=call.client_model)
    choice = chunk.choices.add(index=0)
    choice.delta.content = text
    if role:
        choice.delta.role = 3
    return chunk


@pytest.fixture
async def core(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Core, str, str, GatedStream]]:
    drains, drain_seconds = getattr(request, "param", (8, 5.0))
    with tempfile.TemporaryDirectory() as directory:
        settings = parse_settings({
            "database": {"url": f"sqlite:///{Path(directory) / 'core.db'}"},
            "admin": {"token": "cancel-test-admin-token-0123"},
            "keys": {"pepper": "cancel-test-pepper-0123456789"},
            "metering": {"drain_seconds": drain_seconds, "max_concurrent_drains": drains},
            "providers": [{"name": "up", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-up-x"}],
            "models": [{"name": MODEL, "routes": [{"provider": "up", "model": "up-m"}],
                        "input_price": 1.0, "output_price": 2.0, "max_output_tokens": 64}],
        }, {})
        started = await start_core(settings, address="127.0.0.1:0", metrics_address="")
        try:
            created = await started.store.create_first_account(
                "cancel", pepper=settings.key_pepper, credit_micros=CREDIT, request_id="credit", key_name="k"
            )
            assert created is not None
            upstream = GatedStream()
            started.providers["up"].stream = upstream.stream  # type: ignore[method-assign]
            yield started, created[0].id, created[2], upstream
        finally:
            await started.stop(5.0)


def _call(core: Core, key: str, request_id: str) -> Any:
    stub = chat_pb2_grpc.ChatServiceStub(core.local.channel())
    request = chat_pb2.StreamChatCompletionRequest(model=MODEL, max_tokens=16)
    request.messages.add(role=1, content="hello")
    return stub.StreamChatCompletion(
        request, metadata=(("authorization", f"Bearer {key}"), ("x-request-id", request_id)), timeout=30
    )


async def _record(core: Core, request_id: str) -> Usage:
    for _ in range(500):
        record = await core.store.get_usage_record(request_id)
        if record is not None:
            return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"{request_id} was never settled")


async def _records(core: Core, account_id: str) -> int:
    records, _ = await core.store.list_usage_records(account_id, page_size=100)
    return len(records)


async def _balance(core: Core, account_id: str) -> int:
    return (await core.store.get_account(account_id)).balance_micros


async def _read_all(call: Any) -> list[chat_pb2.StreamChatCompletionResponse]:
    return [message async for message in call]


async def test_a_finished_stream_is_billed_its_upstream_usage_in_its_last_chunk(
    core: tuple[Core, str, str, GatedStream],
) -> None:
    started, account, key, upstream = core
    upstream.released.set()
    messages = await _read_all(_call(started, key, "req-ok"))
    assert "".join(m.choices[0].delta.content for m in messages if m.choices) == "one two three four five"
    assert all(m.provider == "up" for m in messages)
    final = messages[-1]
    assert not final.choices and final.HasField("usage")
    record = await _record(started, "req-ok")
    assert (record.status, record.prompt_tokens, record.completion_tokens, record.estimated) == (
        UsageStatus.OK, 7, 5, False)
    assert final.usage.cost_micros == record.cost_micros > 0
    assert await _balance(started, account) == CREDIT - record.cost_micros


async def test_an_upstream_failure_mid_stream_reaches_the_reader_after_its_chunks_settled_once(
    core: tuple[Core, str, str, GatedStream],
) -> None:
    started, account, key, upstream = core
    upstream.fail = True
    upstream.released.set()
    call = _call(started, key, "req-fail")
    texts = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            texts.append(message.choices[0].delta.content)
    assert texts == ["one ", "two ", "three ", "four ", "five"]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    record = await _record(started, "req-fail")
    assert (record.status, record.estimated) == (UsageStatus.UPSTREAM_ERROR, True)
    assert record.completion_tokens > 0  # it produced output: billed what it produced
    assert await _balance(started, account) == CREDIT - record.cost_micros


async def test_leaving_while_the_hold_is_written_settles_it_at_zero_and_never_calls_upstream(
    core: tuple[Core, str, str, GatedStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    started, account, key, upstream = core
    holding, release = asyncio.Event(), asyncio.Event()
    real_hold: Callable[..., Awaitable[Any]] = Ledger.hold

    async def gated_hold(self: Ledger, **kwargs: Any) -> Any:
        holding.set()
        await release.wait()
        return await real_hold(self, **kwargs)

    monkeypatch.setattr(Ledger, "hold", gated_hold)
    call = _call(started, key, "req-hold")
    reading = asyncio.ensure_future(call.read())
    await holding.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    release.set()
    record = await _record(started, "req-hold")
    assert (record.status, record.cost_micros, record.prompt_tokens, record.completion_tokens) == (
        UsageStatus.CANCELLED, 0, 0, 0)
    assert upstream.calls == 0
    assert await _balance(started, account) == CREDIT


@pytest.mark.parametrize("waiting", [True, False], ids=["reader-waiting", "reader-away"])
async def test_leaving_mid_stream_drains_it_and_bills_its_real_usage_once(
    core: tuple[Core, str, str, GatedStream], waiting: bool,
) -> None:
    started, account, key, upstream = core
    call = _call(started, key, "req-drain")
    assert (await call.read()).choices[0].delta.content == "one "
    await upstream.entered.wait()
    if waiting:  # the reader waits inside the handler for the next chunk when it leaves
        reading = asyncio.ensure_future(call.read())
        await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
    else:  # the reader is elsewhere (say, writing to its client) when it leaves
        call.cancel()
    await asyncio.sleep(0.05)
    assert not upstream.closed_early.is_set(), "drained, not cut"
    assert await started.store.get_usage_record("req-drain") is None, "not billed before the drain ends"
    upstream.released.set()
    record = await _record(started, "req-drain")
    assert (record.status, record.prompt_tokens, record.completion_tokens, record.estimated) == (
        UsageStatus.CANCELLED, 7, 5, False)
    assert await _balance(started, account) == CREDIT - record.cost_micros
    assert await _records(started, account) == 1


@pytest.mark.parametrize("core", [(0, 5.0)], indirect=True)
async def test_with_no_drain_slot_free_the_upstream_is_closed_at_once_and_estimated(
    core: tuple[Core, str, str, GatedStream],
) -> None:
    started, account, key, upstream = core
    call = _call(started, key, "req-cut")
    await call.read()
    await upstream.entered.wait()
    call.cancel()
    await asyncio.wait_for(upstream.closed_early.wait(), 5)
    record = await _record(started, "req-cut")
    assert (record.status, record.estimated) == (UsageStatus.CANCELLED, True)
    assert record.completion_tokens > 0  # "one " was seen before the cut
    assert await _balance(started, account) == CREDIT - record.cost_micros


async def test_leaving_while_the_settlement_is_written_lets_it_land_once(
    core: tuple[Core, str, str, GatedStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    started, account, key, upstream = core
    settling, release = asyncio.Event(), asyncio.Event()
    real_settle: Callable[..., Awaitable[Any]] = Ledger.settle

    async def gated_settle(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        settling.set()
        await release.wait()
        return await real_settle(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "settle", gated_settle)
    upstream.released.set()
    call = _call(started, key, "req-settle")
    reading = asyncio.ensure_future(_read_all(call))
    await settling.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    release.set()
    record = await _record(started, "req-settle")
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (UsageStatus.OK, 7, 5)
    assert await _balance(started, account) == CREDIT - record.cost_micros
    assert await _records(started, account) == 1


@pytest.mark.parametrize("core", [(8, 0.2)], indirect=True)
async def test_a_drain_that_runs_out_closes_the_upstream_and_bills_once_then_the_next_stream_is_untouched(
    core: tuple[Core, str, str, GatedStream],
) -> None:
    started, account, key, upstream = core
    call = _call(started, key, "req-silent")
    await call.read()
    await upstream.entered.wait()
    call.cancel()
    await asyncio.wait_for(upstream.closed_early.wait(), 5)  # after drain_seconds, not before
    record = await _record(started, "req-silent")
    assert (record.status, record.estimated) == (UsageStatus.CANCELLED, True)
    assert await _balance(started, account) == CREDIT - record.cost_micros
    upstream.released.set()
    messages = await _read_all(_call(started, key, "req-after"))
    assert messages[-1].usage.completion_tokens == 5
