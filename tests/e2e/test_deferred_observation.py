"""Under `tollgate serve` (the facade calls the core in-process) a unary request's observation
follows its answer: the openai SDK gets the completion, and the access line, the
upstream_attempt line and the metrics of that request each appear exactly once,
with what was billed, including for requests answered just before the gateway stops."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from prometheus_client import REGISTRY

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import running_gateway, settings_for

HELLO = [{"role": "user", "content": "Hello, deferred lines"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream(expected_key="sk-deferred-upstream") as fake:
        yield fake


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _lines(caplog: pytest.LogCaptureFixture, request_id: str) -> tuple[list[logging.LogRecord], list[logging.LogRecord]]:
    access = [r for r in caplog.records if r.name == "tollgate.access" and r.getMessage() == "chat request"
              and getattr(r, "request_id", None) == request_id]
    attempts = [r for r in caplog.records if r.name == "tollgate.routing"
                and getattr(r, "upstream_attempt", {}).get("request_id") == request_id]
    return access, attempts


def _requests_counted() -> float:
    labels = {"model": "deferred-text", "provider": "up", "route": "up/fake-text", "status": "ok"}
    return REGISTRY.get_sample_value("tollgate_requests_total", labels) or 0.0


def test_each_request_gets_its_lines_and_counts_once_even_when_the_gateway_stops_right_after(
    tmp_path: Path, upstream: FakeOpenAIUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = settings_for(
        tmp_path,
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url, "api_key": "sk-deferred-upstream"}],
        models=[{"name": "deferred-text", "routes": [{"provider": "up", "model": "fake-text"}],
                 "input_price": 1, "output_price": 2}],
    )
    counted = _requests_counted()
    answered: list[tuple[str, openai.types.chat.ChatCompletion]] = []
    with running_gateway(settings, in_process=True) as gateway:
        _, key_id, secret = gateway.create_key()
        with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=secret, max_retries=0) as sdk:
            for _ in range(4):
                raw = sdk.chat.completions.with_raw_response.create(model="deferred-text", messages=HELLO)
                answered.append((raw.headers["x-request-id"], raw.parse()))
        first_id = answered[0][0]
        _eventually(lambda: all(_lines(caplog, first_id)))
    # The gateway has stopped: every request's lines are out, each exactly once.
    for request_id, completion in answered:
        [line], [attempt] = _lines(caplog, request_id)
        assert completion.usage is not None
        assert (line.key_id, line.model, line.mode, line.status) == (key_id, "deferred-text", "unary", "ok")
        assert (line.prompt_tokens, line.completion_tokens) == (
            completion.usage.prompt_tokens, completion.usage.completion_tokens)
        assert line.cost_micros > 0 and 0 <= line.upstream_ms <= line.latency_ms
        assert attempt.upstream_attempt["outcome"] == "ok" and attempt.upstream_attempt["route"] == "fake-text"
    assert _requests_counted() == counted + len(answered)
    assert secret not in caplog.text
