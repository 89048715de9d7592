"""GeminiProvider against the fake Gemini API over real HTTP on 127.0.0.1."""

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
from gateway_core.errors import Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ChatRequest, ProviderError, UpstreamCall
from gateway_core.providers.gemini.client import GeminiProvider
from gateway_core.providers.gemini.translate import signature_of
from gateway_core.providers.http import make_http_client
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.registry import build_providers
from tests.fakes.gemini_scripts import THOUGHT, TOOL_REPLY
from tests.fakes.gemini_upstream import DEFAULT_REPLY, FakeGeminiUpstream
from tests.providers_support import call_for, user_request

GEMINI_KEY = "AIzaSyOperator0Key1For2Tests3Only4abcdE"
ALLOWED_HEADERS = {"host", "connection", "content-type", "content-length", "accept", "accept-encoding",
                   "user-agent", "x-goog-api-key", "x-request-id", "traceparent", "tracestate"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
WEATHER = chat_pb2.Tool(type="function", function=chat_pb2.FunctionDefinition(
    name="get_weather", parameters_json='{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'))
Chunks = list[chat_pb2.StreamChatCompletionResponse]


@pytest.fixture()
def upstream() -> Iterator[FakeGeminiUpstream]:
    with FakeGeminiUpstream(expected_key=GEMINI_KEY) as fake:
        yield fake


@pytest.fixture()
async def http() -> AsyncIterator[UpstreamClient]:
    async with make_http_client() as client:
        yield client


def settings(base_url: str, key: str = GEMINI_KEY, read_timeout_seconds: float = 600.0) -> ProviderSettings:
    return ProviderSettings(name="gem", type="gemini", base_url=base_url, api_key=key,
                            read_timeout_seconds=read_timeout_seconds)


@pytest.fixture()
def provider(upstream: FakeGeminiUpstream, http: UpstreamClient) -> GeminiProvider:
    return GeminiProvider(settings(upstream.base_url), http)


async def collect(provider: GeminiProvider, call: UpstreamCall) -> tuple[Chunks, ProviderError | None]:
    chunks: Chunks = []
    try:
        async for chunk in provider.stream(call):
            chunks.append(chunk)
    except ProviderError as error:
        return chunks, error
    return chunks, None


def streamed(request: ChatRequest, model: str, **kwargs: Any) -> UpstreamCall:
    return call_for(request, model, **kwargs)


def text_of(chunks: Chunks) -> str:
    return "".join(c.delta.content for chunk in chunks for c in chunk.choices)


def tool_calls_of(chunks: Chunks) -> list[chat_pb2.ToolCall]:
    """Tool-call deltas accumulated the way the OpenAI SDK does (by index, strings concatenated)."""
    calls: dict[int, chat_pb2.ToolCall] = {}
    for delta in (c.delta for chunk in chunks for c in chunk.choices):
        for part in delta.tool_calls:
            call = calls.setdefault(part.index, chat_pb2.ToolCall())
            call.id += part.id
            call.type += part.type
            call.function.name += part.function.name
            call.function.arguments += part.function.arguments
    return [calls[i] for i in sorted(calls)]


async def test_complete(provider: GeminiProvider, upstream: FakeGeminiUpstream) -> None:
    response = await provider.complete(call_for(user_request(temperature=0.3), "gemini-text"))
    assert response.choices[0].message.content == DEFAULT_REPLY
    assert response.choices[0].finish_reason == types_pb2.FINISH_REASON_STOP
    assert response.model == "client-model" and response.provider == "gem" and response.id.startswith("gfake")
    assert response.usage.prompt_tokens == upstream.usage_sent["req-test-1"]["promptTokenCount"]
    assert response.usage.completion_tokens == len(DEFAULT_REPLY.split())
    sent = upstream.last_request
    assert (sent.method, sent.target) == ("POST", "/v1beta/models/gemini-text:generateContent")
    assert sent.body == {"contents": [{"role": "user", "parts": [{"text": "Hello there, gateway!"}]}],
                         "generationConfig": {"temperature": 0.3}}


async def test_stream_ends_with_the_last_usage(provider: GeminiProvider, upstream: FakeGeminiUpstream) -> None:
    chunks, error = await collect(provider, streamed(user_request(stream=True), "gemini-text"))
    assert error is None and text_of(chunks) == DEFAULT_REPLY
    assert chunks[0].choices[0].delta.role == types_pb2.ROLE_ASSISTANT
    assert [c.choices[0].delta.role for c in chunks[1:-1]] == [0] * (len(chunks) - 2)
    assert chunks[-2].choices[0].finish_reason == types_pb2.FINISH_REASON_STOP
    assert not chunks[-1].choices
    truth = upstream.usage_sent["req-test-1"]
    assert chunks[-1].usage.completion_tokens == truth["candidatesTokenCount"]  # the last of the repeated ones
    assert chunks[-1].usage.total_tokens == truth["totalTokenCount"]
    assert len({c.id for c in chunks}) == 1
    assert upstream.last_request.target == "/v1beta/models/gemini-text:streamGenerateContent?alt=sse"


async def test_headers_carry_the_key_and_trace_context_only(provider: GeminiProvider,
                                                            upstream: FakeGeminiUpstream) -> None:
    forwarded = (("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE"),
                 ("x-goog-api-key", "client-says-so"), ("authorization", "Bearer client"))
    call = dataclasses.replace(call_for(user_request(stream=True), "gemini-text"), forward_headers=forwarded)
    chunks, error = await collect(provider, call)
    assert error is None and chunks
    await provider.complete(dataclasses.replace(call_for(user_request(), "gemini-text"), forward_headers=forwarded))
    for sent in upstream.requests:
        assert sent.headers["x-goog-api-key"] == GEMINI_KEY
        assert sent.headers["traceparent"] == TRACEPARENT and sent.headers["tracestate"] == "congo=t61rcWkgMzE"
        assert "authorization" not in sent.headers and "key=" not in sent.target
        assert sent.headers["x-request-id"] == "req-test-1" and sent.headers["user-agent"].startswith("tollgate/")
        assert set(sent.headers) <= ALLOWED_HEADERS


async def test_streams_reuse_the_connection(provider: GeminiProvider, upstream: FakeGeminiUpstream) -> None:
    for _ in range(3):
        chunks, error = await collect(provider, streamed(user_request(stream=True), "gemini-text"))
        assert error is None and chunks
    await provider.complete(call_for(user_request(), "gemini-text"))
    assert {r.connection for r in upstream.requests} == {1}


async def test_parallel_tool_calls_and_the_signed_round_trip(provider: GeminiProvider,
                                                             upstream: FakeGeminiUpstream) -> None:
    request = user_request("Weather in Paris and Berlin?", stream=True, tools=[WEATHER])
    chunks, error = await collect(provider, streamed(request, "gemini-tools"))
    assert error is None
    calls = tool_calls_of(chunks)
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}), ("function", "get_weather", {"city": "Berlin"})]
    assert signature_of(calls[0].id) in upstream.signatures and signature_of(calls[1].id) is None
    assert chunks[-2].choices[0].finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS

    follow_up = user_request("Weather in Paris and Berlin?", tools=[WEATHER])
    follow_up.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=calls)
    for call in calls:
        follow_up.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id=call.id, content='{"temp_c": 21}')
    response = await provider.complete(call_for(follow_up, "gemini-tools"))
    assert response.choices[0].message.content == TOOL_REPLY
    contents = upstream.last_request.body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert [p["functionResponse"]["name"] for p in contents[2]["parts"]] == ["get_weather", "get_weather"]


