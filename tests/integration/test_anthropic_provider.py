"""AnthropicProvider against the fake Anthropic upstream over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gateway_core.config import ProviderSettings
from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.anthropic.client import AnthropicProvider
from gateway_core.providers.base import ChatRequest, ProviderError, UpstreamCall
from gateway_core.providers.http import make_http_client
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.registry import build_providers
from tests.fakes.anthropic_scripts import THINKING, THINKING_REPLY, TOOL_PREAMBLE, TOOL_REPLY
from tests.fakes.anthropic_upstream import DEFAULT_REPLY, FakeAnthropicUpstream
from tests.providers_support import call_for, user_request

ANTHROPIC_KEY = "sk-ant-api03-Operator0Key1For2Tests3Only4abcdefABCDEF-0123456789"
ALLOWED_HEADERS = {"host", "connection", "content-type", "content-length", "accept", "accept-encoding",
                   "user-agent", "x-api-key", "anthropic-version", "x-request-id"}
WEATHER_SCHEMA = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
WEATHER = chat_pb2.Tool(
    type="function", function=chat_pb2.FunctionDefinition(name="get_weather", parameters_json=WEATHER_SCHEMA)
)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture()
def upstream() -> Iterator[FakeAnthropicUpstream]:
    with FakeAnthropicUpstream(expected_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture()
async def http() -> AsyncIterator[UpstreamClient]:
    async with make_http_client() as client:
        yield client


def settings(base_url: str, key: str = ANTHROPIC_KEY, **fields: Any) -> ProviderSettings:
    return ProviderSettings(name="claude", type="anthropic", base_url=base_url, api_key=key, **fields)


@pytest.fixture()
def provider(upstream: FakeAnthropicUpstream, http: UpstreamClient) -> AnthropicProvider:
    return AnthropicProvider(settings(upstream.base_url), http)


async def collect(provider: AnthropicProvider, call: UpstreamCall,
                  ) -> tuple[list[chat_pb2.StreamChatCompletionResponse], ProviderError | None]:
    chunks: list[chat_pb2.StreamChatCompletionResponse] = []
    try:
        async for chunk in provider.stream(call):
            chunks.append(chunk)
    except ProviderError as error:
        return chunks, error
    return chunks, None


async def stream_of(provider: AnthropicProvider, request: ChatRequest, model: str, **kwargs: Any,
                    ) -> tuple[list[chat_pb2.StreamChatCompletionResponse], ProviderError | None]:
    return await collect(provider, call_for(request, model, **kwargs))


def text_of(chunks: list[chat_pb2.StreamChatCompletionResponse]) -> str:
    return "".join(c.delta.content for chunk in chunks for c in chunk.choices)


def tool_calls_of(chunks: list[chat_pb2.StreamChatCompletionResponse]) -> dict[int, list[str]]:
    """Tool calls as a client accumulates them: [id, type, name, arguments] by index, strings concatenated."""
    calls: dict[int, list[str]] = {}
    for delta in (c.delta for chunk in chunks for c in chunk.choices):
        for call in delta.tool_calls:
            entry = calls.setdefault(call.index, ["", "", "", ""])
            for k, value in enumerate((call.id, call.type, call.function.name, call.function.arguments)):
                entry[k] += value
    return calls


async def test_complete(provider: AnthropicProvider, upstream: FakeAnthropicUpstream) -> None:
    request = user_request(temperature=0.3, max_completion_tokens=200)
    request.messages.insert(0, chat_pb2.Message(role=types_pb2.ROLE_SYSTEM, content="Be kind."))
    response = await provider.complete(call_for(request, "claude-text"))
    assert response.choices[0].message.content == DEFAULT_REPLY
    assert response.choices[0].finish_reason == types_pb2.FINISH_REASON_STOP
    assert response.model == "client-model" and response.provider == "claude" and response.id.startswith("msg_")
    assert abs(response.created - time.time()) < 60
    sent = upstream.last_request
    truth = upstream.usage_sent["req-test-1"]
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (truth["input_tokens"],
                                                                               truth["output_tokens"])
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.body == {"model": "claude-text", "max_tokens": 200, "temperature": 0.3,
                         "system": [{"type": "text", "text": "Be kind."}],
                         "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there, gateway!"}]}]}
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["accept"] == "application/json" and sent.headers["user-agent"].startswith("tollgate/")
    assert set(sent.headers) <= ALLOWED_HEADERS and "authorization" not in sent.headers


async def test_stream(provider: AnthropicProvider, upstream: FakeAnthropicUpstream) -> None:
    chunks, error = await stream_of(provider, user_request(stream=True), "claude-text")
    assert error is None and text_of(chunks) == DEFAULT_REPLY
    assert [c.choices[0].delta.role for c in chunks if c.choices].count(types_pb2.ROLE_ASSISTANT) == 1
    assert chunks[-2].choices[0].finish_reason == types_pb2.FINISH_REASON_STOP
    truth = upstream.usage_sent["req-test-1"]
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == truth["output_tokens"]
    assert chunks[-1].usage.prompt_tokens == truth["input_tokens"]
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    sent = upstream.last_request
    assert sent.body["stream"] is True and sent.headers["accept"] == "text/event-stream"
    assert set(sent.headers) <= ALLOWED_HEADERS and "authorization" not in sent.headers


async def test_finished_streams_leave_the_connection_reusable(provider: AnthropicProvider,
                                                              upstream: FakeAnthropicUpstream) -> None:
    for _ in range(3):
        chunks, error = await stream_of(provider, user_request(stream=True), "claude-text")
        assert error is None and chunks
    await provider.complete(call_for(user_request(), "claude-text"))
    assert {r.connection for r in upstream.requests} == {1}


async def test_tool_calls_stream_with_dense_indexes(provider: AnthropicProvider,
                                                    upstream: FakeAnthropicUpstream) -> None:
    chunks, error = await stream_of(provider, user_request("Weather?", stream=True, tools=[WEATHER]), "claude-tools")
    assert error is None and text_of(chunks) == TOOL_PREAMBLE
    calls = tool_calls_of(chunks)
    assert sorted(calls) == [0, 1], "Anthropic blocks 1 and 2 are OpenAI tool calls 0 and 1"
    assert [calls[i][1:3] for i in (0, 1)] == [["function", "get_weather"]] * 2
    assert calls[0][0].startswith("toolu_") and calls[0][0] != calls[1][0]
    assert [json.loads(calls[i][3]) for i in (0, 1)] == [{"city": "Paris"}, {"city": "Berlin"}]
    assert chunks[-2].choices[0].finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS
    assert upstream.last_request.body["tools"] == [{"name": "get_weather", "input_schema": json.loads(WEATHER_SCHEMA)}]


async def test_tool_calls_complete_and_round_trip(provider: AnthropicProvider, upstream: FakeAnthropicUpstream) -> None:
    response = await provider.complete(call_for(user_request("Weather?", tools=[WEATHER]), "claude-tools"))
    message = response.choices[0].message
    assert message.content == TOOL_PREAMBLE and len(message.tool_calls) == 2
    assert response.choices[0].finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS
    follow_up = user_request("Weather?", tools=[WEATHER])
    follow_up.messages.append(message)
    for call in message.tool_calls:
        follow_up.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id=call.id, content='{"temp_c": 21}')
    answer = await provider.complete(call_for(follow_up, "claude-tools"))
    assert answer.choices[0].message.content == TOOL_REPLY
    sent = upstream.last_request.body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [(b["type"], b["tool_use_id"]) for b in sent[2]["content"]] == [
        ("tool_result", call.id) for call in message.tool_calls]


async def test_a_tool_without_input_gets_empty_object_arguments(provider: AnthropicProvider) -> None:
    chunks, error = await stream_of(provider, user_request("Time?", stream=True), "claude-tool-noargs")
    assert error is None and tool_calls_of(chunks)[0][3] == "{}"
    response = await provider.complete(call_for(user_request("Time?"), "claude-tool-noargs"))
    assert response.choices[0].message.tool_calls[0].function.arguments == "{}"


async def test_thinking_is_reasoning_content(provider: AnthropicProvider, upstream: FakeAnthropicUpstream) -> None:
    request = user_request("Hi!", reasoning_effort="low", max_completion_tokens=4000, temperature=0.7)
    response = await provider.complete(call_for(request, "claude-thinking"))
    assert json.loads(response.choices[0].message.extra_json) == {"reasoning_content": THINKING}
    assert response.choices[0].message.content == THINKING_REPLY and response.usage.reasoning_tokens > 0
    assert upstream.last_request.body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "temperature" not in upstream.last_request.body
    chunks, error = await stream_of(provider, user_request("Hi!", stream=True), "claude-thinking")
    assert error is None and text_of(chunks) == THINKING_REPLY
    reasoning = "".join(json.loads(c.delta.extra_json)["reasoning_content"]
                        for chunk in chunks for c in chunk.choices if c.delta.extra_json)
    assert reasoning == THINKING


@pytest.mark.parametrize("streaming", [False, True])
async def test_cache_reads_and_writes_count_as_prompt_tokens(provider: AnthropicProvider,
                                                             upstream: FakeAnthropicUpstream, streaming: bool) -> None:
    if streaming:
        chunks, _ = await stream_of(provider, user_request(stream=True), "claude-cached")
        usage = chunks[-1].usage
    else:
        usage = (await provider.complete(call_for(user_request(), "claude-cached"))).usage
    truth = upstream.usage_sent["req-test-1"]
    prompt = truth["input_tokens"] + truth["cache_read_input_tokens"] + truth["cache_creation_input_tokens"]
    assert (usage.prompt_tokens, usage.cached_tokens) == (prompt, truth["cache_read_input_tokens"])
    assert usage.completion_tokens == truth["output_tokens"] and usage.total_tokens == prompt + usage.completion_tokens


@pytest.mark.parametrize(("model", "finish_reason"), [("claude-max-tokens", types_pb2.FINISH_REASON_LENGTH),
                                                      ("claude-refusal", types_pb2.FINISH_REASON_CONTENT_FILTER)])
async def test_finish_reasons(provider: AnthropicProvider, model: str, finish_reason: int) -> None:
    response = await provider.complete(call_for(user_request(), model))
    assert response.choices[0].finish_reason == finish_reason
    chunks, error = await stream_of(provider, user_request(stream=True), model)
    assert error is None and chunks[-2].choices[0].finish_reason == finish_reason


@pytest.mark.parametrize("streaming", [False, True])
async def test_json_schema_answers_as_content(provider: AnthropicProvider, upstream: FakeAnthropicUpstream,
                                              streaming: bool) -> None:
    request = user_request("Weather as JSON", stream=streaming)
    request.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    request.response_format.json_schema.CopyFrom(chat_pb2.JsonSchemaFormat(
        name="weather",
        schema_json='{"type":"object","properties":{"temp_c":{"type":"number"}},"required":["temp_c"]}'))
    if streaming:
        chunks, error = await stream_of(provider, request, "claude-text")
        assert error is None and not tool_calls_of(chunks)
        content, finish = text_of(chunks), chunks[-2].choices[0].finish_reason
    else:
        choice = (await provider.complete(call_for(request, "claude-text"))).choices[0]
        assert not choice.message.tool_calls
        content, finish = choice.message.content, choice.finish_reason
    assert json.loads(content) == {"temp_c": 21.5} and finish == types_pb2.FINISH_REASON_STOP
    assert upstream.last_request.body["tool_choice"] == {"type": "tool", "name": "json_response"}


async def test_images_go_inline_or_by_url(provider: AnthropicProvider, upstream: FakeAnthropicUpstream) -> None:
    request = chat_pb2.CreateChatCompletionRequest(model="client-model")
    request.messages.add(role=types_pb2.ROLE_USER, parts=[
        chat_pb2.ContentPart(text="What is this?"),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="data:image/png;base64,iVBORw0KGgo=", detail="low")),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="https://example.com/cat.png"))])
    response = await provider.complete(call_for(request, "claude-echo"))
    assert response.choices[0].message.content == "What is this?"
    assert upstream.last_request.body["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]


ERRORS = [
    ("claude-error-400", Reason.INVALID_REQUEST, None),
    ("claude-error-401", Reason.UPSTREAM_ERROR, None),
    ("claude-error-403", Reason.UPSTREAM_ERROR, None),
    ("claude-error-404", Reason.UPSTREAM_ERROR, None),
    ("claude-error-413", Reason.REQUEST_TOO_LARGE, None),
    ("claude-error-429", Reason.UPSTREAM_RATE_LIMITED, 7.0),
    ("claude-error-500", Reason.UPSTREAM_UNAVAILABLE, None),
    ("claude-error-504", Reason.UPSTREAM_TIMEOUT, None),
    ("claude-error-529", Reason.UPSTREAM_UNAVAILABLE, 2.0),
]


@pytest.mark.parametrize(("model", "reason", "retry_after"), ERRORS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_upstream_errors_map(provider: AnthropicProvider, model: str, reason: Reason,
                                   retry_after: float | None, streaming: bool) -> None:
    if streaming:
        chunks, error = await stream_of(provider, user_request(stream=True), model)
        assert not chunks
    else:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(call_for(user_request(), model))
        error = caught.value
    assert error is not None and (error.reason, error.retry_after_seconds) == (reason, retry_after)
    for text in (error.message, error.upstream_body, repr(error)):
        assert ANTHROPIC_KEY[:14] not in text and "docs.claude.com" not in text and "127.0.0.1" not in text
    if model == "claude-error-400":
        assert error.message.startswith("messages.0.content.0.image.source.base64: invalid base64 data")


async def test_a_wrong_operator_key_never_leaks(upstream: FakeAnthropicUpstream, http: UpstreamClient) -> None:
    wrong = "sk-ant-api03-WrongKey0123456789abcdefWRONG-zz"
    provider = AnthropicProvider(settings(upstream.base_url, key=wrong), http)
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), "claude-text"))
    error = caught.value
    assert error.reason == Reason.UPSTREAM_ERROR and error.message == "upstream authentication failed"
    assert all(wrong[:14] not in text for text in (error.message, error.upstream_body, repr(error)))


async def test_headers_come_from_settings_and_trace_context_only(upstream: FakeAnthropicUpstream,
                                                                 http: UpstreamClient) -> None:
    provider = AnthropicProvider(settings(upstream.base_url, anthropic_version="2024-10-22"), http)
    call = dataclasses.replace(call_for(user_request(stream=True), "claude-text"), forward_headers=(
        ("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE"), ("x-api-key", "sk-ant-client-override")))
    chunks, error = await collect(provider, call)
    assert error is None and chunks
    headers = upstream.last_request.headers
    assert (headers["traceparent"], headers["tracestate"]) == (TRACEPARENT, "congo=t61rcWkgMzE")
    assert headers["x-api-key"] == ANTHROPIC_KEY, "a forwarded header never replaces the provider's own"
    assert headers["anthropic-version"] == "2024-10-22"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused_is_unavailable(http: UpstreamClient, streaming: bool) -> None:
    provider = AnthropicProvider(settings(f"http://127.0.0.1:{closed_port()}"), http)
    if streaming:
        chunks, error = await stream_of(provider, user_request(stream=True), "claude-text")
        assert not chunks
    else:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(call_for(user_request(), "claude-text"))
        error = caught.value
    assert error is not None and error.reason == Reason.UPSTREAM_UNAVAILABLE
    assert "127.0.0.1" not in error.message


async def test_reset_mid_stream_raises_after_the_first_chunks(provider: AnthropicProvider) -> None:
    chunks, error = await stream_of(provider, user_request(stream=True), "claude-reset")
    assert text_of(chunks) == "This answer"
    assert error is not None and error.reason == Reason.UPSTREAM_ERROR


async def test_reset_mid_body_is_an_upstream_error(provider: AnthropicProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), "claude-reset"))
    assert caught.value.reason == Reason.UPSTREAM_ERROR


@pytest.mark.parametrize(("model", "reason"), [("claude-midstream-error", Reason.UPSTREAM_UNAVAILABLE),
                                               ("claude-malformed", Reason.UPSTREAM_ERROR)])
async def test_broken_streams_raise_after_what_was_good(provider: AnthropicProvider, model: str,
                                                        reason: Reason) -> None:
    chunks, error = await stream_of(provider, user_request(stream=True), model)
    assert chunks and error is not None and error.reason == reason


async def test_closing_the_stream_early_closes_the_upstream(provider: AnthropicProvider,
                                                            upstream: FakeAnthropicUpstream) -> None:
    stream = provider.stream(call_for(user_request(stream=True), "claude-slow"))
    for _ in range(3):
        await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert await upstream.until_disconnects(1)


async def test_cancelling_the_consumer_closes_the_upstream(provider: AnthropicProvider,
                                                           upstream: FakeAnthropicUpstream) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(call_for(user_request(stream=True), "claude-slow")):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await upstream.until_disconnects(1)


async def test_the_callers_deadline_bounds_a_stream(provider: AnthropicProvider,
                                                    upstream: FakeAnthropicUpstream) -> None:
    started = time.monotonic()
    chunks, error = await stream_of(provider, user_request(stream=True), "claude-slow", timeout=0.4)
    assert 0.3 < time.monotonic() - started < 2
    assert chunks and error is not None and error.reason == Reason.UPSTREAM_TIMEOUT
    assert await upstream.until_disconnects(1)


async def test_the_callers_deadline_bounds_a_silent_upstream(provider: AnthropicProvider) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), "claude-hang", timeout=0.3))
    assert caught.value.reason == Reason.UPSTREAM_TIMEOUT and time.monotonic() - started < 2


async def test_the_configured_read_timeout_applies(upstream: FakeAnthropicUpstream, http: UpstreamClient) -> None:
    provider = AnthropicProvider(settings(upstream.base_url, read_timeout_seconds=0.2), http)
    chunks, error = await stream_of(provider, user_request(stream=True), "claude-hang")
    assert not chunks and error is not None and error.reason == Reason.UPSTREAM_TIMEOUT


async def test_a_request_anthropic_cannot_take_never_leaves(provider: AnthropicProvider,
                                                            upstream: FakeAnthropicUpstream) -> None:
    with pytest.raises(GatewayError) as caught:
        await provider.complete(call_for(user_request(seed=7), "claude-text"))
    assert caught.value.reason == Reason.UNSUPPORTED_PARAMETER and not upstream.requests


async def test_build_providers_by_type(http: UpstreamClient) -> None:
    providers = build_providers({"claude": settings("https://api.anthropic.com")}, http)
    assert isinstance(providers["claude"], AnthropicProvider) and providers["claude"].name == "claude"
