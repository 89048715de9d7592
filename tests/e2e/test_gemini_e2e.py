"""End to end with Gemini: the official openai SDK -> facade (uvicorn) -> gRPC core -> GeminiProvider -> fake Gemini.

The same OpenAI code a user already has, with only `model` switched to a
Gemini-backed name: text, streams, parallel tool calls and their round trip
(which the fake accepts only with the thought signatures echoed), images,
structured output, errors, and billing from Gemini's own usageMetadata.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import openai
import pytest

from gateway_core.pb.gateway.v1 import metering_pb2, metering_pb2_grpc
from tests.fakes.gemini_scripts import THOUGHT, TOOL_REPLY
from tests.fakes.gemini_upstream import DEFAULT_REPLY, FakeGeminiUpstream
from tests.gateway_support import RunningGateway, running_gateway, settings_for

GEMINI_KEY = "AIzaSyE2eOperatorKey0123456789abcdefgh"
SCRIPTS = ["gemini-text", "gemini-tools", "gemini-thinking", "gemini-safety", "gemini-error-429", "gemini-error-403",
           "gemini-reset"]
# $2 and $5 per 1M tokens: a request costs exactly 2 x prompt + 5 x completion micro-USD.
INPUT_PRICE, OUTPUT_PRICE = 2, 5
HELLO = [{"role": "user", "content": "Hello there, gateway!"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False},
    },
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeGeminiUpstream]:
    with FakeGeminiUpstream(expected_key=GEMINI_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeGeminiUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("gemini-e2e"),
        providers=[{"name": "gemini", "type": "gemini", "base_url": upstream.base_url, "api_key": GEMINI_KEY}],
        models=[{"name": script.replace("gemini-", "gem-"), "routes": [{"provider": "gemini", "model": script}],
                 "input_price": INPUT_PRICE, "output_price": OUTPUT_PRICE} for script in SCRIPTS],
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


def usage_records(gateway: RunningGateway, key: str) -> dict[str, metering_pb2.UsageRecord]:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        page = metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
            metering_pb2.ListUsageRecordsRequest(page_size=1000), metadata=(("authorization", f"Bearer {key}"),))
    return {r.request_id: r for r in page.usage_records}


def wait_for_record(gateway: RunningGateway, key: str, request_id: str) -> metering_pb2.UsageRecord:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (record := usage_records(gateway, key).get(request_id)) is not None:
            return record
        time.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


def gemini_cost(usage: dict[str, Any]) -> int:
    """What Gemini's usageMetadata costs at this test's prices: thinking is billed as output."""
    completion = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
    return INPUT_PRICE * usage["promptTokenCount"] + OUTPUT_PRICE * completion


def test_text_completion(client: openai.OpenAI, upstream: FakeGeminiUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gem-text", messages=HELLO, temperature=0.3,
                                                            max_tokens=200, seed=7)
    reply = raw.parse()
    assert reply.model == "gem-text" and reply.object == "chat.completion"
    assert reply.choices[0].message.content == DEFAULT_REPLY and reply.choices[0].finish_reason == "stop"
    truth = upstream.usage_sent[raw.headers["x-request-id"]]
    assert reply.usage is not None and reply.usage.prompt_tokens == truth["promptTokenCount"]
    assert reply.usage.completion_tokens == truth["candidatesTokenCount"]
    sent = upstream.last_request
    assert sent.target == "/v1beta/models/gemini-text:generateContent"
    assert sent.body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 200, "seed": 7}


def test_streaming_with_usage(client: openai.OpenAI, upstream: FakeGeminiUpstream) -> None:
    chunks = list(client.chat.completions.create(model="gem-text", messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1
    assert upstream.last_request.target == "/v1beta/models/gemini-text:streamGenerateContent?alt=sse"


def streamed_tool_calls(client: openai.OpenAI) -> list[Any]:
    with client.chat.completions.stream(model="gem-tools", messages=[{"role": "user", "content": "Weather?"}],
                                        tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    return list(final.choices[0].message.tool_calls or [])


def test_streamed_parallel_tool_calls_accumulate(client: openai.OpenAI, upstream: FakeGeminiUpstream) -> None:
    calls = streamed_tool_calls(client)
    assert len(calls) == 2 and calls[0].id != calls[1].id
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}), ("function", "get_weather", {"city": "Berlin"})]
    declaration = upstream.last_request.body["tools"][0]["functionDeclarations"][0]
    assert declaration["parametersJsonSchema"] == WEATHER_TOOL["function"]["parameters"]


def test_tool_results_round_trip_with_thought_signatures(client: openai.OpenAI, upstream: FakeGeminiUpstream) -> None:
    calls = streamed_tool_calls(client)
    follow_up = client.chat.completions.create(model="gem-tools", tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump(exclude_none=True) for c in calls]},
        *[{"role": "tool", "tool_call_id": c.id, "content": '{"temp_c": 21}'} for c in calls],
    ])
    assert follow_up.choices[0].message.content == TOOL_REPLY
    contents = upstream.last_request.body["contents"]
    assert contents[1]["parts"][0]["thoughtSignature"] in upstream.signatures
    assert [p["functionResponse"] for p in contents[2]["parts"]] == [
        {"name": "get_weather", "response": {"temp_c": 21}}] * 2

    # The same turn with ids that lost their signatures is what Gemini 3 refuses.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gem-tools", tools=[WEATHER_TOOL], messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {**c.model_dump(exclude_none=True), "id": f"call_{k}"} for k, c in enumerate(calls)]},
            *[{"role": "tool", "tool_call_id": f"call_{k}", "content": "{}"} for k in range(len(calls))],
        ])
    assert "thought_signature" in caught.value.message


def test_images_go_inline_or_by_reference(client: openai.OpenAI, upstream: FakeGeminiUpstream) -> None:
    client.chat.completions.create(model="gem-text", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}])
    assert upstream.last_request.body["contents"] == [{"role": "user", "parts": [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}},
    ]}]


def test_json_schema_response_format(client: openai.OpenAI, upstream: FakeGeminiUpstream) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
              "required": ["city", "temp_c"], "additionalProperties": False}
    reply = client.chat.completions.create(model="gem-text", messages=HELLO, response_format={
        "type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}})
    assert set(json.loads(reply.choices[0].message.content or "")) == {"city", "temp_c"}
    config = upstream.last_request.body["generationConfig"]
    assert config["responseMimeType"] == "application/json" and config["responseJsonSchema"] == schema


def test_reasoning_content_and_billing_from_usage_metadata(client: openai.OpenAI, gateway: RunningGateway, key: str,
                                                          upstream: FakeGeminiUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gem-thinking", messages=HELLO,
                                                            reasoning_effort="low")
    reply = raw.parse()
    assert (reply.choices[0].message.model_extra or {}).get("reasoning_content") == THOUGHT
    request_ids = [raw.headers["x-request-id"]]
    stream = client.chat.completions.with_raw_response.create(model="gem-thinking", messages=HELLO, stream=True,
                                                              stream_options={"include_usage": True})
    request_ids.append(stream.headers["x-request-id"])
    chunks = list(stream.parse())
    for request_id in request_ids:
        truth = upstream.usage_sent[request_id]
        record = wait_for_record(gateway, key, request_id)
        assert record.cost_micros == gemini_cost(truth) and not record.estimated
        assert (record.prompt_tokens, record.reasoning_tokens) == (truth["promptTokenCount"],
                                                                   truth["thoughtsTokenCount"])
        assert record.cached_tokens == truth["cachedContentTokenCount"]
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 24
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == (
        chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens)


def test_a_blocked_prompt_is_content_filter(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gem-safety", messages=HELLO)
    assert reply.choices[0].finish_reason == "content_filter" and reply.choices[0].message.content is None


def test_upstream_rate_limit_is_503_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gem-error-429", messages=HELLO)
    assert caught.value.status_code == 503
    assert caught.value.response.headers.get("retry-after") == "7"


def test_upstream_auth_failure_never_leaks_the_operator_key(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gem-error-403", messages=HELLO)
    assert caught.value.status_code == 502
    assert GEMINI_KEY[:12] not in caught.value.response.text


def test_upstream_reset_mid_stream_is_an_in_band_error(client: openai.OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="gem-reset", messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(received), "chunks before the reset reached the client"


def test_only_trace_context_and_the_operator_key_reach_gemini(client: openai.OpenAI, key: str,
                                                               upstream: FakeGeminiUpstream) -> None:
    client.chat.completions.create(model="gem-text", messages=HELLO, extra_headers={
        "traceparent": TRACEPARENT, "x-secret-client-header": "leak-me", "x-goog-api-key": "client-key"})
    sent = upstream.last_request
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY and sent.headers["traceparent"] == TRACEPARENT
    assert "x-secret-client-header" not in sent.headers and "authorization" not in sent.headers
    assert key not in json.dumps(sent.headers) and "key=" not in sent.target
