"""The hot routes' direct path answers exactly as the same endpoints reached through FastAPI.

create_app() puts HotRouteDispatch in front of the FastAPI app; its `.app` is
that FastAPI app alone, where the same endpoints are mounted as routes. Both
are served by uvicorn in front of one fake core, and every response is
compared byte for byte: status, headers (but the request id's value and the
date), body, for successes, streams and each kind of error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from http_facade.app import create_app
from http_facade.dispatch import HotRouteDispatch
from tests.facade_support import Harness, completion, text_deltas, tool_call_deltas

KEY = "sk-tg-test-key"
MAX_BODY = 4096
HELLO = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


class Pair:
    """The same facade twice: the direct path (create_app's result) and FastAPI alone."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        direct = create_app(harness.core_target, max_body_bytes=MAX_BODY)
        assert isinstance(direct, HotRouteDispatch)
        fastapi_only = create_app(harness.core_target, max_body_bytes=MAX_BODY)
        assert isinstance(fastapi_only, HotRouteDispatch)
        self.direct_url = harness.serve(direct)
        self.fastapi_url = harness.serve(fastapi_only.app)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    harness = Harness()
    try:
        yield Pair(harness)
    finally:
        harness.close()


@pytest.fixture
def env(pair: Pair) -> Pair:
    pair.harness.core.reset()
    return pair


def _exchange(url: str, method: str, path: str, content: bytes | None, headers: dict[str, str]) -> tuple[Any, ...]:
    response = httpx.request(method, url + path, content=content, headers=headers, timeout=10)
    assert response.headers.get("x-request-id", "").startswith("req_"), "every response carries its id"
    kept = [(k, v) for k, v in response.headers.multi_items() if k not in ("date", "x-request-id")]
    return response.status_code, kept, response.content


def _same_answer(env: Pair, method: str, path: str, content: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[Any, ...]:
    """Sends the request to both; asserts identical answers and returns one."""
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json", **(headers or {})}
    script = (list(env.harness.core.unary), list(env.harness.core.stream))
    direct = _exchange(env.direct_url, method, path, content, headers)
    env.harness.core.unary, env.harness.core.stream = list(script[0]), list(script[1])
    through_fastapi = _exchange(env.fastapi_url, method, path, content, headers)
    assert direct == through_fastapi
    return direct


def _json(body: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(body)


def test_a_whole_completion_is_the_same(env: Pair) -> None:
    env.harness.core.unary = [completion("Hello there")]
    status, headers, body = _same_answer(env, "POST", CHAT, _json({"model": "fake-model", "messages": HELLO}))
    assert status == 200 and b'"content":"Hello there"' in body
    assert ("content-type", "application/json") in headers


@pytest.mark.parametrize("steps", [text_deltas("Hel", "lo"), tool_call_deltas()], ids=["text", "tools"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_a_stream_is_the_same(env: Pair, steps: list[Any], include_usage: bool) -> None:
    env.harness.core.stream = steps
    request = {"model": "fake-model", "messages": HELLO, "stream": True,
               "stream_options": {"include_usage": include_usage}}
    status, headers, body = _same_answer(env, "POST", CHAT, _json(request))
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert ("content-type", "text/event-stream; charset=utf-8") in headers
    assert (b'"usage":{' in body) is include_usage


def test_a_stream_the_core_ends_at_once_is_the_same(env: Pair) -> None:
    env.harness.core.stream = []
    status, _, body = _same_answer(env, "POST", CHAT, _json({"model": "fake-model", "messages": HELLO, "stream": True}))
    assert (status, body) == (200, b"data: [DONE]\n\n")


def test_a_stream_failing_midway_is_the_same(env: Pair) -> None:
    env.harness.core.stream = [*text_deltas("a")[:2], GatewayError(Reason.UPSTREAM_ERROR, "upstream broke")]
    status, _, body = _same_answer(env, "POST", CHAT, _json({"model": "fake-model", "messages": HELLO, "stream": True}))
    assert status == 200 and b'"code":"upstream_error"' in body.split(b"\n\n")[-2]


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (_json({"messages": HELLO}), 400),
        (_json({"model": "fake-model", "messages": [{"role": "wizard", "content": "x"}]}), 400),
        (_json({"model": "fake-model", "messages": HELLO, "n": 1000}), 400),
        (_json({"model": "fake-model", "messages": [{"role": "user", "content": "x" * MAX_BODY}]}), 413),
    ],
    ids=["bad-json", "not-object", "no-model", "bad-role", "n-too-big", "too-large"],
)
def test_a_refused_request_is_the_same(env: Pair, content: bytes, status: int) -> None:
    got, _, body = _same_answer(env, "POST", CHAT, content)
    assert got == status and body.startswith(b'{"error":{')
    assert env.harness.core.calls == [], "refused before the core"


def test_a_chunked_body_over_the_limit_is_the_same(env: Pair) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model":"fake-model","messages":[{"role":"user","content":"'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    for url in (env.direct_url, env.fastapi_url):
        response = httpx.post(url + CHAT, content=chunks(), headers={"authorization": f"Bearer {KEY}"}, timeout=10)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    "error",
    [
        GatewayError(Reason.INVALID_API_KEY, "Incorrect API key provided."),
        GatewayError(Reason.INSUFFICIENT_BALANCE, "Balance too low."),
        GatewayError(Reason.RATE_LIMITED, "Slow down.", retry_after_seconds=1.5),
        GatewayError(Reason.INVALID_REQUEST, "Bad image.", param="messages[0].content[1]"),
    ],
    ids=lambda error: error.reason.value,
)
@pytest.mark.parametrize("stream", [False, True])
def test_a_core_refusal_is_the_same(env: Pair, error: GatewayError, stream: bool) -> None:
    if stream:
        env.harness.core.stream = [error]
    else:
        env.harness.core.unary = [error]
    status, _, body = _same_answer(env, "POST", CHAT, _json({"model": "fake-model", "messages": HELLO, "stream": stream}))
    assert status >= 400 and body.startswith(b'{"error":{')


def test_the_model_list_is_the_same(env: Pair) -> None:
    status, _, body = _same_answer(env, "GET", "/v1/models")
    assert status == 200 and b'"org/model-with/slashes"' in body


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", CHAT, 405), ("PUT", "/v1/models", 405), ("POST", "/v1/chat/completion", 404),
    ("GET", "/v1/models/fake-model", 200),
])
def test_other_methods_and_paths_are_the_same(env: Pair, method: str, path: str, status: int) -> None:
    got, _, body = _same_answer(env, method, path)
    assert got == status and body.startswith(b"{")


def test_both_forward_the_same_metadata_to_the_core(env: Pair) -> None:
    env.harness.core.unary = [completion()]
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _same_answer(env, "POST", CHAT, _json({"model": "fake-model", "messages": HELLO, "user": "u1"}),
                 headers={"traceparent": traceparent})
    direct, through_fastapi = env.harness.core.calls
    assert direct.request.model == through_fastapi.request.model == "fake-model"
    assert isinstance(direct.request, pb.CreateChatCompletionRequest)
    for recorded in (direct, through_fastapi):
        assert recorded.metadata["authorization"] == f"Bearer {KEY}"
        assert recorded.metadata["traceparent"] == traceparent
    assert direct.metadata["x-request-id"] != through_fastapi.metadata["x-request-id"]
    assert direct.request.request_id == direct.metadata["x-request-id"]
