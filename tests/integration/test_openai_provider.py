"""OpenAIProvider against the fake OpenAI upstream over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest

from gateway_core.config import ProviderSettings
from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ChatRequest, ProviderError
from gateway_core.providers.http import make_http_client
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.mock import MockProvider
from gateway_core.providers.openai import translate
from gateway_core.providers.openai.client import OpenAIProvider
from gateway_core.providers.registry import build_providers
from tests.fakes.openai_scripts import TOOL_REPLY
from tests.fakes.openai_upstream import DEFAULT_REPLY, FakeOpenAIUpstream
from tests.providers_support import UPSTREAM_KEY, call_for, fake_upstream, user_request  # noqa: F401

ALLOWED_HEADERS = {"host", "connection", "content-type", "content-length", "accept", "accept-encoding",
                   "user-agent", "authorization", "x-request-id", "traceparent", "tracestate"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
WEATHER_SCHEMA = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
WEATHER = chat_pb2.Tool(
    type="function", function=chat_pb2.FunctionDefinition(name="get_weather", parameters_json=WEATHER_SCHEMA)
)


@pytest.fixture()
async def http() -> AsyncIterator[UpstreamClient]:
    async with make_http_client() as client:
        yield client


def settings(base_url: str, key: str = UPSTREAM_KEY, **fields: Any) -> ProviderSettings:
    return ProviderSettings(name="up", type="openai", base_url=base_url, api_key=key, **fields)


@pytest.fixture()
def provider(fake_upstream: FakeOpenAIUpstream, http: UpstreamClient) -> OpenAIProvider:  # noqa: F811
    return OpenAIProvider(settings(fake_upstream.base_url), http)


async def collect(provider: OpenAIProvider, request: ChatRequest, model: str, **kwargs: Any,
                  ) -> tuple[list[chat_pb2.StreamChatCompletionResponse], ProviderError | None]:
    chunks: list[chat_pb2.StreamChatCompletionResponse] = []
    try:
        async for chunk in provider.stream(call_for(request, model, **kwargs)):
            chunks.append(chunk)
    except ProviderError as error:
        return chunks, error
    return chunks, None


def text_of(chunks: list[chat_pb2.StreamChatCompletionResponse]) -> str:
    return "".join(c.delta.content for chunk in chunks for c in chunk.choices)


async def test_complete(provider: OpenAIProvider, fake_upstream: FakeOpenAIUpstream) -> None:  # noqa: F811
    response = await provider.complete(call_for(user_request(temperature=0.3), "fake-text"))
    assert response.choices[0].message.content == DEFAULT_REPLY
    assert response.model == "client-model" and response.provider == "up"
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens == len(DEFAULT_REPLY.split())
    sent = fake_upstream.last_request
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.body == {"model": "fake-text", "messages": [{"role": "user", "content": "Hello there, gateway!"}],
                         "temperature": 0.3}
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.headers["x-request-id"] == "req-test-1" and sent.headers["user-agent"].startswith("tollgate/")
    assert set(sent.headers) <= ALLOWED_HEADERS


async def test_stream_asks_for_usage_and_ends_with_it(provider: OpenAIProvider,
                                                      fake_upstream: FakeOpenAIUpstream) -> None:  # noqa: F811
    chunks, error = await collect(provider, user_request(stream=True), "fake-text")
    assert error is None and text_of(chunks) == DEFAULT_REPLY
    assert chunks[0].choices[0].delta.role == types_pb2.ROLE_ASSISTANT
    assert chunks[-2].choices[0].finish_reason == types_pb2.FINISH_REASON_STOP
    assert not chunks[-1].choices and chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1
    sent = fake_upstream.last_request
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert set(sent.headers) <= ALLOWED_HEADERS


async def test_finished_streams_leave_the_connection_reusable(provider: OpenAIProvider,
                                                              fake_upstream: FakeOpenAIUpstream) -> None:  # noqa: F811
    for _ in range(3):
        chunks, error = await collect(provider, user_request(stream=True), "fake-text")
        assert error is None and chunks
    await provider.complete(call_for(user_request(), "fake-text"))
    assert {r.connection for r in fake_upstream.requests} == {1}


async def test_parallel_tool_calls_stream(provider: OpenAIProvider) -> None:
    chunks, error = await collect(provider, user_request("Weather?", stream=True, tools=[WEATHER]), "fake-tools")
    assert error is None
    calls: dict[int, list[str]] = {}
    for delta in (c.delta for chunk in chunks for c in chunk.choices):
        for call in delta.tool_calls:
            entry = calls.setdefault(call.index, ["", "", ""])
            entry[0] += call.id
            entry[1] += call.function.name
            entry[2] += call.function.arguments
    assert sorted(calls) == [0, 1] and calls[0][0] != calls[1][0]
    assert [calls[i][1] for i in (0, 1)] == ["get_weather", "get_weather"]
    assert [json.loads(calls[i][2]) for i in (0, 1)] == [{"city": "Paris"}, {"city": "Berlin"}]
    assert chunks[-2].choices[0].finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS


async def test_tool_calls_complete(provider: OpenAIProvider) -> None:
    response = await provider.complete(call_for(user_request("Weather?", tools=[WEATHER]), "fake-tools"))
    message = response.choices[0].message
    assert not message.HasField("content") and len(message.tool_calls) == 2
    assert response.choices[0].finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS


async def test_reasoning_content_survives_both_ways(provider: OpenAIProvider,
                                                    fake_upstream: FakeOpenAIUpstream) -> None:  # noqa: F811
    request = user_request("Think.")
    request.messages.add(role=types_pb2.ROLE_ASSISTANT, content="Earlier", extra_json='{"reasoning_content":"hmm"}')
    response = await provider.complete(call_for(request, "fake-reasoning"))
    assert json.loads(response.choices[0].message.extra_json)["reasoning_content"]
    assert response.usage.cached_tokens > 0 and response.usage.reasoning_tokens > 0
    assert fake_upstream.last_request.body["messages"][1]["reasoning_content"] == "hmm"
    chunks, error = await collect(provider, user_request("Think.", stream=True), "fake-reasoning")
    assert error is None
    reasoning = "".join(json.loads(c.delta.extra_json).get("reasoning_content") or ""
                        for chunk in chunks for c in chunk.choices if c.delta.extra_json)
    assert reasoning == json.loads(response.choices[0].message.extra_json)["reasoning_content"]


async def test_no_usage_means_no_usage_chunk(provider: OpenAIProvider) -> None:
    chunks, error = await collect(provider, user_request(stream=True), "fake-no-usage")
    assert error is None and all(not c.HasField("usage") for c in chunks)
    assert not (await provider.complete(call_for(user_request(), "fake-no-usage"))).HasField("usage")


ERRORS = [
    ("fake-error-400", Reason.INVALID_REQUEST, None),
    ("fake-error-401", Reason.UPSTREAM_ERROR, None),
    ("fake-error-403", Reason.UPSTREAM_ERROR, None),
    ("fake-error-404", Reason.UPSTREAM_ERROR, None),
    ("fake-error-408", Reason.UPSTREAM_TIMEOUT, None),
    ("fake-error-422", Reason.INVALID_REQUEST, None),
    ("fake-error-429", Reason.UPSTREAM_RATE_LIMITED, 2.0),
    ("fake-error-500", Reason.UPSTREAM_UNAVAILABLE, None),
    ("fake-error-502", Reason.UPSTREAM_UNAVAILABLE, None),
    ("fake-error-503", Reason.UPSTREAM_UNAVAILABLE, 1.0),
    ("fake-error-504", Reason.UPSTREAM_TIMEOUT, None),
    ("fake-error-529", Reason.UPSTREAM_UNAVAILABLE, None),
    ("fake-redirect", Reason.UPSTREAM_ERROR, None),
    ("fake-error-200", Reason.UPSTREAM_UNAVAILABLE, None),
]


@pytest.mark.parametrize(("model", "reason", "retry_after"), ERRORS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_upstream_errors_map(provider: OpenAIProvider, model: str, reason: Reason,
                                   retry_after: float | None, streaming: bool) -> None:
    if streaming:
        chunks, error = await collect(provider, user_request(stream=True), model)
        assert not chunks
    else:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(call_for(user_request(), model))
        error = caught.value
    assert error is not None and error.reason == reason and error.retry_after_seconds == retry_after
    for text in (error.message, error.upstream_body, repr(error)):
        assert UPSTREAM_KEY[:12] not in text and "platform.openai.com" not in text and "127.0.0.1" not in text
    if model == "fake-error-400":
        assert error.param == "temperature" and error.message.startswith("Invalid value for 'temperature'")


async def test_a_wrong_operator_key_never_leaks(fake_upstream: FakeOpenAIUpstream,  # noqa: F811
                                                http: UpstreamClient) -> None:
    wrong = "sk-proj-WrongKey0123456789abcdefWRONG"
    provider = OpenAIProvider(settings(fake_upstream.base_url, key=wrong), http)
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), "fake-text"))
    error = caught.value
    assert error.reason == Reason.UPSTREAM_ERROR and error.message == "upstream authentication failed"
    assert all(wrong[:12] not in text for text in (error.message, error.upstream_body, repr(error)))


async def test_no_key_configured_sends_no_authorization(http: UpstreamClient) -> None:
    with FakeOpenAIUpstream() as open_upstream:
        provider = OpenAIProvider(settings(open_upstream.base_url, key=""), http)
        await provider.complete(call_for(user_request(), "fake-text"))
        assert "authorization" not in open_upstream.last_request.headers


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused_is_unavailable(http: UpstreamClient, streaming: bool) -> None:
    provider = OpenAIProvider(settings(f"http://127.0.0.1:{closed_port()}/v1"), http)
    if streaming:
        chunks, error = await collect(provider, user_request(stream=True), "fake-text")
        assert not chunks
    else:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(call_for(user_request(), "fake-text"))
        error = caught.value
    assert error is not None and error.reason == Reason.UPSTREAM_UNAVAILABLE
    assert "127.0.0.1" not in error.message


async def test_reset_mid_stream_raises_after_the_first_chunks(provider: OpenAIProvider) -> None:
    chunks, error = await collect(provider, user_request(stream=True), "fake-reset")
    assert text_of(chunks) == "This answer"
    assert error is not None and error.reason == Reason.UPSTREAM_ERROR


async def test_reset_mid_body_is_an_upstream_error(provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), "fake-reset"))
    assert caught.value.reason == Reason.UPSTREAM_ERROR


@pytest.mark.parametrize(("model", "reason"), [("fake-midstream-error", Reason.UPSTREAM_UNAVAILABLE),
                                               ("fake-malformed", Reason.UPSTREAM_ERROR)])
async def test_broken_streams_raise_after_what_was_good(provider: OpenAIProvider, model: str, reason: Reason) -> None:
    chunks, error = await collect(provider, user_request(stream=True), model)
    assert chunks and error is not None and error.reason == reason


async def test_closing_the_stream_early_closes_the_upstream(provider: OpenAIProvider,
                                                            fake_upstream: FakeOpenAIUpstream) -> None:  # noqa: F811
    stream = provider.stream(call_for(user_request(stream=True), "fake-slow"))
    for _ in range(3):
        await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert await fake_upstream.until_disconnects(1)


async def test_cancelling_the_consumer_closes_the_upstream(provider: OpenAIProvider,
                                                           fake_upstream: FakeOpenAIUpstream) -> None:  # noqa: F811
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(call_for(user_request(stream=True), "fake-slow")):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake_upstream.until_disconnects(1)


async def test_the_callers_deadline_bounds_a_stream(provider: OpenAIProvider,
                                                    fake_upstream: FakeOpenAIUpstream) -> None:  # noqa: F811
    started = time.monotonic()
    chunks, error = await collect(provider, user_request(stream=True), "fake-slow", timeout=0.4)
    assert 0.3 < time.monotonic() - started < 2
    assert chunks and error is not None and error.reason == Reason.UPSTREAM_TIMEOUT
    assert await fake_upstream.until_disconnects(1)


async def test_the_callers_deadline_bounds_a_silent_upstream(provider: OpenAIProvider) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), "fake-hang", timeout=0.3))
    assert caught.value.reason == Reason.UPSTREAM_TIMEOUT and time.monotonic() - started < 2


async def test_the_configured_read_timeout_applies(fake_upstream: FakeOpenAIUpstream,  # noqa: F811
                                                   http: UpstreamClient) -> None:
    provider = OpenAIProvider(settings(fake_upstream.base_url, read_timeout_seconds=0.2), http)
    chunks, error = await collect(provider, user_request(stream=True), "fake-hang")
    assert not chunks and error is not None and error.reason == Reason.UPSTREAM_TIMEOUT


async def test_redirects_are_not_followed(provider: OpenAIProvider,
                                          fake_upstream: FakeOpenAIUpstream) -> None:  # noqa: F811
    with pytest.raises(ProviderError):
        await provider.complete(call_for(user_request(), "fake-redirect"))
    assert len(fake_upstream.requests) == 1


async def test_the_shared_client_ignores_proxies_in_the_environment(
    provider: OpenAIProvider, fake_upstream: FakeOpenAIUpstream, canary: socket.socket,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = f"http://127.0.0.1:{canary.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    response = await provider.complete(call_for(user_request(), "fake-text"))
    assert response.choices[0].message.content == DEFAULT_REPLY and len(fake_upstream.requests) == 1
    assert connections_to(canary) == 0  # straight to the configured upstream, never via a proxy


async def test_build_providers_by_type(http: UpstreamClient) -> None:
    providers = build_providers({
        "mock": ProviderSettings(name="mock", type="mock"),
        "up": ProviderSettings(name="up", type="openai", base_url="http://127.0.0.1:1/v1"),
    }, http)
    assert isinstance(providers["mock"], MockProvider) and isinstance(providers["up"], OpenAIProvider)
    assert providers["up"].name == "up"
    with pytest.raises(ValueError, match="nope"):
        build_providers({"x": ProviderSettings(name="x", type="nope")}, http)


@pytest.fixture()
def canary() -> Iterator[socket.socket]:
    """A listener standing in for an internal service that nothing may ever connect to."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        yield listener


