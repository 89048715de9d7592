"""The HTTP facade end to end: the official openai SDK and raw HTTP against uvicorn, a fake core behind.

The fake core is a scripted gateway.v1.ChatService on a real grpc.aio server;
it records the requests and metadata it receives and notices cancellation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from gateway_core.pb.gateway.v1 import types_pb2
from http_facade.app import create_app
from tests.facade_support import (
    CHAT_ID,
    Harness,
    Pause,
    chunk,
    closed_port_target,
    completion,
    in_thread,
    sse_data,
    text_deltas,
    tool_call_deltas,
)

KEY = "sk-tg-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_BODY = 64 * 1024
HELLO = [{"role": "user", "content": "hi"}]
REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


class Facades:
    """The facades under test, all in front of the same fake core."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.core = harness.core
        self.url = harness.serve(create_app(harness.core_target, max_body_bytes=MAX_BODY))
        self.fast_heartbeat_url = harness.serve(create_app(harness.core_target, heartbeat_seconds=0.1))
        self.short_deadline_url = harness.serve(create_app(harness.core_target, call_timeout_seconds=0.3))
        self.no_core_url = harness.serve(create_app(closed_port_target()))


@pytest.fixture(scope="module")
def facades() -> Iterator[Facades]:
    harness = Harness()
    try:
        yield Facades(harness)
    finally:
        harness.close()


@pytest.fixture
def env(facades: Facades) -> Facades:
    facades.core.reset()
    facades.harness.set_serving(True)
    return facades


@pytest.fixture
def client(env: Facades) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{env.url}/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk


def post(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=10, **kwargs)


def only_call(env: Facades) -> Any:
    [call] = env.core.calls
    return call


# --- Non-stream ----------------------------------------------------------------------


def test_non_stream_with_sync_sdk(env: Facades, client: openai.OpenAI) -> None:
    env.core.unary = [completion(extra_json='{"reasoning_content":"thought"}')]
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=HELLO, temperature=0.5, extra_body={"top_k": 5, "api_key": "sk-upstream"}
    )
    result = raw.parse()
    assert result.id == CHAT_ID
    assert result.choices[0].message.content == "Hello!"
    assert result.choices[0].message.model_extra == {"reasoning_content": "thought"}
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (
        19,
        10,
        29,
    )
    assert result.usage.prompt_tokens_details.cached_tokens == 3
    assert result.usage.completion_tokens_details.reasoning_tokens == 2
    assert result.system_fingerprint == "fp_test"

    call = only_call(env)
    assert call.method == "CreateChatCompletion"
    assert call.metadata["authorization"] == f"Bearer {KEY}"
    assert REQUEST_ID.fullmatch(raw.headers["x-request-id"])
    assert call.metadata["x-request-id"] == raw.headers["x-request-id"] == call.request.request_id
    assert call.request.model == "fake-model"
    assert call.request.temperature == 0.5
    assert orjson.loads(call.request.extra_json) == {"top_k": 5}  # api_key never travels


async def test_non_stream_tool_calls_with_async_sdk(env: Facades) -> None:
    tool_call = pb.ToolCall(
        id="call_abc", type="function", function=pb.FunctionCall(name="f", arguments='{"x":1}')
    )
    env.core.unary = [
        completion(None, tool_calls=[tool_call], finish_reason=types_pb2.FINISH_REASON_TOOL_CALLS)
    ]
    async with openai.AsyncOpenAI(base_url=f"{env.url}/v1", api_key=KEY, max_retries=0) as sdk:
        result = await sdk.chat.completions.create(
            model="fake-model",
            messages=HELLO,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    message = result.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("call_abc", "f", '{"x":1}')
    ]
    assert result.choices[0].finish_reason == "tool_calls"
    assert only_call(env).request.tools[0].function.parameters_json == '{"type":"object"}'


# --- Streams -------------------------------------------------------------------------


