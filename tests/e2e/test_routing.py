"""Routing end to end: fallback across routes, Retry-After, circuit breakers, the retry budget,
operator quota, and one charge per request, through the official openai SDK.

The upstreams are fakes scripted per model id (tests/routing_support.py); what
they count is the ground truth for how many attempts the gateway made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import grpc
import openai
import pytest
from prometheus_client import REGISTRY

from gateway_core.pb.gateway.admin.v1 import admin_pb2
from gateway_core.errors import error_info
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc, metering_pb2, metering_pb2_grpc, types_pb2
from tests.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.gateway_support import RunningGateway, running_gateway, settings_for
from tests.routing_support import (
    ScriptedUpstream,
    insufficient_quota,
    rate_limited,
    refused_base_url,
    reset_before_first_chunk,
    server_error,
)

HELLO = [{"role": "user", "content": "Hello, routed world!"}]


def _model(name: str, *routes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "routes": list(routes), "input_price": 2, "output_price": 5}


def _up(model: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "up", "model": model, **extra}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(hang_seconds=30) as fake:
        yield fake


@pytest.fixture(scope="module")
def claude() -> Iterator[FakeAnthropicUpstream]:
    with FakeAnthropicUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: ScriptedUpstream,
            claude: FakeAnthropicUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("routing"),
        providers=[
            {"name": "up", "type": "openai", "base_url": upstream.base_url, "first_token_timeout_seconds": 0.5,
             "total_timeout_seconds": 5},
            {"name": "dead", "type": "openai", "base_url": refused_base_url()},
            {"name": "brief", "type": "openai", "base_url": upstream.base_url, "total_timeout_seconds": 0.5},
            {"name": "claude", "type": "anthropic", "base_url": claude.base_url},
        ],
        models=[
            _model("refused-then-ok", {"provider": "dead", "model": "x"}, _up("fb-1")),
            _model("five-hundred-then-ok", _up("fake-error-500"), _up("fb-2")),
            _model("overloaded-then-ok", {"provider": "claude", "model": "claude-error-529"}, _up("fb-3")),
            _model("hang-then-ok", _up("fake-hang"), _up("fb-4")),
            _model("unary-hang-then-ok", {"provider": "brief", "model": "fake-hang"}, _up("fb-10")),
            _model("early-reset-then-ok", _up("early-reset"), _up("fb-5")),
            _model("late-reset", _up("fake-reset"), _up("fb-6")),
            _model("bad-request", _up("fake-error-400"), _up("fb-7")),
            _model("rate-limited", _up("rl-a"), _up("fb-8")),
            _model("rate-limited-alone", _up("rl-alone")),
            _model("rate-limited-deadline", _up("rl-deadline")),
            _model("quota", _up("quota-a"), _up("fb-9")),
            _model("quota-alone", _up("quota-alone")),
            _model("weighted", _up("w-heavy", priority=0, weight=3), _up("w-light", priority=0, weight=1),
                   _up("w-backup")),
        ],
        routing={"max_attempts": 3, "retry_budget_burst": 1000, "breaker_failure_threshold": 100,
                 "max_retry_wait_seconds": 3},
    )
    with running_gateway(settings) as running:
        yield running


def _sdk(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0)


def _record(gateway: RunningGateway, key: str, request_id: str) -> metering_pb2.UsageRecord:
    deadline = time.monotonic() + 5
    while True:
        with grpc.insecure_channel(gateway.grpc_target) as channel:
            page = metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
                metering_pb2.ListUsageRecordsRequest(page_size=1000), metadata=(("authorization", f"Bearer {key}"),))
        found = [r for r in page.usage_records if r.request_id == request_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, "exactly one usage record per request"
            return found[0]
        time.sleep(0.05)


def _sample(name: str, **labels: str) -> float:
    """A counter's value in this process's registry (the gateway runs in-process)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _charged_once(gateway: RunningGateway, account_id: str, request_id: str, cost: int) -> None:
    """One hold, one settlement for the request, and the balance moved by exactly its cost."""
    entries = [e for e in gateway.ledger(account_id) if e.request_id == request_id]
    holds = [e for e in entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_HOLD]
    settles = [e for e in entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_SETTLE]
    assert len(holds) == 1 and len(settles) == 1, entries  # (plus the release of the hold's rest)
    assert -settles[0].amount_micros == cost == -sum(e.amount_micros for e in entries)
    account = gateway.account(account_id)
    assert account.held_micros == 0 and account.balance_micros == 10_000_000 - cost