def connections_to(listener: socket.socket) -> int:
    """How many connections reached listener (and are now closed)."""
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_redirect_is_an_upstream_error_and_its_target_is_never_contacted(
    http: UpstreamClient, canary: socket.socket, streaming: bool,
) -> None:
    target = f"http://127.0.0.1:{canary.getsockname()[1]}/v1/chat/completions"
    with FakeOpenAIUpstream(expected_key=UPSTREAM_KEY, redirect_to=target) as upstream:
        provider = OpenAIProvider(settings(upstream.base_url), http)
        if streaming:
            chunks, error = await collect(provider, user_request(stream=True), "fake-redirect")
            assert not chunks
        else:
            with pytest.raises(ProviderError) as caught:
                await provider.complete(call_for(user_request(), "fake-redirect"))
            error = caught.value
        assert error is not None and error.reason == Reason.UPSTREAM_ERROR and error.upstream_status == 307
        assert "127.0.0.1" not in error.message and len(upstream.requests) == 1
    assert connections_to(canary) == 0


@pytest.mark.parametrize("streaming", [False, True])
async def test_trace_context_is_the_only_client_header_forwarded(
    provider: OpenAIProvider, fake_upstream: FakeOpenAIUpstream, streaming: bool,  # noqa: F811
) -> None:
    forwarded = (("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
                 ("authorization", "Bearer sk-client-key"), ("host", "evil.example"), ("x-forwarded-for", "10.0.0.1"),
                 ("cookie", "session=1"), ("x-stainless-retry-count", "0"))
    request = user_request(stream=streaming)
    call = replace(call_for(request, "fake-text"), forward_headers=forwarded)
    if streaming:
        assert [chunk async for chunk in provider.stream(call)]
    else:
        await provider.complete(call)
    headers = fake_upstream.last_request.headers
    assert headers["traceparent"] == TRACEPARENT and headers["tracestate"].startswith("congo=")
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert headers["host"] == f"127.0.0.1:{fake_upstream.port}"
    assert set(headers) <= ALLOWED_HEADERS


@pytest.mark.parametrize("forwarded", [
    (("traceparent", TRACEPARENT + "\r\nx-injected: 1"),),
    (("traceparent", "00-zzzz-00f067aa0ba902b7-01"),),
    (("tracestate", "a=b\r\nx-injected: 1"),),
    (("tracestate", "k=" + "v" * 600),),
    (("tracestate", ""),),
])
async def test_malformed_trace_headers_are_not_forwarded(
    provider: OpenAIProvider, fake_upstream: FakeOpenAIUpstream, forwarded: tuple[tuple[str, str], ...],  # noqa: F811
) -> None:
    await provider.complete(replace(call_for(user_request(), "fake-text"), forward_headers=forwarded))
    headers = fake_upstream.last_request.headers
    assert "traceparent" not in headers and "tracestate" not in headers and "x-injected" not in headers


async def test_smuggled_connection_fields_never_reach_the_upstream(
    provider: OpenAIProvider, fake_upstream: FakeOpenAIUpstream, canary: socket.socket,  # noqa: F811
) -> None:
    elsewhere = f"http://127.0.0.1:{canary.getsockname()[1]}/v1"
    extra = {"api_base": elsewhere, "base_url": elsewhere, "api_key": "sk-attacker", "organization": "org-x",
             "extra_headers": {"x-evil": "1"}, "headers": {"authorization": "Bearer sk-attacker"},
             "deployment_id": "d", "custom_llm_provider": "openai", "timeout": 0.001, "user_api_key": "k",
             "prompt_cache_key": "kept"}
    await provider.complete(call_for(user_request(extra_json=json.dumps(extra)), "fake-text"))
    sent = fake_upstream.last_request
    assert set(sent.body) == {"model", "messages", "prompt_cache_key"}
    assert "x-evil" not in sent.headers and sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert connections_to(canary) == 0


@pytest.fixture()
def mistral_upstream() -> Iterator[FakeOpenAIUpstream]:
    """A fake as strict as Mistral: unknown fields are a 422, ids must be 9 alphanumerics."""
    with FakeOpenAIUpstream(expected_key=UPSTREAM_KEY, vendor="mistral") as upstream:
        yield upstream


def openai_shaped_history(*, stream: bool = False) -> ChatRequest:
    """A conversation started at OpenAI (its ids, a developer message, names), continued elsewhere."""
    cls = chat_pb2.StreamChatCompletionRequest if stream else chat_pb2.CreateChatCompletionRequest
    r = cls(model="client-model", seed=7, max_completion_tokens=50, temperature=0.0)
    r.messages.add(role=types_pb2.ROLE_DEVELOPER, content="Be terse.")
    r.messages.add(role=types_pb2.ROLE_USER, content="Weather in Paris?", name="alice")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, extra_json='{"reasoning_content": "Use the tool."}',
                   tool_calls=[chat_pb2.ToolCall(id="call_Xy7_abc", type="function", function=chat_pb2.FunctionCall(
                       name="get_weather", arguments='{"city":"Paris"}'))])
    r.messages.add(role=types_pb2.ROLE_TOOL, content='{"temp_c":21}', tool_call_id="call_Xy7_abc")
    return r


