"""Limits end to end through the official openai SDK: 429s with OpenAI's headers, nothing upstream,
tokens corrected by real usage, slots back after a disconnect, the monthly budget and its rollover."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest

from gateway_core.pb.gateway.admin.v1 import admin_pb2
from gateway_core.errors import error_info
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc, metering_pb2, metering_pb2_grpc, types_pb2
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import ADMIN_TOKEN, TRANSPORTS, RunningGateway, running_gateway, settings_for

HELLO = [{"role": "user", "content": "Hello, limited world!"}]
META = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream(slow_chunks=20, slow_interval=0.1, hang_seconds=30) as fake:
        yield fake


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("limits")


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(request: pytest.FixtureRequest, db_path: Path, upstream: FakeOpenAIUpstream) -> Iterator[RunningGateway]:
    models = [
        {"name": name, "routes": [{"provider": "up", "model": target}], "input_price": 2, "output_price": 5}
        for name, target in (("m-text", "fake-text"), ("m-slow", "fake-slow"), ("m-error", "fake-error-500"))
    ]
    settings = settings_for(
        db_path,
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url}],
        models=models,
        metering={"drain_seconds": 0.5},
        keys={"pepper": "test-pepper", "cache_seconds": 0.2},
    )
    with running_gateway(settings, in_process=request.param == "in_process") as running:
        yield running


def _sdk(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0)


def _usage_records(gateway: RunningGateway, key: str) -> list[metering_pb2.UsageRecord]:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        page = metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
            metering_pb2.ListUsageRecordsRequest(page_size=100), metadata=(("authorization", f"Bearer {key}"),)
        )
    return list(page.usage_records)


def _update_account(gateway: RunningGateway, account_id: str, **fields: Any) -> admin_pb2.Account:
    stub, channel = gateway.admin()
    with channel:
        request = admin_pb2.UpdateAccountRequest(account_id=account_id, **fields)
        return stub.UpdateAccount(request, metadata=META).account


def test_over_the_key_rpm_is_429_with_openai_headers_and_nothing_upstream(
    gateway: RunningGateway, upstream: FakeOpenAIUpstream
) -> None:
    _, _, key = gateway.create_key(rpm_limit=2)
    with _sdk(gateway, key) as client:
        first = client.chat.completions.with_raw_response.create(model="m-text", messages=HELLO)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in first.headers  # no token limit applies
        stream = client.chat.completions.with_raw_response.create(model="m-text", messages=HELLO, stream=True)
        assert stream.headers["x-ratelimit-remaining-requests"] == "0"
        list(stream.parse())
        before = len(upstream.requests)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m-text", messages=HELLO)
    error = caught.value
    assert error.body["code"] == "rate_limit_exceeded" and error.body["type"] == "requests"
    assert "2 requests per minute" in error.body["message"]
    headers = error.response.headers
    assert 28 <= int(headers["retry-after"]) <= 30  # one request frees up every 30 s
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.requests) == before


def test_account_rpm_is_shared_by_all_its_keys(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    account_id, _, key = gateway.create_key()
    _update_account(gateway, account_id, rpm_limit=1)
    stub, channel = gateway.admin()
    with channel:
        other = stub.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=account_id), metadata=META).secret
    time.sleep(0.3)  # account limits are cached up to cache_seconds
    with _sdk(gateway, key) as client:
        client.chat.completions.create(model="m-text", messages=HELLO)
    before = len(upstream.requests)
    with _sdk(gateway, other) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m-text", messages=HELLO)
    assert "account limit of 1 requests per minute" in caught.value.body["message"]
    assert len(upstream.requests) == before


def test_token_estimate_is_corrected_by_real_usage(gateway: RunningGateway) -> None:
    _, _, key = gateway.create_key(tpm_limit=2000)
    with _sdk(gateway, key) as client:
        first = client.chat.completions.with_raw_response.create(model="m-text", messages=HELLO)
        estimate = 2000 - int(first.headers["x-ratelimit-remaining-tokens"])
        real = first.parse().usage.total_tokens
        assert real > estimate > 0, "the fake's answer adds completion tokens to the prompt"
        second = client.chat.completions.with_raw_response.create(model="m-text", messages=HELLO)
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    # Counted: the first request's real usage plus the second's estimate (plus a token or two refilled).
    assert 2000 - real - estimate <= remaining <= 2000 - real - estimate + 3
    assert second.headers["x-ratelimit-limit-tokens"] == "2000"


def test_a_prompt_bigger_than_the_tpm_limit_is_refused(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    _, _, key = gateway.create_key(tpm_limit=50)
    before = len(upstream.requests)
    with _sdk(gateway, key) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m-text", messages=[{"role": "user", "content": "word " * 400}])
    assert "Request too large" in caught.value.body["message"] and "50 tokens per minute" in caught.value.body["message"]
    assert "retry-after" not in caught.value.response.headers
    assert len(upstream.requests) == before


def test_concurrency_slot_is_taken_while_streaming_and_back_after_disconnect(
    gateway: RunningGateway, upstream: FakeOpenAIUpstream
) -> None:
    _, _, key = gateway.create_key(concurrency_limit=1)
    with _sdk(gateway, key) as client:
        stream = client.chat.completions.create(model="m-slow", messages=HELLO, stream=True)
        next(iter(stream))
        before = len(upstream.requests)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m-text", messages=HELLO)
        assert "1 concurrent requests" in caught.value.body["message"]
        assert len(upstream.requests) == before
        stream.close()  # the client leaves mid-stream
        deadline = time.monotonic() + 5
        while True:  # the slot comes back once the abandoned stream is drained (drain_seconds=0.5) and settled
            try:
                reply = client.chat.completions.create(model="m-text", messages=HELLO)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the slot was never released"
                time.sleep(0.1)
    assert reply.choices[0].message.content


def test_slot_is_back_after_an_upstream_error(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    _, _, key = gateway.create_key(concurrency_limit=1)
    with _sdk(gateway, key) as client:
        for _ in range(3):
            before = len(upstream.requests)
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="m-error", messages=HELLO)
            # The failing route may be retried (routing), but each request reached the upstream.
            assert caught.value.status_code >= 500 and len(upstream.requests) > before
            client.chat.completions.create(model="m-text", messages=HELLO)


def test_monthly_budget_refuses_with_insufficient_quota_and_rolls_over(
    gateway: RunningGateway, upstream: FakeOpenAIUpstream, db_path: Path
) -> None:
    account_id, _, key = gateway.create_key()
    with _sdk(gateway, key) as client:
        client.chat.completions.create(model="m-text", messages=HELLO, max_tokens=20)
        spent = gateway.account(account_id).budget_spent_micros
        held = _usage_records(gateway, key)[0].held_micros
        assert 0 < spent <= held
        # Room for one more hold of this size, but not on top of what this month already spent.
        account = _update_account(gateway, account_id, monthly_budget_micros=held)
        assert account.monthly_budget_micros == held
        before = len(upstream.requests)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m-text", messages=HELLO, max_tokens=20)
        assert caught.value.body["code"] == "insufficient_quota"
        assert "monthly budget" in caught.value.body["message"]
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert len(upstream.requests) == before
        # The month turns: move the account's budget period back one month, as time would.
        with sqlite3.connect(db_path / "tollgate.db") as db:
            (period,) = db.execute("SELECT budget_period FROM accounts WHERE id = ?", (account_id,)).fetchone()
            previous = period - 1 if period % 100 > 1 else period - 100 + 11
            db.execute("UPDATE accounts SET budget_period = ? WHERE id = ?", (previous, account_id))
        assert gateway.account(account_id).budget_spent_micros == 0
        balance_before = gateway.account(account_id).balance_micros
        client.chat.completions.create(model="m-text", messages=HELLO, max_tokens=20)
    after = gateway.account(account_id)
    # Only this month's request counts: the spending before the rollover is gone from the budget.
    assert after.budget_spent_micros == balance_before - after.balance_micros > 0
    assert after.budget_held_micros == 0
    with sqlite3.connect(db_path / "tollgate.db") as db:
        (rolled,) = db.execute("SELECT budget_period FROM accounts WHERE id = ?", (account_id,)).fetchone()
    assert rolled == period


def test_admin_refuses_negative_limits_and_changes_nothing(gateway: RunningGateway) -> None:
    account_id, _, _ = gateway.create_key()
    stub, channel = gateway.admin()
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.UpdateAccount(
                admin_pb2.UpdateAccountRequest(account_id=account_id, rpm_limit=5, monthly_budget_micros=-1),
                metadata=META,
            )
        assert "monthly_budget_micros" in str(caught.value)
        with pytest.raises(grpc.RpcError):
            stub.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=account_id, concurrency_limit=-2), metadata=META)
    assert gateway.account(account_id).rpm_limit == 0


def test_account_allowed_models_narrow_every_key(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    account_id, _, key = gateway.create_key(allowed_models=["m-text", "m-slow"])
    stub, channel = gateway.admin()
    with channel:
        request = admin_pb2.UpdateAccountRequest(account_id=account_id)
        request.allowed_models.models.extend(["m-text", "m-error"])
        assert list(stub.UpdateAccount(request, metadata=META).account.allowed_models) == ["m-text", "m-error"]
    time.sleep(0.3)  # keys (with their account's models) are cached up to cache_seconds
    with _sdk(gateway, key) as client:
        assert [m.id for m in client.models.list()] == ["m-text"]  # in both lists
        before = len(upstream.requests)
        for forbidden in ("m-slow", "m-error"):  # allowed by only one of the two lists
            with pytest.raises(openai.NotFoundError) as caught:
                client.chat.completions.create(model=forbidden, messages=HELLO)
            assert caught.value.body["code"] == "model_not_found"
        assert len(upstream.requests) == before
        assert client.chat.completions.create(model="m-text", messages=HELLO).choices


def test_slot_is_back_when_the_hold_is_refused(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    _, _, key = gateway.create_key(balance_micros=0, concurrency_limit=1, rpm_limit=100)
    before = len(upstream.requests)
    with _sdk(gateway, key) as client:
        for _ in range(4):  # each refusal must give its slot back, or the next would be rate limited
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="m-text", messages=HELLO)
            assert caught.value.body["code"] == "insufficient_quota"
    assert len(upstream.requests) == before


def test_grpc_callers_get_the_headers_as_metadata(gateway: RunningGateway) -> None:
    _, _, key = gateway.create_key(rpm_limit=1, tpm_limit=10_000)
    request = chat_pb2.CreateChatCompletionRequest(model="m-text")
    request.messages.add(role=types_pb2.ROLE_USER, content="Hello over gRPC")
    auth = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        _, call = stub.CreateChatCompletion.with_call(request, metadata=auth)
        initial = dict(call.initial_metadata())
        assert initial["x-ratelimit-limit-requests"] == "1" and initial["x-ratelimit-remaining-requests"] == "0"
        assert initial["x-ratelimit-limit-tokens"] == "10000"
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateChatCompletion(request, metadata=auth)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info is not None and info.reason == "RATE_LIMITED"
    assert info.metadata["x-ratelimit-remaining-requests"] == "0"
    assert 50 <= float(info.metadata["retry_after_seconds"]) <= 60