@pytest.mark.parametrize(("model", "answering"), [
    ("refused-then-ok", "fb-1"),
    ("five-hundred-then-ok", "fb-2"),
    ("overloaded-then-ok", "fb-3"),
])
def test_a_failing_first_route_falls_back_and_the_answer_is_charged_once(
    gateway: RunningGateway, upstream: ScriptedUpstream, model: str, answering: str, caplog: pytest.LogCaptureFixture
) -> None:
    account_id, _, key = gateway.create_key()
    fallbacks = _sample("tollgate_fallbacks_total", model=model)
    answered = _sample("tollgate_upstream_attempts_total", provider="up", route=answering, outcome="ok")
    with _sdk(gateway, key) as client, caplog.at_level(logging.INFO, logger="tollgate.routing"):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO)
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.model == model
    request_id = raw.headers["x-request-id"]
    record = _record(gateway, key, request_id)
    assert (record.provider, record.upstream_model) == ("up", answering)
    assert record.status == metering_pb2.USAGE_STATUS_OK
    sent = upstream.usage_sent[request_id]
    assert record.cost_micros == 2 * sent["prompt_tokens"] + 5 * sent["completion_tokens"] > 0
    _charged_once(gateway, account_id, request_id, record.cost_micros)
    assert upstream.calls(answering) == 1
    lines = [r.upstream_attempt for r in caplog.records  # type: ignore[attr-defined]
             if getattr(r, "upstream_attempt", {}).get("request_id") == request_id]
    assert [(line["attempt"], line["outcome"] == "ok", line["route"]) for line in lines] == [
        (1, False, lines[0]["route"]), (2, True, answering)]
    assert lines[0]["outcome"] in ("UPSTREAM_UNAVAILABLE", "UPSTREAM_ERROR") and lines[1]["latency_ms"] >= 0
    assert _sample("tollgate_fallbacks_total", model=model) == fallbacks + 1
    assert _sample("tollgate_upstream_attempts_total", provider="up", route=answering, outcome="ok") == answered + 1