@pytest.mark.parametrize("streaming", [False, True])
async def test_the_mistral_dialect_satisfies_a_strict_mistral(
    http: UpstreamClient, mistral_upstream: FakeOpenAIUpstream, streaming: bool,
) -> None:
    provider = OpenAIProvider(settings(mistral_upstream.base_url, vendor="mistral"), http)
    request = openai_shaped_history(stream=streaming)
    if streaming:
        chunks, error = await collect(provider, request, "fake-echo")
        assert error is None and text_of(chunks) == TOOL_REPLY
        assert not chunks[-1].choices and chunks[-1].usage.total_tokens > 0, "usage arrives without stream_options"
    else:
        response = await provider.complete(call_for(request, "fake-echo"))
        assert response.choices[0].message.content == TOOL_REPLY
    sent = mistral_upstream.last_request.body
    mapped = translate.mistral_tool_call_id("call_Xy7_abc")
    assert sent["messages"][2]["tool_calls"][0]["id"] == sent["messages"][3]["tool_call_id"] == mapped
    assert (sent["random_seed"], sent["max_tokens"]) == (7, 50)
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool"]


async def test_mistral_tool_call_ids_come_back_unchanged(http: UpstreamClient,
                                                         mistral_upstream: FakeOpenAIUpstream) -> None:
    provider = OpenAIProvider(settings(mistral_upstream.base_url, vendor="mistral"), http)
    response = await provider.complete(call_for(user_request("Weather?", tools=[WEATHER]), "fake-tools"))
    ids = [c.id for c in response.choices[0].message.tool_calls]
    assert ids == ["fk00001c0", "fk00001c1"]
    follow_up = user_request("Weather?")
    follow_up.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=response.choices[0].message.tool_calls)
    for call_id in ids:
        follow_up.messages.add(role=types_pb2.ROLE_TOOL, content="21", tool_call_id=call_id)
    await provider.complete(call_for(follow_up, "fake-tools"))
    assert [m.get("tool_call_id") for m in mistral_upstream.last_request.body["messages"][2:]] == ids


