"""Money end to end: holds before upstream, exact settlement, one usage record per admitted request.

Prices are the test plan's: $2 and $5 per 1M tokens, so a request costs exactly
2 x prompt + 5 x completion micro-USD, checked against the token counts the
fake upstream itself reported (its ground truth, keyed by request id).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest

from gateway_core.pb.gateway.v1 import metering_pb2, metering_pb2_grpc
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import TRANSPORTS, RunningGateway, running_gateway, settings_for

HELLO = [{"role": "user", "content": "Hello, metered world!"}]
SLOW_CHUNKS = 10


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream(slow_chunks=SLOW_CHUNKS, slow_interval=0.1, hang_seconds=30) as fake:
        yield fake


def _model(name: str, upstream_model: str, input_price: float = 2, output_price: float = 5) -> dict:
    return {"name": name, "routes": [{"provider": "up", "model": upstream_model}],
            "input_price": input_price, "output_price": output_price}


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            upstream: FakeOpenAIUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("money"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url}],
        models=[
            _model("m-text", "fake-text"), _model("m-tools", "fake-tools"), _model("m-slow", "fake-slow"),
            _model("m-hang", "fake-hang"), _model("m-reset", "fake-reset"), _model("m-no-usage", "fake-no-usage"),
            _model("m-error", "fake-error-500"),
            # $0 in, $1 per 1M out: a request with max_tokens=1000 holds exactly 1000 micro-USD.
            _model("herd", "fake-slow", input_price=0, output_price=1),
        ],
        metering={"drain_seconds": 2.0},
    )
    with running_gateway(settings, in_process=request.param == "in_process") as running:
        yield running


def _sdk(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0)


def _records(gateway: RunningGateway, key: str) -> dict[str, metering_pb2.UsageRecord]:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        page = metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
            metering_pb2.ListUsageRecordsRequest(page_size=1000), metadata=(("authorization", f"Bearer {key}"),)
        )
    records = {r.request_id: r for r in page.usage_records}
    assert len(records) == len(page.usage_records), "one usage record per request id"
    return records


def _truth_cost(upstream: FakeOpenAIUpstream, request_id: str) -> int:
    usage = upstream.usage_sent[request_id]
    return 2 * usage["prompt_tokens"] + 5 * usage["completion_tokens"]


def _assert_books_balance(gateway: RunningGateway, account_id: str) -> None:
    account = gateway.account(account_id)
    entries = gateway.ledger(account_id)
    assert sum(e.amount_micros for e in entries) == account.balance_micros
    assert account.held_micros == 0 and account.balance_micros >= 0


def _wait_for_record(gateway: RunningGateway, key: str, request_id: str) -> metering_pb2.UsageRecord:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (record := _records(gateway, key).get(request_id)) is not None:
            return record
        time.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


def test_balance_drops_by_exactly_the_upstream_priced_usage(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    account_id, _, key = gateway.create_key(balance_micros=10_000_000)
    request_ids: list[str] = []
    with _sdk(gateway, key) as client:
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(model="m-text", messages=HELLO)
            request_ids.append(raw.headers["x-request-id"])
            reply = raw.parse()
            assert reply.usage.prompt_tokens == upstream.usage_sent[request_ids[-1]]["prompt_tokens"]
        for options in ({"include_usage": True}, None):
            raw = client.chat.completions.with_raw_response.create(
                model="m-text", messages=HELLO, stream=True, **({"stream_options": options} if options else {}))
            request_ids.append(raw.headers["x-request-id"])
            list(raw.parse())
        raw = client.chat.completions.with_raw_response.create(
            model="m-tools", messages=HELLO, stream=True,
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])
        request_ids.append(raw.headers["x-request-id"])
        list(raw.parse())
    expected = {rid: _truth_cost(upstream, rid) for rid in request_ids}
    records = _records(gateway, key)
    assert set(records) == set(request_ids)
    for rid, record in records.items():
        assert record.cost_micros == expected[rid] and not record.estimated and record.status == metering_pb2.USAGE_STATUS_OK
        assert record.held_micros >= record.cost_micros
    assert gateway.account(account_id).balance_micros == 10_000_000 - sum(expected.values())
    _assert_books_balance(gateway, account_id)


def test_no_balance_means_429_and_no_upstream_call(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    _, _, key = gateway.create_key(balance_micros=0)
    before = len(upstream.requests)
    with _sdk(gateway, key) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m-text", messages=HELLO)
    assert caught.value.body["code"] == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == before
    assert _records(gateway, key) == {}


def test_exactly_the_output_limit_that_was_held_goes_upstream(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    _, _, key = gateway.create_key()
    with _sdk(gateway, key) as client:
        client.chat.completions.create(model="m-text", messages=HELLO)
        sent = upstream.requests[-1].body
        assert sent["max_tokens"] == 4096, "the model's default limit is sent (as max_tokens to a generic server)"
        assert "max_completion_tokens" not in sent
        client.chat.completions.create(model="m-text", messages=HELLO, max_tokens=77)
        assert upstream.requests[-1].body["max_tokens"] == 77


async def test_herd_on_a_small_balance_never_overdraws(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    account_id, _, key = gateway.create_key(balance_micros=5_000)  # exactly five 1000-micro holds
    before = sum(1 for r in upstream.requests if r.body and r.body.get("model") == "fake-slow")
    client = openai.AsyncOpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0)

    async def one() -> str:
        try:  # streamed: the fake streams slowly, so all the holds overlap
            stream = await client.chat.completions.create(model="herd", messages=HELLO, max_tokens=1000, stream=True)
            async for _ in stream:
                pass
            return "ok"
        except openai.RateLimitError as error:
            assert error.body["code"] == "insufficient_quota"
            return "refused"

    outcomes = await asyncio.gather(*(one() for _ in range(40)))
    await client.close()
    admitted = outcomes.count("ok")
    seen = sum(1 for r in upstream.requests if r.body and r.body.get("model") == "fake-slow") - before
    assert admitted == 5, outcomes
    assert seen == admitted, "the upstream saw only admitted requests"
    records = _records(gateway, key)
    assert len(records) == admitted
    account = gateway.account(account_id)
    assert account.balance_micros == 5_000 - sum(r.cost_micros for r in records.values()) >= 0
    _assert_books_balance(gateway, account_id)


def _open_stream_and_leave(gateway: RunningGateway, key: str, model: str, chunks: int) -> str:
    body = {"model": model, "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{gateway.http_url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=10) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        for _ in range(chunks):
            next(lines)
    return request_id


def test_client_leaving_is_billed_what_the_upstream_generated(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    account_id, _, key = gateway.create_key()
    request_id = _open_stream_and_leave(gateway, key, "m-slow", chunks=2)
    record = _wait_for_record(gateway, key, request_id)
    assert record.status == metering_pb2.USAGE_STATUS_CANCELLED
    assert not record.estimated, "drained to the upstream's own usage"
    assert record.cost_micros == _truth_cost(upstream, request_id)
    _assert_books_balance(gateway, account_id)


def test_client_leaving_a_silent_upstream_is_estimated_within_the_hold(gateway: RunningGateway,
                                                                      upstream: FakeOpenAIUpstream) -> None:
    account_id, _, key = gateway.create_key()
    before = upstream.disconnects
    with _sdk(gateway, key) as client, pytest.raises(httpx.ReadTimeout):
        with httpx.Client(timeout=0.5) as http:  # the hang never sends a byte: the client gives up
            http.post(f"{gateway.http_url}/v1/chat/completions", json={"model": "m-hang", "messages": HELLO},
                      headers={"Authorization": f"Bearer {key}"})
    deadline = time.monotonic() + 10
    while not (records := _records(gateway, key)) and time.monotonic() < deadline:
        time.sleep(0.1)
    (record,) = records.values()
    assert record.status == metering_pb2.USAGE_STATUS_CANCELLED and record.estimated
    assert 0 < record.cost_micros <= record.held_micros
    assert upstream.wait_for_disconnects(before + 1), "the upstream call was closed after the drain"
    _assert_books_balance(gateway, account_id)


def test_reset_mid_stream_bills_what_was_received_once(gateway: RunningGateway) -> None:
    account_id, _, key = gateway.create_key()
    with _sdk(gateway, key) as client:
        raw = client.chat.completions.with_raw_response.create(model="m-reset", messages=HELLO, stream=True)
        with pytest.raises(openai.APIError):
            list(raw.parse())
    record = _wait_for_record(gateway, key, raw.headers["x-request-id"])
    assert record.status == metering_pb2.USAGE_STATUS_UPSTREAM_ERROR and record.estimated
    assert 0 < record.cost_micros <= record.held_micros
    assert len(_records(gateway, key)) == 1
    _assert_books_balance(gateway, account_id)


def test_upstream_failure_before_output_is_free(gateway: RunningGateway) -> None:
    account_id, _, key = gateway.create_key(balance_micros=1_000_000)
    with _sdk(gateway, key) as client, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m-error", messages=HELLO)
    (record,) = _records(gateway, key).values()
    assert record.status == metering_pb2.USAGE_STATUS_UPSTREAM_ERROR and record.cost_micros == 0
    assert gateway.account(account_id).balance_micros == 1_000_000
    _assert_books_balance(gateway, account_id)


def test_missing_upstream_usage_is_estimated_and_flagged(gateway: RunningGateway) -> None:
    _, _, key = gateway.create_key()
    with _sdk(gateway, key) as client:
        chunks = list(client.chat.completions.create(model="m-no-usage", messages=HELLO, stream=True,
                                                     stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    (record,) = _records(gateway, key).values()
    assert record.estimated and record.cost_micros == 2 * usage.prompt_tokens + 5 * usage.completion_tokens


def test_balance_over_grpc_and_the_billing_endpoints(gateway: RunningGateway) -> None:
    _, _, key = gateway.create_key(balance_micros=3_000_000)
    with _sdk(gateway, key) as client:
        client.chat.completions.create(model="m-text", messages=HELLO)
    spent = sum(r.cost_micros for r in _records(gateway, key).values())
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        balance = metering_pb2_grpc.MeteringServiceStub(channel).GetBalance(
            metering_pb2.GetBalanceRequest(), metadata=(("authorization", f"Bearer {key}"),))
    assert balance.balance_micros == balance.available_micros == 3_000_000 - spent
    headers = {"Authorization": f"Bearer {key}"}
    subscription = httpx.get(f"{gateway.http_url}/v1/dashboard/billing/subscription", headers=headers).json()
    assert subscription["object"] == "billing_subscription" and subscription["hard_limit_usd"] == 3.0
    usage = httpx.get(f"{gateway.http_url}/v1/dashboard/billing/usage", headers=headers,
                      params={"start_date": "2020-01-01", "end_date": "2100-01-01"}).json()
    assert usage["total_usage"] == spent / 10_000
    bad = httpx.get(f"{gateway.http_url}/v1/dashboard/billing/usage", headers=headers, params={"start_date": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start_date"


def test_key_spend_limit_is_enforced_through_the_hold(gateway: RunningGateway, upstream: FakeOpenAIUpstream) -> None:
    account_id, key_id, key = gateway.create_key(balance_micros=10_000_000, spend_limit_micros=600)
    before = len(upstream.requests)
    with _sdk(gateway, key) as client:
        with pytest.raises(openai.RateLimitError) as caught:  # the default 4096-token hold alone is over the limit
            client.chat.completions.create(model="m-text", messages=HELLO)
        assert caught.value.body["code"] == "insufficient_quota" and "spend limit" in caught.value.body["message"]
        assert len(upstream.requests) == before
        admitted = 0
        for _ in range(20):
            try:
                client.chat.completions.create(model="m-text", messages=HELLO, max_tokens=5)
                admitted += 1
            except openai.RateLimitError:
                break
    spent = sum(r.cost_micros for r in _records(gateway, key).values())
    assert admitted >= 1 and spent <= 600
    assert gateway.account(account_id).balance_micros == 10_000_000 - spent