async def test_a_lost_signature_is_gemini_3s_400(provider: GeminiProvider) -> None:
    request = user_request("Weather?", tools=[WEATHER])
    first = await provider.complete(call_for(request, "gemini-tools"))
    calls = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS and len(calls) == 2
    request.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=[
        chat_pb2.ToolCall(id=f"call_{k}", type="function", function=c.function) for k, c in enumerate(calls)])
    for k in range(len(calls)):
        request.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id=f"call_{k}", content="{}")
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(request, "gemini-tools"))
    error = caught.value
    assert error.reason == Reason.INVALID_REQUEST and "missing a thought_signature" in error.message
    assert "ai.google.dev" not in error.message


async def test_thinking_becomes_reasoning_content(provider: GeminiProvider) -> None:
    request = user_request("Think.", reasoning_effort="high")
    response = await provider.complete(call_for(request, "gemini-thinking"))
    assert json.loads(response.choices[0].message.extra_json) == {"reasoning_content": THOUGHT}
    assert response.usage.reasoning_tokens == 24 and response.usage.cached_tokens > 0
    assert response.usage.completion_tokens == response.usage.reasoning_tokens + len(DEFAULT_REPLY.split())
    chunks, error = await collect(provider, streamed(user_request("Think.", stream=True, reasoning_effort="high"),
                                                     "gemini-thinking"))
    assert error is None
    assert "".join(json.loads(c.delta.extra_json)["reasoning_content"]
                   for chunk in chunks for c in chunk.choices if c.delta.extra_json) == THOUGHT


