"""Bad input at the edge: every case gets its 4xx in OpenAI's shape, and the upstream sees nothing."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import TRANSPORTS, RunningGateway, running_gateway, settings_for

HELLO = [{"role": "user", "content": "hi"}]
MAX_BODY = 1024 * 1024
# Smaller than the defaults so each bound is cheap to reach, and below MAX_BODY so
# the bound, not the body limit, is what refuses.
LIMITS = {"max_body_bytes": MAX_BODY, "max_string_chars": 100_000, "max_messages": 50, "max_array_items": 1000,
          "max_json_depth": 32, "max_tokens_ceiling": 100_000}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream() as fake:
        yield fake


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            upstream: FakeOpenAIUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("edge"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url}],
        models=[{"name": "m", "routes": [{"provider": "up", "model": "fake-text"}], "input_price": 1, "output_price": 1}],
        http=LIMITS,
    )
    with running_gateway(settings, in_process=request.param == "in_process") as running:
        yield running


@pytest.fixture(scope="module")
def key(gateway: RunningGateway) -> str:
    return gateway.create_key()[2]


def _body(**fields: object) -> bytes:
    return json.dumps({"model": "m", "messages": HELLO, **fields}).encode()


def _raw(fields: bytes) -> bytes:
    """A body with raw JSON text appended to the fields, for what json.dumps will not write."""
    return b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], ' + fields + b"}"


def _content(raw_json_string: bytes) -> bytes:
    return b'{"model": "m", "messages": [{"role": "user", "content": "' + raw_json_string + b'"}]}'


def _deep(depth: int) -> bytes:
    return b'{"model": "m", "messages": ' + b"[" * depth + b"]" * depth + b"}"


def _nested(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"p": schema}}
    return schema


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# (case, body, status, OpenAI error code or None when any code will do, param or None when not checked)
CASES: list[tuple[str, bytes, int, str | None, str | None]] = [
    ("not json", b"{nope", 400, None, None),
    ("not an object", b"[1, 2]", 400, "invalid_type", None),
    ("empty body", b"", 400, None, None),
    ("oversized", _body(padding="x" * (2 * MAX_BODY)), 413, "request_too_large", None),
    # structure bombs
    ("deeply nested (past orjson's own limit)", _deep(100_000), 400, None, None),
    ("nested past max_json_depth", _deep(40), 400, "json_too_deep", None),
    ("nested tool schema", _body(tools=[{**TOOL, "function": {"name": "f", "parameters": _nested(40)}}]),
     400, "json_too_deep", None),
    ("huge array in an unknown field", _body(padding=[0] * 1001), 400, "array_above_max_length", "padding"),
    ("too many messages", _body(messages=HELLO * 51), 400, "array_above_max_length", "messages"),
    ("too many messages, streamed", _body(stream=True, messages=HELLO * 51), 400, "array_above_max_length",
     "messages"),
    ("too many tools", _body(tools=[TOOL] * 129), 400, "array_above_max_length", "tools"),
    ("content too long", _body(messages=[{"role": "user", "content": "x" * 100_001}]), 400,
     "string_above_max_length", "messages[0].content"),
    ("tool description too long", _body(tools=[{**TOOL, "function": {"name": "f", "description": "d" * 100_001}}]),
     400, "string_above_max_length", "tools[0].function.description"),
    ("stop string too long", _body(stop="s" * 100_001), 400, "string_above_max_length", "stop"),
    ("message name too long", _body(messages=[{"role": "user", "content": "hi", "name": "n" * 257}]), 400,
     "string_above_max_length", "messages[0].name"),
    ("model id too long", _body(model="m" * 257), 400, "string_above_max_length", "model"),
    ("no messages", _body(messages=[]), 400, "empty_array", "messages"),
    ("role missing", _body(messages=[{"content": "hi"}]), 400, "missing_required_parameter", "messages[0].role"),
    # numbers
    ("n zero", _body(n=0), 400, "integer_below_min_value", "n"),
    ("n negative", _body(n=-1), 400, "integer_below_min_value", "n"),
    ("n huge", _body(n=10**9), 400, "integer_above_max_value", "n"),
    ("n as string", _body(n="8"), 400, "invalid_type", "n"),
    ("n as bool", _body(n=True), 400, "invalid_type", "n"),
    ("n NaN", _raw(b'"n": NaN'), 400, None, None),
    ("max_tokens negative", _body(max_tokens=-1), 400, "integer_below_min_value", "max_tokens"),
    ("max_tokens above the ceiling", _body(max_tokens=100_001), 400, "integer_above_max_value", "max_tokens"),
    ("max_completion_tokens u64", _body(max_completion_tokens=2**64 - 1), 400, "integer_above_max_value",
     "max_completion_tokens"),
    ("max_tokens beyond u64", _raw(b'"max_tokens": 123456789012345678901234567890'), 400, "invalid_type", "max_tokens"),
    ("max_tokens 1e309", _raw(b'"max_tokens": 1e309'), 400, None, None),
    ("max_tokens as float", _body(max_tokens=10.5), 400, "invalid_type", "max_tokens"),
    ("seed beyond int64", _body(seed=2**63), 400, "integer_above_max_value", "seed"),
    ("temperature NaN", _raw(b'"temperature": NaN'), 400, None, None),
    ("temperature Infinity", _raw(b'"temperature": Infinity'), 400, None, None),
    ("temperature -1e400", _raw(b'"temperature": -1e400'), 400, None, None),
    ("temperature too high", _body(temperature=5), 400, "decimal_above_max_value", "temperature"),
    ("huge number in an unknown field", _raw(b'"x": 1e400'), 400, None, None),
    # unicode
    ("invalid utf-8", _content(b"\xff\xfe"), 400, None, None),
    ("overlong utf-8", _content(b"\xc0\xaf"), 400, None, None),
    ("utf-8 encoded surrogate", _content(b"\xed\xa0\x80"), 400, None, None),
    ("truncated utf-8", _content(b"\xe2\x82"), 400, None, None),
    ("lone high surrogate", _content(b"\\ud800"), 400, None, None),
    ("lone low surrogate", _content(b"\\udc00"), 400, None, None),
    ("high surrogate then a letter", _content(b"\\ud800\\u0041"), 400, None, None),
    ("lone surrogate in a key", _raw(b'"\\ud800": 1'), 400, None, None),
    ("lone surrogate in a tool schema", _raw(b'"tools": [{"type": "function", "function": {"name": "f", '
                                             b'"parameters": {"description": "\\udfff"}}}]'), 400, None, None),
    # the rest of the request
    ("stop too many", _body(stop=["a", "b", "c", "d", "e"]), 400, "array_above_max_length", "stop"),
    ("stream_options without stream", _body(stream_options={"include_usage": True}), 400, None, "stream_options"),
    ("tool without name", _body(tools=[{"type": "function", "function": {}}]), 400, "missing_required_parameter",
     "tools[0].function.name"),
    ("tool message without id", _body(messages=[{"role": "tool", "content": "x"}]), 400,
     "missing_required_parameter", "messages[0].tool_call_id"),
]


@pytest.mark.parametrize(("name", "body", "status", "code", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_upstream(gateway: RunningGateway, key: str, upstream: FakeOpenAIUpstream,
                                              name: str, body: bytes, status: int, code: str | None,
                                              param: str | None) -> None:
    before = len(upstream.requests)
    response = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=body, timeout=30,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    assert response.headers["x-request-id"]
    assert len(upstream.requests) == before, "nothing reached the upstream"


def test_an_oversized_chunked_body_is_refused(gateway: RunningGateway, key: str,
                                              upstream: FakeOpenAIUpstream) -> None:
    """No Content-Length: the facade counts while reading and answers 413 at the limit."""
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(4 * MAX_BODY // 65536):
            sent += 65536
            yield b"x" * 65536
        yield b'"}]}'

    before = len(upstream.requests)
    try:
        response = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=chunks(), timeout=30,
                              headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    except httpx.WriteError:  # the server answered and closed while we were still sending
        response = None
    if response is not None:
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_too_large"
    assert len(upstream.requests) == before


def test_the_chunked_413_comes_before_the_body_ends(gateway: RunningGateway, key: str) -> None:
    """Raw socket: the answer arrives while the client is still sending, and the connection closes."""
    with socket.create_connection(_address(gateway)) as conn:
        conn.settimeout(10)
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n")
        chunk = b"x" * 32768
        for _ in range(MAX_BODY // len(chunk) + 2):  # just past the limit, then stop and listen
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        reply = _read_all(conn)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert b'"code":"request_too_large"' in reply


@pytest.mark.parametrize("header", [b"X-Evil: a\rb", b"X-Evil: a\nInjected: 1", b"X-Evil: a\x00b", b"X-Evil: \x1b[31m",
                                    b"X-Evil: a\x7f", b"X\x01Evil: a", b"Authorization: Bearer sk-tg-x\r\x0aX: y\rz"])
def test_control_characters_in_headers_are_refused(gateway: RunningGateway, key: str, upstream: FakeOpenAIUpstream,
                                                   header: bytes) -> None:
    before = len(upstream.requests)
    body = _body()
    with socket.create_connection(_address(gateway)) as conn:
        conn.settimeout(10)
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\n" + header + b"\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        reply = _read_all(conn)
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"x-request-id: req_" in head
    assert set(json.loads(payload)["error"]) == {"message", "type", "param", "code"}
    assert len(upstream.requests) == before


@pytest.mark.parametrize("path", ["/v1/models/%ED%A0%80", "/v1/models/%FF%FE", "/v1/models/%00", "/v1/models/a%0D%0Ab",
                                  "/v1/%ED%A0%80", "/v1/models/" + "m" * 8000])
def test_odd_bytes_in_the_path_are_a_clean_404(gateway: RunningGateway, key: str, path: str) -> None:
    response = httpx.get(f"{gateway.http_url}{path}", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 404, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_websocket_upgrade_is_just_a_request(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.http_url}/v1/models", headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_a_tab_in_a_header_is_fine(gateway: RunningGateway, key: str) -> None:
    response = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=_body(),
                          headers={"Authorization": f"Bearer {key}", "X-Note": "a\tb"})
    assert response.status_code == 200


def test_smuggled_routing_fields_never_reach_upstream(gateway: RunningGateway, key: str,
                                                      upstream: FakeOpenAIUpstream) -> None:
    smuggled = {"api_base": "http://169.254.169.254", "base_url": "http://127.0.0.1:1", "api_key": "sk-evil",
                "extra_headers": {"x-evil": "1"}, "custom_llm_provider": "evil", "API-Base": "http://10.0.0.1",
                "Api_Key": "sk-evil", " headers ": {"x-evil": "1"}, "user_api_key": "sk-evil",
                "organization": "org-evil", "timeout": 0.001}
    response = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=_body(**smuggled),
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                                   "X-Evil": "1", "OpenAI-Organization": "org-evil"})
    assert response.status_code == 200
    sent = upstream.requests[-1]
    assert not set(smuggled) & set(sent.body), sent.body
    assert "x-evil" not in sent.headers and "openai-organization" not in sent.headers
    assert "sk-evil" not in json.dumps(sent.body) + json.dumps(sent.headers)


def test_the_gateway_still_serves_after_all_that(gateway: RunningGateway, key: str) -> None:
    response = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=_body(),
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]


def _address(gateway: RunningGateway) -> tuple[str, int]:
    host, port = gateway.http_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _read_all(conn: socket.socket) -> bytes:
    reply = b""
    while chunk := conn.recv(65536):
        reply += chunk
    return reply