async def test_stream_with_usage_async_sdk(env: Facades) -> None:
    env.core.stream = text_deltas("Hello", " world")
    async with openai.AsyncOpenAI(base_url=f"{env.url}/v1", api_key=KEY, max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(
            model="fake-model", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert {c.id for c in chunks} == {CHAT_ID}
    *body, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens == 29
    assert all(c.usage is None for c in body)
    assert body[-1].choices[0].finish_reason == "stop"
    call = only_call(env)
    assert call.method == "StreamChatCompletion"
    assert call.request.stream_options.include_usage is True
    assert call.metadata["authorization"] == f"Bearer {KEY}"


def test_stream_without_usage_sync_sdk(env: Facades, client: openai.OpenAI) -> None:
    env.core.stream = text_deltas("Hi")
    chunks = list(client.chat.completions.create(model="fake-model", messages=HELLO, stream=True))
    assert all(c.choices for c in chunks)  # the core's usage message is not passed on
    assert all(c.usage is None for c in chunks)
    assert [c.choices[0].delta.content for c in chunks] == ["", "Hi", None]


@pytest.mark.parametrize("include_usage", [True, False])
def test_raw_sse_lines(env: Facades, include_usage: bool) -> None:
    env.core.stream = text_deltas("Hi")
    body: dict[str, Any] = {"model": "fake-model", "messages": HELLO, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = post(env.url, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert REQUEST_ID.fullmatch(response.headers["x-request-id"])
    assert response.text.endswith("data: [DONE]\n\n")
    *events, done = sse_data(response.text)
    assert done == "[DONE]"
    chunks = [orjson.loads(e) for e in events]
    if include_usage:
        assert [c["usage"] for c in chunks[:-1]] == [None] * 3
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 29
    else:
        assert len(chunks) == 3 and all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "Hi"}
    assert chunks[2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_tool_call_stream_accumulates_in_sdk(env: Facades, client: openai.OpenAI) -> None:
    env.core.stream = tool_call_deltas()
    tools: Any = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "get_time"}},
    ]
    with client.chat.completions.stream(model="fake-model", messages=HELLO, tools=tools) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in calls] == [
        ("call_abc", "function", "get_weather", '{"city":"Paris"}'),
        ("call_def", "function", "get_time", "{}"),
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    raw = sse_data(post(env.url, {"model": "fake-model", "messages": HELLO, "stream": True}).text)
    later = orjson.loads(raw[2])["choices"][0]["delta"]["tool_calls"][0]
    assert later == {"index": 0, "function": {"arguments": '{"city":'}}


def test_heartbeat_while_core_is_silent(env: Facades) -> None:
    first, *rest = text_deltas("late")
    env.core.stream = [first, Pause(0.35), *rest]
    response = post(env.fast_heartbeat_url, {"model": "fake-model", "messages": HELLO, "stream": True})
    assert ": ping\n\n" in response.text
    assert [orjson.loads(d)["choices"][0]["delta"].get("content") for d in sse_data(response.text)[:-1]] == [
        "",
        "late",
        None,
    ]
    with openai.OpenAI(base_url=f"{env.fast_heartbeat_url}/v1", api_key=KEY, max_retries=0) as sdk:
        env.core.stream = [first, Pause(0.35), *rest]
        chunks = list(sdk.chat.completions.create(model="fake-model", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "late"


# --- Errors --------------------------------------------------------------------------

PRE_STREAM_ERRORS = [
    (
        GatewayError(Reason.INVALID_API_KEY, "Incorrect API key provided."),
        openai.AuthenticationError,
        401,
        "invalid_api_key",
        None,
    ),
    (
        GatewayError(Reason.PERMISSION_DENIED, "Not allowed."),
        openai.PermissionDeniedError,
        403,
        "permission_denied",
        None,
    ),
    (
        GatewayError(Reason.MODEL_NOT_FOUND, "The model `x` does not exist."),
        openai.NotFoundError,
        404,
        "model_not_found",
        None,
    ),
    (
        GatewayError(Reason.INSUFFICIENT_BALANCE, "Balance too low."),
        openai.RateLimitError,
        429,
        "insufficient_quota",
        None,
    ),
    (
        GatewayError(Reason.INVALID_REQUEST, "Bad image.", param="messages[0].content[1]"),
        openai.BadRequestError,
        400,
        None,
        "messages[0].content[1]",
    ),
    (
        GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider failed."),
        openai.InternalServerError,
        502,
        "upstream_error",
        None,
    ),
]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("error", "exc_class", "status", "code", "param"), PRE_STREAM_ERRORS)
def test_errors_before_the_first_byte_are_http_errors(
    env: Facades,
    client: openai.OpenAI,
    stream: bool,
    error: GatewayError,
    exc_class: type[openai.APIStatusError],
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    if stream:
        env.core.stream = [error]
    else:
        env.core.unary = [error]
    with pytest.raises(exc_class) as info:
        client.chat.completions.create(model="fake-model", messages=HELLO, stream=stream)
    assert info.value.status_code == status
    assert (info.value.code, info.value.param) == (code, param)
    assert info.value.body == {
        "message": error.message,
        "type": info.value.type,
        "param": param,
        "code": code,
    }
    assert info.value.request_id == env.core.calls[0].metadata["x-request-id"]


def test_rate_limit_and_quota_headers(env: Facades) -> None:
    env.core.unary = [GatewayError(Reason.RATE_LIMITED, "Slow down.", retry_after_seconds=1.5)]
    limited = post(env.url, {"model": "fake-model", "messages": HELLO})
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
    assert limited.json() == {
        "error": {"message": "Slow down.", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }
    env.core.unary = [GatewayError(Reason.INSUFFICIENT_BALANCE, "Balance too low.")]
    broke = post(env.url, {"model": "fake-model", "messages": HELLO})
    assert (broke.status_code, broke.headers["x-should-retry"]) == (429, "false")
    assert broke.json()["error"]["type"] == "insufficient_quota"


def test_mid_stream_error_is_sent_in_band(env: Facades, client: openai.OpenAI) -> None:
    script = [
        *text_deltas("partial")[:2],
        GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider failed."),
    ]
    env.core.stream = list(script)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for c in client.chat.completions.create(model="fake-model", messages=HELLO, stream=True):
            seen.append(c.choices[0].delta.content or "")
    assert seen == ["", "partial"]
    assert info.value.message == "The upstream provider failed."
    env.core.stream = list(script)
    response = post(env.url, {"model": "fake-model", "messages": HELLO, "stream": True})
    assert response.status_code == 200
    assert orjson.loads(sse_data(response.text)[-1]) == {
        "error": {
            "message": "The upstream provider failed.",
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        }
    }


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"model": "fake-model", ', "could not parse the JSON body"),
        (b"[]", "must be a JSON object"),
        (b"", "could not parse"),
    ],
)
def test_malformed_json_is_400(env: Facades, content: bytes, fragment: str) -> None:
    response = httpx.post(f"{env.url}/v1/chat/completions", content=content, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert REQUEST_ID.fullmatch(response.headers["x-request-id"])
    assert env.core.calls == []


def test_validation_error_reaches_sdk_with_param(env: Facades, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-model", messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc,list-item]
    assert (info.value.param, info.value.code) == ("messages[0].role", "invalid_value")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-model", messages=HELLO, temperature=3)
    assert info.value.param == "temperature"
    assert env.core.calls == []


def test_oversized_chunked_body_is_413(env: Facades) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 8192
        yield b'"}]}'

    response = httpx.post(f"{env.url}/v1/chat/completions", content=chunks(), headers=AUTH)
    assert "content-length" not in response.request.headers  # really chunked
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert REQUEST_ID.fullmatch(response.headers["x-request-id"])
    assert env.core.calls == []


def test_oversized_declared_body_is_413(env: Facades) -> None:
    response = post(
        env.url, {"model": "fake-model", "messages": [{"role": "user", "content": "x" * MAX_BODY}]}
    )
    assert response.status_code == 413
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_core_unreachable_is_503(env: Facades) -> None:
    with (
        openai.OpenAI(base_url=f"{env.no_core_url}/v1", api_key=KEY, max_retries=0) as sdk,
        pytest.raises(openai.InternalServerError) as info,
    ):
        sdk.chat.completions.create(model="fake-model", messages=HELLO)
    assert info.value.status_code == 503
    assert info.value.body == {
        "message": "gateway core unavailable",
        "type": "server_error",
        "param": None,
        "code": "service_unavailable",
    }


def test_core_deadline_is_504_and_cancels_the_call(env: Facades) -> None:
    env.core.unary = [Pause()]
    response = post(env.short_deadline_url, {"model": "fake-model", "messages": HELLO})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert env.core.cancelled.wait(5)


def test_unexpected_failure_is_an_openai_500_with_request_id(env: Facades) -> None:
    broken = completion()
    broken.choices[0].logprobs_json = "{not json"
    env.core.unary = [broken]
    response = post(env.url, {"model": "fake-model", "messages": HELLO})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert REQUEST_ID.fullmatch(response.headers["x-request-id"])


# --- Cancellation --------------------------------------------------------------------


def test_client_disconnect_mid_stream_cancels_the_core_call(env: Facades) -> None:
    env.core.stream = [text_deltas("x")[0], Pause()]
    body = {"model": "fake-model", "messages": HELLO, "stream": True}
    with httpx.stream(
        "POST", f"{env.url}/v1/chat/completions", json=body, headers=AUTH, timeout=10
    ) as response:
        assert response.status_code == 200
        first_line = next(response.iter_lines())
        assert first_line.startswith("data: ")
    assert env.core.cancelled.wait(5)


async def test_client_disconnect_before_first_message_cancels(env: Facades) -> None:
    env.core.stream = [Pause()]
    async with httpx.AsyncClient(timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                f"{env.url}/v1/chat/completions",
                headers=AUTH,
                json={"model": "fake-model", "messages": HELLO, "stream": True},
            )
    assert await in_thread(lambda: env.core.cancelled.wait(5))


def test_client_disconnect_non_stream_cancels(env: Facades) -> None:
    env.core.unary = [Pause()]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{env.url}/v1/chat/completions",
            json={"model": "fake-model", "messages": HELLO},
            headers=AUTH,
            timeout=0.3,
        )
    assert env.core.cancelled.wait(5)


# --- Models, health, routing ---------------------------------------------------------


def test_models_list_and_retrieve(env: Facades, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [(m.id, m.object, m.created, m.owned_by) for m in models.data] == [
        ("fake-model", "model", 1700000000, "mock"),
        ("org/model-with/slashes", "model", 1700000001, "vllm"),
    ]
    assert client.models.retrieve("org/model-with/slashes").owned_by == "vllm"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nope")
    assert info.value.code == "model_not_found"
    assert all(c.metadata["authorization"] == f"Bearer {KEY}" for c in env.core.calls)
    raw = httpx.get(f"{env.url}/v1/models", headers=AUTH).json()
    assert raw == {
        "object": "list",
        "data": [
            {"id": "fake-model", "object": "model", "created": 1700000000, "owned_by": "mock"},
            {"id": "org/model-with/slashes", "object": "model", "created": 1700000001, "owned_by": "vllm"},
        ],
    }


def test_health_and_readiness(env: Facades) -> None:
    assert httpx.get(f"{env.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{env.url}/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
    env.harness.set_serving(False)
    assert httpx.get(f"{env.url}/readyz").status_code == 503
    assert httpx.get(f"{env.no_core_url}/readyz").status_code == 503
    assert httpx.get(f"{env.no_core_url}/healthz").status_code == 200


def test_unknown_path_and_wrong_method_are_openai_errors(env: Facades) -> None:
    missing = httpx.post(f"{env.url}/v1/completions-typo", json={})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/completions-typo)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    wrong = httpx.get(f"{env.url}/v1/chat/completions")
    assert wrong.status_code == 405
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}
    assert wrong.headers["allow"] == "POST"
    for response in (missing, wrong):
        assert REQUEST_ID.fullmatch(response.headers["x-request-id"])
    no_docs = httpx.get(f"{env.url}/docs")
    assert no_docs.status_code == 404 and "error" in no_docs.json()
    assert httpx.get(f"{env.url}/openapi.json").status_code == 404


def test_every_response_carries_a_fresh_request_id(env: Facades) -> None:
    env.core.unary = [completion()]
    env.core.stream = text_deltas("x")
    responses = [
        post(env.url, {"model": "fake-model", "messages": HELLO}),
        post(env.url, {"model": "fake-model", "messages": HELLO, "stream": True}),
        post(env.url, {"model": "fake-model"}),
        httpx.get(f"{env.url}/v1/models", headers=AUTH),
        httpx.get(f"{env.url}/v1/models/unknown", headers=AUTH),
        httpx.get(f"{env.url}/healthz"),
        httpx.get(f"{env.url}/readyz"),
        httpx.get(f"{env.url}/nowhere"),
        httpx.post(f"{env.url}/v1/chat/completions", content=b"{", headers={"x-request-id": "client-chosen"}),
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(REQUEST_ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    chat_calls = [c for c in env.core.calls if c.method != "ListModels"]
    assert [c.metadata["x-request-id"] for c in chat_calls] == ids[:2]


def test_request_without_authorization_sends_none(env: Facades) -> None:
    env.core.unary = [GatewayError(Reason.INVALID_API_KEY, "Missing API key.")]
    response = httpx.post(f"{env.url}/v1/chat/completions", json={"model": "fake-model", "messages": HELLO})
    assert response.status_code == 401
    assert "authorization" not in only_call(env).metadata


def test_final_usage_only_stream_message(env: Facades) -> None:
    env.core.stream = [chunk(with_usage=True)]
    response = post(
        env.url,
        {"model": "fake-model", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert [orjson.loads(d)["choices"] for d in sse_data(response.text)[:-1]] == [[]]