async def test_max_tokens_and_candidates(provider: GeminiProvider, upstream: FakeGeminiUpstream) -> None:
    response = await provider.complete(call_for(user_request(n=2, max_completion_tokens=4), "gemini-text"))
    assert [c.index for c in response.choices] == [0, 1]
    assert {c.finish_reason for c in response.choices} == {types_pb2.FINISH_REASON_LENGTH}
    assert upstream.last_request.body["generationConfig"] == {"candidateCount": 2, "maxOutputTokens": 4}
    chunks, error = await collect(provider, streamed(user_request(stream=True), "gemini-max-tokens"))
    assert error is None and chunks[-2].choices[0].finish_reason == types_pb2.FINISH_REASON_LENGTH


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_blocked_prompt_is_content_filter(provider: GeminiProvider, streaming: bool) -> None:
    if streaming:
        chunks, error = await collect(provider, streamed(user_request(stream=True), "gemini-safety"))
        assert error is None
        assert [c.finish_reason for chunk in chunks for c in chunk.choices] == [
            types_pb2.FINISH_REASON_CONTENT_FILTER]
        assert chunks[-1].usage.prompt_tokens > 0
    else:
        response = await provider.complete(call_for(user_request(), "gemini-safety"))
        assert response.choices[0].finish_reason == types_pb2.FINISH_REASON_CONTENT_FILTER


ERRORS = [
    ("gemini-error-400", Reason.INVALID_REQUEST, None),
    ("gemini-error-403", Reason.UPSTREAM_ERROR, None),
    ("gemini-error-404", Reason.UPSTREAM_ERROR, None),
    ("gemini-error-429", Reason.UPSTREAM_RATE_LIMITED, 7.0),
    ("gemini-error-500", Reason.UPSTREAM_UNAVAILABLE, None),
    ("gemini-error-503", Reason.UPSTREAM_UNAVAILABLE, None),
    ("gemini-error-504", Reason.UPSTREAM_TIMEOUT, None),
]


@pytest.mark.parametrize(("model", "reason", "retry_after"), ERRORS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_upstream_errors_map(provider: GeminiProvider, model: str, reason: Reason,
                                   retry_after: float | None, streaming: bool) -> None:
    if streaming:
        chunks, error = await collect(provider, streamed(user_request(stream=True), model))
        assert not chunks
    else:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(call_for(user_request(), model))
        error = caught.value
    assert error is not None and error.reason == reason and error.retry_after_seconds == retry_after
    for text in (error.message, error.upstream_body, repr(error)):
        assert GEMINI_KEY[:12] not in text and "127.0.0.1" not in text and "https://" not in text
    if model == "gemini-error-400":
        assert error.message.startswith("Invalid value at 'generation_config.temperature'")


@pytest.mark.parametrize("key", ["", "AIzaSyWrongKey0123456789abcdefghijklmno"])
async def test_a_missing_or_wrong_key_never_leaks(upstream: FakeGeminiUpstream, http: UpstreamClient,
                                                  key: str) -> None:
    provider = GeminiProvider(settings(upstream.base_url, key=key), http)
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), "gemini-text"))
    error = caught.value
    assert error.reason == Reason.UPSTREAM_ERROR and error.message == "upstream authentication failed"
    assert all(key[:10] not in text for text in (error.upstream_body, repr(error)) if key)
    assert ("x-goog-api-key" in upstream.last_request.headers) == bool(key)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused_is_unavailable(http: UpstreamClient, streaming: bool) -> None:
    provider = GeminiProvider(settings(f"http://127.0.0.1:{closed_port()}/v1beta"), http)
    if streaming:
        chunks, error = await collect(provider, streamed(user_request(stream=True), "gemini-text"))
        assert not chunks
    else:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(call_for(user_request(), "gemini-text"))
        error = caught.value
    assert error is not None and error.reason == Reason.UPSTREAM_UNAVAILABLE
    assert "127.0.0.1" not in error.message and GEMINI_KEY not in repr(error)


