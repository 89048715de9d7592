"""A unary call whose caller leaves at any await is still settled exactly once (ChatPipeline.unary).

The real core (start_core: SQLite ledger, limits, usage records) is called
through the in-process channel `tollgate serve` uses, and the call is
cancelled while its hold is being written, while its upstream call runs
(drained, or stopped at once when no drain slot is free) and while it is
settled. Only the upstream provider is faked: its `complete` is a coroutine
the test releases. The hold is gated by wrapping the real Ledger.hold.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway_core.config import parse_settings
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.outcome import UsageStatus
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc
from gateway_core.providers.base import UpstreamCall
from gateway_core.server import Core, start_core
from gateway_core.store.records import Usage

CREDIT = 10**9
MODEL = "m"


class GatedUpstream:
    """The provider's complete(): waits for release(), then answers 7 + 5 tokens; remembers a cancel."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.released = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls = 0

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        self.calls += 1
        self.entered.set()
        try:
            await self.released.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        response = chat_pb2.CreateChatCompletionResponse(id="cmpl-1", model=call.client_model)
        response.choices.add(index=0).message.content = "five tokens of answer here"
        response.usage.prompt_tokens, response.usage.completion_tokens = 7, 5
        return response


@pytest.fixture
async def core(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Core, str, str, GatedUpstream]]:
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
            upstream = GatedUpstream()
            started.providers["up"].complete = upstream.complete  # type: ignore[method-assign]
            yield started, created[0].id, created[2], upstream
        finally:
            await started.stop(5.0)


def _call(core: Core, key: str, request_id: str) -> Any:
    stub = chat_pb2_grpc.ChatServiceStub(core.local.channel())
    request = chat_pb2.CreateChatCompletionRequest(model=MODEL, max_tokens=16)
    request.messages.add(role=1, content="hello")
    return stub.CreateChatCompletion(
        request, metadata=(("authorization", f"Bearer {key}"), ("x-request-id", request_id)), timeout=30
    )


async def _record(core: Core, request_id: str) -> Usage:
    for _ in range(500):
        record = await core.store.get_usage_record(request_id)
        if record is not None:
            return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"{request_id} was never settled")


async def _left(call: Any) -> None:
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def _balance(core: Core, account_id: str) -> int:
    return (await core.store.get_account(account_id)).balance_micros


async def test_a_finished_call_is_billed_its_upstream_usage(core: tuple[Core, str, str, GatedUpstream]) -> None:
    started, account, key, upstream = core
    upstream.released.set()
    response = await _call(started, key, "req-ok")
    record = await _record(started, "req-ok")
    assert (record.status, record.prompt_tokens, record.completion_tokens, record.estimated) == (
        UsageStatus.OK, 7, 5, False)
    assert response.usage.cost_micros == record.cost_micros > 0
    assert await _balance(started, account) == CREDIT - record.cost_micros


async def test_leaving_while_the_hold_is_written_settles_it_at_zero_and_never_calls_upstream(
    core: tuple[Core, str, str, GatedUpstream], monkeypatch: pytest.MonkeyPatch
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
    await holding.wait()
    await _left(call)
    release.set()
    record = await _record(started, "req-hold")
    assert (record.status, record.cost_micros, record.prompt_tokens, record.completion_tokens) == (
        UsageStatus.CANCELLED, 0, 0, 0)
    assert upstream.calls == 0
    assert await _balance(started, account) == CREDIT


async def test_leaving_during_the_upstream_call_drains_it_and_bills_its_real_usage(
    core: tuple[Core, str, str, GatedUpstream],
) -> None:
    started, account, key, upstream = core
    call = _call(started, key, "req-drain")
    await upstream.entered.wait()
    await _left(call)
    await asyncio.sleep(0.05)
    assert not upstream.cancelled.is_set(), "drained, not cut"
    assert await started.store.get_usage_record("req-drain") is None, "not billed before the drain ends"
    upstream.released.set()
    record = await _record(started, "req-drain")
    assert (record.status, record.prompt_tokens, record.completion_tokens, record.estimated) == (
        UsageStatus.CANCELLED, 7, 5, False)
    assert await _balance(started, account) == CREDIT - record.cost_micros


@pytest.mark.parametrize("core", [(0, 5.0)], indirect=True)
async def test_with_no_drain_slot_free_the_upstream_call_is_stopped_at_once_and_estimated(
    core: tuple[Core, str, str, GatedUpstream],
) -> None:
    started, account, key, upstream = core
    call = _call(started, key, "req-cut")
    await upstream.entered.wait()
    await _left(call)
    await asyncio.wait_for(upstream.cancelled.wait(), 5)
    record = await _record(started, "req-cut")
    assert (record.status, record.completion_tokens, record.estimated) == (UsageStatus.CANCELLED, 0, True)
    assert await _balance(started, account) == CREDIT - record.cost_micros


async def test_leaving_while_the_settlement_is_written_lets_it_land_once(
    core: tuple[Core, str, str, GatedUpstream], monkeypatch: pytest.MonkeyPatch
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
    await settling.wait()
    await _left(call)
    release.set()
    record = await _record(started, "req-settle")
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (UsageStatus.OK, 7, 5)
    assert await _balance(started, account) == CREDIT - record.cost_micros


@pytest.mark.parametrize("core", [(8, 0.2)], indirect=True)
async def test_a_drain_that_runs_out_stops_the_upstream_and_bills_an_estimate_once(
    core: tuple[Core, str, str, GatedUpstream],
) -> None:
    started, account, key, upstream = core
    call = _call(started, key, "req-silent")
    await upstream.entered.wait()
    await _left(call)
    await asyncio.wait_for(upstream.cancelled.wait(), 5)  # after drain_seconds, not before
    record = await _record(started, "req-silent")
    assert (record.status, record.completion_tokens, record.estimated) == (UsageStatus.CANCELLED, 0, True)
    assert await _balance(started, account) == CREDIT - record.cost_micros
    upstream.released.set()
    # The next request on the same core is untouched by the cut of the last one.
    upstream.entered.clear()
    response = await _call(started, key, "req-after")
    assert response.usage.completion_tokens == 5
