"""End to end with Claude behind the gateway: the official openai SDK -> facade -> gRPC core ->
AnthropicProvider -> a fake Anthropic upstream (real HTTP, Anthropic's exact wire format).

The point is the user's promise: switch `model` to a Claude-routed name and
nothing else in OpenAI SDK code changes, streaming and tool calling included,
and the account pays for what Anthropic reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import openai
import pytest
from pydantic import BaseModel

from gateway_core.pb.gateway.v1 import metering_pb2, metering_pb2_grpc
from tests.fakes.anthropic_scripts import THINKING, TOOL_PREAMBLE, TOOL_REPLY
from tests.fakes.anthropic_upstream import DEFAULT_REPLY, FakeAnthropicUpstream
from tests.gateway_support import RunningGateway, running_gateway, settings_for

ANTHROPIC_KEY = "sk-ant-api03-E2eOperator0Key1Never2Leaves3Gateway-abcdefABCDEF0123"
SCRIPTS = ["claude-text", "claude-echo", "claude-tools", "claude-thinking", "claude-cached",
           "claude-midstream-error", "claude-error-529", "claude-error-401"]
HELLO = [{"role": "user", "content": "Hello there, gateway!"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class Forecast(BaseModel):
    """The structured answer the client asks for."""

    city: str
    temp_c: float


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeAnthropicUpstream]:
    with FakeAnthropicUpstream(expected_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeAnthropicUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("anthropic-e2e"),
        providers=[{"name": "claude", "type": "anthropic", "base_url": upstream.base_url, "api_key": ANTHROPIC_KEY}],
        # $2 in, $5 out per 1M tokens: a request costs exactly 2 x prompt + 5 x completion micro-USD.
        models=[{"name": f"sonnet-{script.removeprefix('claude-')}",
                 "routes": [{"provider": "claude", "model": script}], "input_price": 2, "output_price": 5}
                for script in SCRIPTS],
    )
    with running_gateway(settings) as running:
        yield running


@pytest.fixture(scope="module")
def key(gateway: RunningGateway) -> str:
    return gateway.create_key()[2]


@pytest.fixture()
def client(gateway: RunningGateway, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0) as sdk:
        yield sdk


def test_text(client: openai.OpenAI, upstream: FakeAnthropicUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="sonnet-text", messages=HELLO)
    reply = raw.parse()
    assert reply.model == "sonnet-text" and reply.object == "chat.completion" and reply.id.startswith("msg_")
    assert reply.choices[0].message.content == DEFAULT_REPLY and reply.choices[0].finish_reason == "stop"
    truth = upstream.usage_sent[raw.headers["x-request-id"]]
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (truth["input_tokens"], truth["output_tokens"])
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages" and sent.body["model"] == "claude-text"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and "authorization" not in sent.headers


def test_stream(client: openai.OpenAI, upstream: FakeAnthropicUpstream) -> None:
    chunks = list(client.chat.completions.create(
        model="sonnet-text", messages=HELLO, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == upstream.usage_sent[_last_request_id(upstream)]["output_tokens"]
    assert len({c.id for c in chunks}) == 1 and upstream.requests[-1].body["stream"] is True


def test_streamed_tool_calls_accumulate_and_round_trip(client: openai.OpenAI, upstream: FakeAnthropicUpstream) -> None:
    question = [{"role": "user", "content": "Weather in Paris and Berlin?"}]
    with client.chat.completions.stream(model="sonnet-tools", messages=question, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == TOOL_PREAMBLE
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert calls[0].id != calls[1].id and all(c.id.startswith("toolu_") for c in calls)
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Berlin"}]

    follow_up = client.chat.completions.create(model="sonnet-tools", tools=[WEATHER_TOOL], messages=[
        *question,
        {"role": "assistant", "content": choice.message.content,
         "tool_calls": [c.model_dump(exclude_none=True) for c in calls]},
        *[{"role": "tool", "tool_call_id": c.id, "content": '{"temp_c": 21}'} for c in calls],
    ])
    assert follow_up.choices[0].message.content == TOOL_REPLY
    sent = upstream.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["type"] for b in sent[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert [(b["type"], b["tool_use_id"]) for b in sent[2]["content"]] == [("tool_result", c.id) for c in calls]


def test_images(client: openai.OpenAI, upstream: FakeAnthropicUpstream) -> None:
    reply = client.chat.completions.create(model="sonnet-echo", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}])
    assert reply.choices[0].message.content == "What is this?"
    assert upstream.requests[-1].body["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="sonnet-echo", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]}])
    assert caught.value.body["param"] == "messages[0].content[0].image_url.url"


def test_response_format_json_schema(client: openai.OpenAI, upstream: FakeAnthropicUpstream) -> None:
    asked = [{"role": "user", "content": "Forecast for Paris as JSON."}]
    parsed = client.chat.completions.parse(model="sonnet-text", messages=asked, response_format=Forecast)
    choice = parsed.choices[0]
    assert choice.message.parsed == Forecast(city="Paris", temp_c=21.5)
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    sent = upstream.requests[-1].body
    assert sent["tool_choice"] == {"type": "tool", "name": "json_response"}
    assert sent["tools"][0]["input_schema"]["required"] == ["city", "temp_c"]
    with client.chat.completions.stream(model="sonnet-text", messages=asked, response_format=Forecast) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Forecast(city="Paris", temp_c=21.5)


def test_reasoning_effort_gives_reasoning_content(client: openai.OpenAI, upstream: FakeAnthropicUpstream) -> None:
    reply = client.chat.completions.create(model="sonnet-thinking", messages=HELLO, reasoning_effort="low")
    assert (reply.choices[0].message.model_extra or {}).get("reasoning_content") == THINKING
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens > 0
    assert upstream.requests[-1].body["thinking"]["type"] == "enabled"


def test_parameters_claude_lacks_are_400_naming_them(client: openai.OpenAI, upstream: FakeAnthropicUpstream) -> None:
    before = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="sonnet-text", messages=HELLO, seed=7)
    assert (caught.value.body["param"], caught.value.body["code"]) == ("seed", "unsupported_parameter")
    assert len(upstream.requests) == before


def test_overloaded_is_503_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="sonnet-error-529", messages=HELLO)
    assert caught.value.status_code == 503 and caught.value.response.headers.get("retry-after")


def test_upstream_auth_failure_never_leaks_the_operator_key(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="sonnet-error-401", messages=HELLO)
    assert caught.value.status_code == 502 and ANTHROPIC_KEY[:14] not in caught.value.response.text


def test_in_stream_error_reaches_the_client_after_the_text(client: openai.OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="sonnet-midstream-error", messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(received).startswith("This answer")


def test_usage_is_billed_from_anthropics_counts(gateway: RunningGateway, upstream: FakeAnthropicUpstream) -> None:
    account_id, _, key = gateway.create_key(balance_micros=10_000_000)
    request_ids: list[str] = []
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0) as sdk:
        for stream in (False, True):
            raw = sdk.chat.completions.with_raw_response.create(model="sonnet-cached", messages=HELLO, stream=stream)
            request_ids.append(raw.headers["x-request-id"])
            reply: Any = raw.parse()
            if stream:
                list(reply)
    expected = {}
    for request_id in request_ids:
        truth = upstream.usage_sent[request_id]
        prompt = truth["input_tokens"] + truth["cache_read_input_tokens"] + truth["cache_creation_input_tokens"]
        assert truth["cache_read_input_tokens"] > 0 and truth["cache_creation_input_tokens"] > 0
        expected[request_id] = (prompt, truth["output_tokens"], 2 * prompt + 5 * truth["output_tokens"])
    records = _usage_records(gateway, key)
    assert set(records) == set(request_ids)
    for request_id, record in records.items():
        assert (record.prompt_tokens, record.completion_tokens, record.cost_micros) == expected[request_id]
        assert not record.estimated and record.provider == "claude" and record.upstream_model == "claude-cached"
    assert gateway.account(account_id).balance_micros == 10_000_000 - sum(e[2] for e in expected.values())


def _usage_records(gateway: RunningGateway, key: str) -> dict[str, metering_pb2.UsageRecord]:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        page = metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
            metering_pb2.ListUsageRecordsRequest(page_size=1000), metadata=(("authorization", f"Bearer {key}"),))
    return {record.request_id: record for record in page.usage_records}


def _last_request_id(upstream: FakeAnthropicUpstream) -> str:
    return upstream.requests[-1].headers["x-request-id"]