async def test_reset_mid_stream_raises_after_the_first_chunks(provider: GeminiProvider) -> None:
    chunks, error = await collect(provider, streamed(user_request(stream=True), "gemini-reset"))
    assert text_of(chunks) == "This answer starts well but never"  # two events of three words
    assert error is not None and error.reason == Reason.UPSTREAM_ERROR


async def test_reset_mid_body_is_an_upstream_error(provider: GeminiProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), "gemini-reset"))
    assert caught.value.reason == Reason.UPSTREAM_ERROR


async def test_an_error_event_mid_stream_raises_after_what_was_good(provider: GeminiProvider) -> None:
    chunks, error = await collect(provider, streamed(user_request(stream=True), "gemini-midstream-error"))
    assert text_of(chunks) == "This answer starts well but never"
    assert error is not None and error.reason == Reason.UPSTREAM_UNAVAILABLE


async def test_closing_the_stream_early_closes_the_upstream(provider: GeminiProvider,
                                                            upstream: FakeGeminiUpstream) -> None:
    stream = provider.stream(streamed(user_request(stream=True), "gemini-slow"))
    for _ in range(3):
        await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert await upstream.until_disconnects(1)


async def test_cancelling_the_consumer_closes_the_upstream(provider: GeminiProvider,
                                                           upstream: FakeGeminiUpstream) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(streamed(user_request(stream=True), "gemini-slow")):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await upstream.until_disconnects(1)


async def test_the_callers_deadline_bounds_a_stream(provider: GeminiProvider, upstream: FakeGeminiUpstream) -> None:
    started = time.monotonic()
    chunks, error = await collect(provider, streamed(user_request(stream=True), "gemini-slow", timeout=0.4))
    assert 0.3 < time.monotonic() - started < 2
    assert chunks and error is not None and error.reason == Reason.UPSTREAM_TIMEOUT
    assert await upstream.until_disconnects(1)


async def test_the_callers_deadline_bounds_a_silent_upstream(provider: GeminiProvider) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), "gemini-hang", timeout=0.3))
    assert caught.value.reason == Reason.UPSTREAM_TIMEOUT and time.monotonic() - started < 2


async def test_the_configured_read_timeout_applies(upstream: FakeGeminiUpstream, http: UpstreamClient) -> None:
    provider = GeminiProvider(settings(upstream.base_url, read_timeout_seconds=0.2), http)
    chunks, error = await collect(provider, streamed(user_request(stream=True), "gemini-hang"))
    assert not chunks and error is not None and error.reason == Reason.UPSTREAM_TIMEOUT


@pytest.mark.parametrize(("model", "path"), [
    ("models/gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("tunedModels/my-tuned-1", "/v1beta/tunedModels/my-tuned-1:generateContent"),
])
async def test_model_resource_names(provider: GeminiProvider, upstream: FakeGeminiUpstream, model: str,
                                    path: str) -> None:
    await provider.complete(call_for(user_request(), model))
    assert upstream.last_request.target == path


@pytest.mark.parametrize("model", ["../admin", "gemini-2.5-flash:streamGenerateContent?key=x", "a/b/c", ""])
async def test_odd_model_ids_never_reach_the_network(provider: GeminiProvider, upstream: FakeGeminiUpstream,
                                                     model: str) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), model))
    assert caught.value.reason == Reason.UPSTREAM_ERROR and not upstream.requests


async def test_build_providers_knows_gemini(http: UpstreamClient) -> None:
    providers = build_providers({"g": ProviderSettings(name="g", type="gemini",
                                                       base_url="https://generativelanguage.googleapis.com/v1beta")},
                                http)
    assert isinstance(providers["g"], GeminiProvider) and providers["g"].name == "g"
