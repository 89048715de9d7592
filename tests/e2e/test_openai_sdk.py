"""End to end: the official openai SDK -> facade (uvicorn) -> gRPC core -> providers.

The mock provider and a fake OpenAI-compatible upstream (real HTTP on a free
port, OpenAI's exact wire format) stand behind a real core on a SQLite file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import TRANSPORTS, RunningGateway, running_gateway, settings_for

UPSTREAM_KEY = "sk-upstream-operator-secret-0123456789abcdef"
FAKE_MODELS = ["fake-text", "fake-tools", "fake-slow", "fake-error-401", "fake-error-429", "fake-error-500",
               "fake-reset", "fake-no-usage", "fake-reasoning"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream(expected_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            upstream: FakeOpenAIUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("e2e"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}],
        models=[
            {"name": f"gpt-{m.removeprefix('fake-')}", "routes": [{"provider": "up", "model": m}],
             "input_price": 1, "output_price": 2}
            for m in FAKE_MODELS
        ],
        # A client that leaves is drained this long before the upstream is closed.
        metering={"drain_seconds": 0.5},
    )
    with running_gateway(settings, in_process=request.param == "in_process") as running:
        yield running


@pytest.fixture(scope="module")
def key(gateway: RunningGateway) -> str:
    return gateway.create_key()[2]


@pytest.fixture()
def client(gateway: RunningGateway, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0) as sdk:
        yield sdk


@pytest.fixture()
async def aclient(gateway: RunningGateway, key: str) -> openai.AsyncOpenAI:
    sdk = openai.AsyncOpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0)
    yield sdk
    await sdk.close()


USER_HELLO = [{"role": "user", "content": "Hello there, gateway!"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_sync_completion_with_request_id(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mock-chat", messages=USER_HELLO)
    assert raw.headers["x-request-id"]
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.model == "mock-chat"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_async_stream_matches_unary_text(aclient: openai.AsyncOpenAI) -> None:
    whole = await aclient.chat.completions.create(model="mock-chat", messages=USER_HELLO)
    stream = await aclient.chat.completions.create(model="mock-chat", messages=USER_HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(not c.usage for c in chunks), "no usage chunk unless include_usage was asked for"
    assert len({c.id for c in chunks}) == 1


def test_usage_chunk_only_when_asked(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="mock-echo", messages=USER_HELLO, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there, gateway!"


def test_raw_sse_framing(gateway: RunningGateway, key: str) -> None:
    body = {"model": "mock-echo", "messages": USER_HELLO, "stream": True}
    with httpx.stream("POST", f"{gateway.http_url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert all(e["choices"] for e in events), "no choices:[] usage chunk when not asked"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_mock_tool_calls_stream_accumulates(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="mock-chat", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                        tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id
    assert "city" in json.loads(call.function.arguments)


def test_tool_round_trip_through_openai_upstream(client: openai.OpenAI, upstream: FakeOpenAIUpstream) -> None:
    with client.chat.completions.stream(model="gpt-tools", messages=[{"role": "user", "content": "Weather?"}],
                                        tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert len(calls) == 2 and calls[0].id != calls[1].id
    for call in calls:
        json.loads(call.function.arguments)
    sent = upstream.requests[-1]
    assert sent.body["stream"] is True and sent.body["stream_options"]["include_usage"] is True
    assert sent.body["tools"][0]["function"]["parameters"] == WEATHER_TOOL["function"]["parameters"]
    follow_up = client.chat.completions.create(model="gpt-text", tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump(exclude_none=True) for c in calls]},
        *[{"role": "tool", "tool_call_id": c.id, "content": '{"temp_c": 21}'} for c in calls],
    ])
    assert follow_up.choices[0].message.content
    forwarded = upstream.requests[-1].body["messages"]
    assert forwarded[1]["tool_calls"][0]["id"] == calls[0].id
    assert [m["role"] for m in forwarded] == ["user", "assistant", "tool", "tool"]


def test_upstream_gets_operator_key_and_nothing_of_the_client(client: openai.OpenAI, key: str,
                                                               upstream: FakeOpenAIUpstream) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
    reply = client.chat.completions.create(
        model="gpt-text", messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}],
        extra_headers={"x-secret-client-header": "leak-me"}, extra_body={"api_base": "http://169.254.169.254"},
        temperature=0.3, seed=7, max_tokens=50,
    )
    assert reply.model == "gpt-text" and reply.choices[0].message.content
    sent = upstream.requests[-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert key not in json.dumps(headers) and "x-secret-client-header" not in headers
    assert sent.body["model"] == "fake-text"
    assert sent.body["messages"][0]["content"][1] == image, "image_url passed through unchanged"
    assert "api_base" not in sent.body
    assert (sent.body["temperature"], sent.body["seed"], sent.body["max_tokens"]) == (0.3, 7, 50)


def test_vendor_fields_survive(client: openai.OpenAI, upstream: FakeOpenAIUpstream) -> None:
    reply = client.chat.completions.create(model="gpt-reasoning", messages=[
        {"role": "user", "content": "Think."},
        {"role": "assistant", "content": "Earlier answer", "reasoning_content": "earlier thoughts"},
        {"role": "user", "content": "Again."},
    ])
    assert reply.choices[0].message.model_extra.get("reasoning_content")
    assert upstream.requests[-1].body["messages"][1]["reasoning_content"] == "earlier thoughts"


def test_upstream_usage_missing_is_estimated(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-no-usage", messages=USER_HELLO, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_upstream_auth_failure_never_leaks_the_operator_key(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-error-401", messages=USER_HELLO)
    assert caught.value.status_code == 502
    assert UPSTREAM_KEY not in caught.value.response.text and UPSTREAM_KEY[:12] not in caught.value.response.text
    assert caught.value.response.headers["x-request-id"]


def test_upstream_rate_limit_is_503_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-error-429", messages=USER_HELLO)
    assert caught.value.status_code == 503
    assert caught.value.response.headers.get("retry-after")


def test_upstream_reset_mid_stream_is_an_in_band_error(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-reset", messages=USER_HELLO, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(received), "chunks before the reset reached the client"


@pytest.mark.parametrize("bad", [
    "sk-tg-garbage",
    "not-even-close",
    "sk-tg-AAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "",
])
def test_bad_keys_all_get_the_same_401(gateway: RunningGateway, bad: str) -> None:
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=bad or "x", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk.chat.completions.create(model="mock-chat", messages=USER_HELLO)
    error = caught.value.body
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert bad not in error["message"] or not bad


def test_unknown_revoked_and_malformed_keys_are_indistinguishable(gateway: RunningGateway) -> None:
    _, key_id, secret = gateway.create_key()
    unknown = _other_valid_key(gateway)
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    gateway.revoke_key(key_id)
    time.sleep(2.2)  # the verified-key cache lives 2 s: revocation is honoured within that
    bodies = []
    for candidate in (secret, unknown, tampered):
        response = httpx.post(f"{gateway.http_url}/v1/chat/completions", json={"model": "mock-chat", "messages": USER_HELLO},
                              headers={"Authorization": f"Bearer {candidate}"})
        assert response.status_code == 401
        bodies.append(response.json())
    assert bodies[0] == bodies[1] == bodies[2]


def _other_valid_key(gateway: RunningGateway) -> str:
    """A well-formed key (right checksum) that the database has never seen."""
    from gateway_core.keys import generate_key

    return generate_key()[1]


def test_malformed_requests_are_400_with_param(client: openai.OpenAI, gateway: RunningGateway, key: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock-chat", messages=USER_HELLO, temperature=5)
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="mock-chat", messages=[])
    response = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {key}", "content-type": "application/json"})
    assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=USER_HELLO)
    assert caught.value.body["code"] == "model_not_found"


def test_models_list_respects_allowed_models(gateway: RunningGateway, client: openai.OpenAI) -> None:
    models = client.models.list().data
    listed = {m.id for m in models}
    assert all(m.object == "model" and m.created > 1_700_000_000 and m.owned_by for m in models)
    assert {"mock-chat", "mock-echo", "gpt-text"} <= listed
    assert client.models.retrieve("mock-chat").id == "mock-chat"
    _, _, limited = gateway.create_key(allowed_models=["mock-echo"])
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=limited, max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list()] == ["mock-echo"]
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="mock-chat", messages=USER_HELLO)
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("mock-chat")


def test_client_disconnect_cancels_the_upstream_request(client: openai.OpenAI, upstream: FakeOpenAIUpstream) -> None:
    before = upstream.disconnects
    stream = client.chat.completions.create(model="gpt-slow", messages=USER_HELLO, stream=True)
    for index, _ in enumerate(stream):
        if index == 2:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while upstream.disconnects == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.disconnects == before + 1
