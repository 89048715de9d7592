"""Metrics, the access log and /metrics, end to end: the openai SDK against a running gateway.

Metrics are process-wide, so each test compares a scrape before and after its
own requests, on label sets only its requests use where it can.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import RunningGateway, running_gateway, settings_for

METRICS_TOKEN = "metrics-token-0123456789"
HELLO = [{"role": "user", "content": "Hello, metrics"}]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream(expected_key="sk-observability-upstream", slow_interval=0.2, slow_chunks=20) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAIUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("observability"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url, "api_key": "sk-observability-upstream"}],
        models=[
            {"name": "obs-text", "routes": [{"provider": "up", "model": "fake-text"}], "input_price": 1, "output_price": 2},
            {"name": "obs-slow", "routes": [{"provider": "up", "model": "fake-slow"}], "input_price": 1, "output_price": 2},
        ],
    )
    with running_gateway(settings, {"max_body_bytes": 4096, "metrics_token": METRICS_TOKEN}) as running:
        yield running


def scrape(gateway: RunningGateway) -> Samples:
    reply = httpx.get(f"{gateway.http_url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """The last line of a stream is written just after the client read [DONE]; wait for it."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def access_lines(caplog: pytest.LogCaptureFixture, message: str = "chat request") -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tollgate.access" and r.getMessage() == message]


def test_requests_tokens_money_and_latency_are_counted(gateway: RunningGateway) -> None:
    account_id, _, secret = gateway.create_key()
    before = scrape(gateway)
    balance_before = gateway.account(account_id).balance_micros
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=secret, max_retries=0) as sdk:
        whole = sdk.chat.completions.create(model="obs-text", messages=HELLO)
        chunks = list(sdk.chat.completions.create(
            model="obs-text", messages=HELLO, stream=True, stream_options={"include_usage": True}
        ))
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="no-such-model-xyz", messages=HELLO)
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key="sk-tg-not-a-real-key", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(model="obs-text", messages=HELLO)
    streamed = chunks[-1].usage
    assert whole.usage is not None and streamed is not None
    ok = {"model": "obs-text", "provider": "up", "route": "up/fake-text", "status": "ok"}

    def counted() -> bool:
        return value(scrape(gateway), "tollgate_requests_total", **ok) - value(before, "tollgate_requests_total", **ok) == 2

    eventually(counted)
    after = scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    up = {"model": "obs-text", "provider": "up"}
    assert delta("tollgate_tokens_total", direction="prompt", **up) == whole.usage.prompt_tokens + streamed.prompt_tokens
    assert delta("tollgate_tokens_total", direction="completion", **up) == (
        whole.usage.completion_tokens + streamed.completion_tokens
    )
    spent = balance_before - gateway.account(account_id).balance_micros
    assert spent > 0 and delta("tollgate_cost_micros_total", **up) == spent
    assert delta("tollgate_request_duration_seconds_count", mode="unary", **up) == 1
    assert delta("tollgate_request_duration_seconds_count", mode="stream", **up) == 1
    assert delta("tollgate_time_to_first_token_seconds_count", **up) == 1
    assert delta("tollgate_gateway_overhead_seconds_count", mode="stream") >= 1
    overhead = delta("tollgate_gateway_overhead_seconds_sum", mode="unary")
    assert 0 < overhead < delta("tollgate_request_duration_seconds_sum", mode="unary", **up)
    # Refused before upstream: counted as rejections by reason, with bounded labels only.
    unknown = {"model": "unknown", "provider": "", "route": "", "status": "MODEL_NOT_FOUND"}
    assert delta("tollgate_requests_total", **unknown) == 1
    assert delta("tollgate_rejections_total", reason="MODEL_NOT_FOUND") >= 1
    assert delta("tollgate_rejections_total", reason="INVALID_API_KEY") >= 1
    assert not any("no-such-model-xyz" in str(labels) for _, labels in after)
    assert delta("tollgate_streams_in_flight") == 0 and delta("tollgate_holds_outstanding") == 0


def test_one_access_line_per_request_with_what_was_billed(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tollgate.access")
    account_id, key_id, secret = gateway.create_key()
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=secret, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="obs-text", messages=HELLO)
    request_id, completion = raw.headers["x-request-id"], raw.parse()
    assert completion.usage is not None
    eventually(lambda: any(r.request_id == request_id for r in access_lines(caplog)))
    [line] = [r for r in access_lines(caplog) if r.request_id == request_id]
    assert (line.account_id, line.key_id, line.model, line.provider, line.route, line.mode, line.status) == (
        account_id, key_id, "obs-text", "up", "up/fake-text", "unary", "ok"
    )
    assert (line.prompt_tokens, line.completion_tokens) == (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert line.cost_micros > 0 and line.ttft_ms is not None
    # The fake upstream answers over real HTTP: waiting on it is part, not all, of the latency.
    # Whole milliseconds, truncated: the local fake can answer within one (the exact wait is
    # checked against the overhead metric in test_requests_tokens_money_and_latency_are_counted).
    assert 0 <= line.upstream_ms <= line.latency_ms
    assert secret not in caplog.text


def test_a_stream_the_client_left_gets_its_line_once_settled(
    gateway: RunningGateway, upstream: FakeOpenAIUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tollgate.access")
    _, key_id, secret = gateway.create_key()
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=secret, max_retries=0) as sdk:
        stream = sdk.chat.completions.create(model="obs-slow", messages=HELLO, stream=True)
        next(iter(stream))
        stream.close()  # leave after the first chunk; the gateway drains and bills what it saw
    eventually(lambda: any(r.key_id == key_id for r in access_lines(caplog)))
    time.sleep(0.3)  # a second line, if one were coming, would arrive by now
    [line] = [r for r in access_lines(caplog) if r.key_id == key_id]
    assert line.status == "cancelled" and line.mode == "stream" and line.completion_tokens >= 1


@pytest.mark.parametrize(
    "body, status",
    [(b"{not json", 400), (b'{"model": "obs-text", "messages": []}' + b" " * 5000, 413)],
)
def test_the_facade_logs_requests_that_never_reach_the_core(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture, body: bytes, status: int
) -> None:
    caplog.set_level(logging.INFO, logger="tollgate.access")
    reply = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=body,
                       headers={"authorization": "Bearer sk-tg-whatever", "content-type": "application/json"})
    assert reply.status_code == status
    request_id = reply.headers["x-request-id"]
    # A 413 is answered before the body is read, so its log line may land just after the reply.
    eventually(lambda: any(r.request_id == request_id for r in access_lines(caplog, "http request")))
    [line] = [r for r in access_lines(caplog, "http request") if r.request_id == request_id]
    assert (line.status, line.method, line.path) == (status, "POST", "/v1/chat/completions")
    assert not [r for r in access_lines(caplog) if r.request_id == request_id]


def test_metrics_need_the_metrics_token_never_a_user_key(gateway: RunningGateway) -> None:
    secret = gateway.create_key()[2]
    assert httpx.get(f"{gateway.http_url}/metrics").status_code == 401
    denied = httpx.get(f"{gateway.http_url}/metrics", headers={"authorization": f"Bearer {secret}"})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_metrics_token"
    assert "tollgate_requests_total" in scrape_text(gateway)


def scrape_text(gateway: RunningGateway) -> str:
    return httpx.get(f"{gateway.http_url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text


def test_metrics_are_open_without_a_token(tmp_path: Path) -> None:
    with running_gateway(settings_for(tmp_path)) as running:
        reply = httpx.get(f"{running.http_url}/metrics")
    assert reply.status_code == 200 and "# TYPE tollgate_requests_total counter" in reply.text
