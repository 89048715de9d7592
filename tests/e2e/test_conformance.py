"""One conformance suite for every provider type, seen from the official openai SDK.

Each backend is a fake upstream speaking one provider's exact wire format
(OpenAI chat completions, Anthropic Messages, Gemini generateContent) behind a
real gateway. The same scenarios run against each: a new provider is done when
it passes. Scenario names map to each fake's scripted model ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import openai
import pytest

from gateway_core.pb.gateway.v1 import metering_pb2, metering_pb2_grpc
from tests.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.fakes.gemini_upstream import FakeGeminiUpstream
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import RunningGateway, running_gateway, settings_for

UPSTREAM_KEY = "conformance-upstream-key-AbCdEf0123456789xyz"
SCENARIOS = ("text", "tools", "max-tokens", "midstream-error", "reset",
             "error-400", "error-401", "error-429", "error-500", "error-503")
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
HELLO = [{"role": "user", "content": "Hello, conformance!"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def _openai_truth(usage: dict[str, Any]) -> tuple[int, int]:
    return usage["prompt_tokens"], usage["completion_tokens"]


def _anthropic_truth(usage: dict[str, Any]) -> tuple[int, int]:
    prompt = usage.get("input_tokens", 0) + usage.get("cache_read_input_tokens", 0) + usage.get(
        "cache_creation_input_tokens", 0)
    return prompt, usage["output_tokens"]


def _gemini_truth(usage: dict[str, Any]) -> tuple[int, int]:
    return usage["promptTokenCount"], usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)


def _openai_image(body: dict[str, Any]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in body["messages"])


def _anthropic_image(body: dict[str, Any]) -> bool:
    return any(isinstance(m.get("content"), list) and any(b.get("type") == "image" for b in m["content"])
               for m in body["messages"])


def _gemini_image(body: dict[str, Any]) -> bool:
    return any("inlineData" in part for content in body["contents"] for part in content["parts"])


@dataclass(frozen=True)
class Backend:
    """How one provider type is faked and named."""

    type: str
    fake: Callable[..., Any]
    prefix: str
    truth: Callable[[dict[str, Any]], tuple[int, int]]
    saw_image: Callable[[dict[str, Any]], bool]

    def model_id(self, scenario: str) -> str:
        if scenario == "max-tokens" and self.type == "openai":
            return "fake-text"  # the OpenAI fake truncates at the client's limit
        if scenario == "error-401" and self.type == "gemini":
            return "gemini-error-403"  # Google answers a bad key with 400/403, never 401
        return f"{self.prefix}-{scenario}"


BACKENDS = [
    Backend("openai", FakeOpenAIUpstream, "fake", _openai_truth, _openai_image),
    Backend("anthropic", FakeAnthropicUpstream, "claude", _anthropic_truth, _anthropic_image),
    Backend("gemini", FakeGeminiUpstream, "gemini", _gemini_truth, _gemini_image),
]


@dataclass
class Harness:
    backend: Backend
    upstream: Any
    gateway: RunningGateway
    key: str

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.http_url}/v1", api_key=self.key, max_retries=0)

    def billed(self, request_id: str) -> metering_pb2.UsageRecord:
        with grpc.insecure_channel(self.gateway.grpc_target) as channel:
            records = metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
                metering_pb2.ListUsageRecordsRequest(page_size=1000), metadata=(("authorization", f"Bearer {self.key}"),)
            ).usage_records
        (record,) = [r for r in records if r.request_id == request_id]
        return record


@pytest.fixture(scope="module", params=BACKENDS, ids=lambda b: b.type)
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    backend: Backend = request.param
    with backend.fake(expected_key=UPSTREAM_KEY) as upstream:
        settings = settings_for(
            tmp_path_factory.mktemp(backend.type),
            providers=[{"name": "up", "type": backend.type, "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}],
            models=[{"name": scenario, "routes": [{"provider": "up", "model": backend.model_id(scenario)}],
                     "input_price": 2, "output_price": 5} for scenario in SCENARIOS],
        )
        with running_gateway(settings) as gateway:
            yield Harness(backend, upstream, gateway, gateway.create_key()[2])


def test_plain_text_is_billed_from_the_provider_usage(harness: Harness) -> None:
    with harness.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="text", messages=HELLO)
    reply, request_id = raw.parse(), raw.headers["x-request-id"]
    assert reply.object == "chat.completion" and reply.model == "text"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    prompt, completion = harness.backend.truth(harness.upstream.usage_sent[request_id])
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt, completion)
    record = harness.billed(request_id)
    assert not record.estimated and record.cost_micros == 2 * prompt + 5 * completion


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_with_and_without_usage(harness: Harness, include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    with harness.client() as client:
        whole = client.chat.completions.create(model="text", messages=HELLO)
        chunks = list(client.chat.completions.create(model="text", messages=HELLO, stream=True, **options))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len({c.id for c in chunks}) == 1
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    else:
        assert all(c.choices and c.usage is None for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls(harness: Harness, stream: bool) -> None:
    messages = [{"role": "user", "content": "Weather and time in Paris?"}]
    with harness.client() as client:
        if stream:
            with client.chat.completions.stream(model="tools", messages=messages, tools=[WEATHER, TIME]) as events:
                reply = events.get_final_completion()
        else:
            reply = client.chat.completions.create(model="tools", messages=messages, tools=[WEATHER, TIME])
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert len(calls) == 2 and len({c.id for c in calls}) == 2
        assert all(c.type == "function" and c.function.name in ("get_weather", "get_time") for c in calls)
        assert all(isinstance(json.loads(c.function.arguments), dict) for c in calls)
        follow_up = client.chat.completions.create(model="tools", tools=[WEATHER, TIME], messages=[
            *messages,
            {"role": "assistant", "content": None, "tool_calls": [c.model_dump(exclude_none=True) for c in calls]},
            *[{"role": "tool", "tool_call_id": c.id, "content": '{"ok": true}'} for c in calls],
        ])
    assert follow_up.choices[0].finish_reason == "stop" and follow_up.choices[0].message.content


def test_image_input_reaches_the_provider_in_its_own_dialect(harness: Harness) -> None:
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": IMAGE}}]
    with harness.client() as client:
        reply = client.chat.completions.create(model="text", messages=[{"role": "user", "content": content}])
    assert reply.choices[0].message.content
    assert harness.backend.saw_image(harness.upstream.requests[-1].body)


def test_output_limit_gives_finish_reason_length(harness: Harness) -> None:
    with harness.client() as client:
        reply = client.chat.completions.create(model="max-tokens", messages=HELLO, max_tokens=2)
        chunks = list(client.chat.completions.create(model="max-tokens", messages=HELLO, max_tokens=2, stream=True))
    assert reply.choices[0].finish_reason == "length"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


@pytest.mark.parametrize("scenario", ["midstream-error", "reset"])
def test_failures_after_the_first_byte_are_in_band(harness: Harness, scenario: str) -> None:
    with harness.client() as client:
        raw = client.chat.completions.with_raw_response.create(model=scenario, messages=HELLO, stream=True)
        with pytest.raises(openai.APIError):
            list(raw.parse())
    assert raw.status_code == 200
    record = harness.billed(raw.headers["x-request-id"])
    assert record.status == metering_pb2.USAGE_STATUS_UPSTREAM_ERROR and record.cost_micros <= record.held_micros


@pytest.mark.parametrize(("scenario", "status", "error_class"), [
    ("error-400", 400, openai.BadRequestError),
    ("error-401", 502, openai.InternalServerError),
    ("error-429", 503, openai.InternalServerError),
    ("error-500", 503, openai.InternalServerError),
    ("error-503", 503, openai.InternalServerError),
])
@pytest.mark.parametrize("stream", [False, True])
def test_each_error_class(harness: Harness, scenario: str, status: int, error_class: type, stream: bool) -> None:
    with harness.client() as client, pytest.raises(error_class) as caught:
        client.chat.completions.create(model=scenario, messages=HELLO, stream=stream)
    response = caught.value.response
    assert response.status_code == status
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert UPSTREAM_KEY not in response.text and UPSTREAM_KEY[:16] not in response.text
    assert harness.upstream.base_url.split("//")[1] not in response.text, "no upstream URL"
    if scenario == "error-429":
        assert int(response.headers["retry-after"]) >= 1
    record = harness.billed(response.headers["x-request-id"])
    assert record.cost_micros == 0, "a failure before any output is free"