async def test_without_the_dialect_a_strict_mistral_refuses_and_its_flat_error_parses(
    http: UpstreamClient, mistral_upstream: FakeOpenAIUpstream,
) -> None:
    provider = OpenAIProvider(settings(mistral_upstream.base_url), http)  # 127.0.0.1: generic
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(openai_shaped_history(), "fake-echo"))
    error = caught.value
    assert error.reason == Reason.INVALID_REQUEST and error.upstream_status == 422
    assert "Extra inputs are not permitted" in error.message and "seed" in error.message


@pytest.fixture()
def groq_upstream() -> Iterator[FakeOpenAIUpstream]:
    """A fake as strict as Groq: logprobs, logit_bias, top_logprobs, n != 1 and names are a 400."""
    with FakeOpenAIUpstream(expected_key=UPSTREAM_KEY, vendor="groq") as upstream:
        yield upstream


@pytest.mark.parametrize("streaming", [False, True])
async def test_groq_rejects_before_calling_upstream(http: UpstreamClient, groq_upstream: FakeOpenAIUpstream,
                                                    streaming: bool) -> None:
    provider = OpenAIProvider(settings(groq_upstream.base_url, vendor="groq"), http)
    request = user_request(stream=streaming, logprobs=True)
    with pytest.raises(GatewayError) as caught:
        if streaming:
            async for _ in provider.stream(call_for(request, "fake-text")):
                pass
        else:
            await provider.complete(call_for(request, "fake-text"))
    assert caught.value.reason == Reason.UNSUPPORTED_PARAMETER and caught.value.param == "logprobs"
    assert "logprobs" in caught.value.message and groq_upstream.requests == []