def test_a_stream_that_hangs_before_its_first_chunk_falls_back(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    _, _, key = gateway.create_key()
    started = time.monotonic()
    with _sdk(gateway, key) as client:
        chunks = list(client.chat.completions.create(model="hang-then-ok", messages=HELLO, stream=True))
    assert time.monotonic() - started < 5, "first_token_timeout_seconds (0.5 s) cut the silent route short"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert upstream.calls("fake-hang") == 1 and upstream.calls("fb-4") == 1


def test_a_unary_call_past_its_total_timeout_falls_back(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    _, _, key = gateway.create_key()
    before = upstream.calls("fake-hang")
    started = time.monotonic()
    with _sdk(gateway, key) as client:
        raw = client.chat.completions.with_raw_response.create(model="unary-hang-then-ok", messages=HELLO)
    assert raw.parse().choices[0].message.content
    assert 0.5 <= time.monotonic() - started < 5, "total_timeout_seconds (0.5 s) ended the silent attempt"
    assert upstream.calls("fake-hang") == before + 1
    assert _record(gateway, key, raw.headers["x-request-id"]).provider == "up"


def test_a_stream_reset_before_its_first_chunk_falls_back(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script("early-reset", reset_before_first_chunk())
    account_id, _, key = gateway.create_key()
    with _sdk(gateway, key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="early-reset-then-ok", messages=HELLO, stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    request_id = raw.headers["x-request-id"]
    record = _record(gateway, key, request_id)
    assert (record.upstream_model, record.status) == ("fb-5", metering_pb2.USAGE_STATUS_OK)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == record.completion_tokens
    _charged_once(gateway, account_id, request_id, record.cost_micros)


def test_after_the_first_chunk_there_is_no_fallback(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    _, _, key = gateway.create_key()
    received: list[str] = []
    with _sdk(gateway, key) as client, pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="late-reset", messages=HELLO, stream=True):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received), "the client saw the first route's chunks before the error"
    assert upstream.calls("fb-6") == 0


def test_a_deterministic_400_is_not_retried(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    _, _, key = gateway.create_key()
    before = upstream.calls("fake-error-400")
    with _sdk(gateway, key) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="bad-request", messages=HELLO)
    assert caught.value.param == "temperature"
    assert upstream.calls("fake-error-400") == before + 1 and upstream.calls("fb-7") == 0


def test_a_route_that_asked_to_wait_is_not_called_sooner(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script("rl-a", rate_limited(retry_after="2"))
    _, _, key = gateway.create_key()
    with _sdk(gateway, key) as client:
        first = client.chat.completions.create(model="rate-limited", messages=HELLO)
        second = client.chat.completions.create(model="rate-limited", messages=HELLO)
        assert first.choices[0].message.content and second.choices[0].message.content
        assert upstream.calls("rl-a") == 1, "the 429's Retry-After kept the second request off the route"
        assert upstream.calls("fb-8") == 2
        time.sleep(2.1)
        client.chat.completions.create(model="rate-limited", messages=HELLO)
    assert upstream.calls("rl-a") == 2, "once Retry-After passed, the first route serves again"


def test_the_only_route_is_waited_for_within_reach_and_not_beyond(gateway: RunningGateway,
                                                                  upstream: ScriptedUpstream) -> None:
    _, _, key = gateway.create_key()
    upstream.script("rl-alone", rate_limited(retry_after="1"))
    with _sdk(gateway, key) as client:
        started = time.monotonic()
        client.chat.completions.create(model="rate-limited-alone", messages=HELLO)
        assert 1.0 <= time.monotonic() - started < 3, "waited out the 1 s Retry-After, then answered"
        upstream.script("rl-alone", rate_limited(retry_after="30"))
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="rate-limited-alone", messages=HELLO)
    assert time.monotonic() - started < 1, "a 30 s wait is past max_retry_wait_seconds: fail at once"
    assert caught.value.status_code == 503 and caught.value.code == "upstream_rate_limited"
    assert upstream.calls("rl-alone") == 3


def test_a_wait_longer_than_the_callers_deadline_fails_at_once(gateway: RunningGateway,
                                                               upstream: ScriptedUpstream) -> None:
    """Retry-After 2 s is within max_retry_wait_seconds (3 s) but not within the caller's 1.5 s gRPC deadline."""
    upstream.script("rl-deadline", rate_limited(retry_after="2"))
    _, _, key = gateway.create_key()
    request = chat_pb2.CreateChatCompletionRequest(model="rate-limited-deadline")
    request.messages.add(role=types_pb2.ROLE_USER, content="Hello over gRPC")
    before = upstream.calls("rl-deadline")
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            chat_pb2_grpc.ChatServiceStub(channel).CreateChatCompletion(
                request, metadata=(("authorization", f"Bearer {key}"),), timeout=1.5)
    assert time.monotonic() - started < 1.0, "failed without sleeping into the deadline"
    info = error_info(caught.value)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and info is not None
    assert info.reason == "UPSTREAM_RATE_LIMITED"
    assert upstream.calls("rl-deadline") == before + 1


def test_an_exhausted_operator_quota_is_never_the_callers_insufficient_quota(
    gateway: RunningGateway, upstream: ScriptedUpstream
) -> None:
    upstream.script("quota-a", insufficient_quota())
    upstream.script("quota-alone", insufficient_quota())
    account_id, _, key = gateway.create_key()
    with _sdk(gateway, key) as client:
        assert client.chat.completions.create(model="quota", messages=HELLO).choices[0].message.content
        assert client.chat.completions.create(model="quota", messages=HELLO).choices[0].message.content
        assert upstream.calls("quota-a") == 1, "the route with no quota rests (quota_cooldown_seconds)"
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="quota-alone", messages=HELLO)
    error = caught.value
    assert error.status_code == 503 and error.code == "upstream_rate_limited"
    assert error.code != "insufficient_quota" and error.type != "insufficient_quota"
    assert "quota" not in error.message.lower() and "balance" not in error.message.lower()
    assert upstream.calls("quota-alone") == 1
    assert gateway.account(account_id).held_micros == 0


def test_equal_priorities_share_load_by_weight(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    _, _, key = gateway.create_key()
    with _sdk(gateway, key) as client:
        for _ in range(80):
            client.chat.completions.create(model="weighted", messages=HELLO, max_tokens=5)
    heavy, light = upstream.calls("w-heavy"), upstream.calls("w-light")
    assert heavy + light == 80 and upstream.calls("w-backup") == 0
    assert 45 <= heavy <= 75, (heavy, light)  # 3:1 expects 60; binomial sd ~3.9


def test_circuit_opens_skips_the_route_then_a_probe_closes_it(tmp_path_factory: pytest.TempPathFactory,
                                                              upstream: ScriptedUpstream) -> None:
    upstream.script("cb-flaky", server_error(), server_error())
    settings = settings_for(
        tmp_path_factory.mktemp("breaker"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url}],
        models=[_model("breaker", _up("cb-flaky"), _up("cb-steady"))],
        routing={"breaker_failure_threshold": 2, "breaker_cooldown_seconds": 1},
    )
    with running_gateway(settings) as gateway:
        _, _, key = gateway.create_key()
        with _sdk(gateway, key) as client:
            for _ in range(4):
                client.chat.completions.create(model="breaker", messages=HELLO)
            assert upstream.calls("cb-flaky") == 2, "two failures opened the circuit; then the route was skipped"
            assert upstream.calls("cb-steady") == 4
            time.sleep(1.1)
            for _ in range(3):
                client.chat.completions.create(model="breaker", messages=HELLO)
    assert upstream.calls("cb-flaky") == 5, "after the cooldown one probe succeeded and closed the circuit"
    assert upstream.calls("cb-steady") == 4


def test_when_every_circuit_is_open_the_longest_open_route_is_still_tried(
    tmp_path_factory: pytest.TempPathFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script("all-open", server_error())
    settings = settings_for(
        tmp_path_factory.mktemp("all-open"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url}],
        models=[_model("lonely", _up("all-open"))],
        routing={"max_attempts": 1, "breaker_failure_threshold": 1, "breaker_cooldown_seconds": 60},
    )
    with running_gateway(settings) as gateway:
        _, _, key = gateway.create_key()
        with _sdk(gateway, key) as client:
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="lonely", messages=HELLO)
            answer = client.chat.completions.create(model="lonely", messages=HELLO)
    assert answer.choices[0].message.content, "an open circuit with nothing else left is tried, not refused"
    assert upstream.calls("all-open") == 2


def test_the_retry_budget_bounds_attempts_when_everything_fails(tmp_path_factory: pytest.TempPathFactory,
                                                                upstream: ScriptedUpstream) -> None:
    routes = [_up(f"budget-{i}") for i in range(3)]
    for route in routes:
        upstream.script(route["model"], *[server_error() for _ in range(20)])
    settings = settings_for(
        tmp_path_factory.mktemp("budget"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url}],
        models=[_model("doomed", *routes)],
        routing={"max_attempts": 3, "retry_budget_ratio": 0.2, "retry_budget_burst": 2},
    )
    requests = 10
    with running_gateway(settings) as gateway:
        account_id, _, key = gateway.create_key()
        with _sdk(gateway, key) as client:
            for _ in range(requests):
                with pytest.raises(openai.InternalServerError):
                    client.chat.completions.create(model="doomed", messages=HELLO)
        assert gateway.account(account_id).balance_micros == 10_000_000, "failures before output are free"
    attempts = sum(upstream.calls(route["model"]) for route in routes)
    # Unbounded it would be 3 x 10 = 30; the bucket allows burst 2 + 0.2 x 10 requests of retries.
    assert requests + 1 <= attempts <= requests + 2 + 2, attempts