async def test_groq_drop_policy_proceeds_and_logs_names_only(
    http: UpstreamClient, groq_upstream: FakeOpenAIUpstream, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tollgate.providers.openai")
    provider = OpenAIProvider(settings(groq_upstream.base_url, vendor="groq", unsupported_param_policy="drop"), http)
    request = user_request("Secret prompt text", logprobs=True, top_logprobs=2, n=1, temperature=0.0)
    request.messages[0].name = "bob"
    response = await provider.complete(call_for(request, "fake-echo"))
    assert response.choices[0].message.content == "Secret prompt text"
    sent = groq_upstream.last_request.body
    assert "logprobs" not in sent and "top_logprobs" not in sent and "name" not in sent["messages"][0]
    assert sent["temperature"] == 1e-8 and sent["n"] == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "tollgate.providers.openai"]
    assert any("logprobs,top_logprobs" in line for line in logged)
    assert not any("Secret prompt" in line for line in logged)


@pytest.mark.parametrize(("model", "reason", "message", "param"), [
    ("fake-flat-error-400", Reason.INVALID_REQUEST, "Scripted flat error 400; see [url] for details.", None),
    ("fake-flat-error-422", Reason.INVALID_REQUEST, "logprobs: Extra inputs are not permitted", "logprobs"),
    ("fake-flat-error-403", Reason.UPSTREAM_ERROR, "upstream authentication failed", None),
    ("fake-flat-error-503", Reason.UPSTREAM_UNAVAILABLE, "upstream unavailable", None),
])
async def test_flat_error_bodies_map(provider: OpenAIProvider, model: str, reason: Reason, message: str,
                                     param: str | None) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(call_for(user_request(), model))
    assert (caught.value.reason, caught.value.message, caught.value.param) == (reason, message, param)
