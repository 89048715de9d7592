"""Bad input at the edge: every case gets its 4xx in OpenAI's shape, and the upstream sees nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import TRANSPORTS, RunningGateway, running_gateway, settings_for

HELLO = [{"role": "user", "content": "hi"}]


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
    )
    with running_gateway(settings, facade_options={"max_body_bytes": 1024 * 1024},
                         in_process=request.param == "in_process") as running:
        yield running


@pytest.fixture(scope="module")
def key(gateway: RunningGateway) -> str:
    return gateway.create_key()[2]


def _body(**fields: object) -> bytes:
    return json.dumps({"model": "m", "messages": HELLO, **fields}).encode()


def _deep(depth: int) -> bytes:
    return b'{"model": "m", "messages": ' + b"[" * depth + b"]" * depth + b"}"


CASES: list[tuple[str, bytes, int]] = [
    ("not json", b"{nope", 400),
    ("not an object", b"[1, 2]", 400),
    ("invalid utf-8", b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),
    ("lone surrogate", b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', 400),
    ("deeply nested", _deep(100_000), 400),
    ("oversized", _body(padding="x" * (2 * 1024 * 1024)), 413),
    ("no messages", _body(messages=[]), 400),
    ("role missing", _body(messages=[{"content": "hi"}]), 400),
    ("n zero", _body(n=0), 400),
    ("n huge", _body(n=10**9), 400),
    ("n as string", _body(n="8"), 400),
    ("n as bool", _body(n=True), 400),
    ("max_tokens negative", _body(max_tokens=-1), 400),
    ("max_tokens float", _body(max_tokens=1e309), 400),
    ("temperature NaN", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400),
    ("temperature too high", _body(temperature=5), 400),
    ("stop too many", _body(stop=["a", "b", "c", "d", "e"]), 400),
    ("stream_options without stream", _body(stream_options={"include_usage": True}), 400),
    ("tool without name", _body(tools=[{"type": "function", "function": {}}]), 400),
    ("tool message without id", _body(messages=[{"role": "tool", "content": "x"}]), 400),
]


@pytest.mark.parametrize(("name", "body", "status"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_upstream(gateway: RunningGateway, key: str, upstream: FakeOpenAIUpstream,
                                              name: str, body: bytes, status: int) -> None:
    before = len(upstream.requests)
    response = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=body, timeout=30,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]
    assert len(upstream.requests) == before, "nothing reached the upstream"


def test_smuggled_routing_fields_never_reach_upstream(gateway: RunningGateway, key: str,
                                                      upstream: FakeOpenAIUpstream) -> None:
    smuggled = {"api_base": "http://169.254.169.254", "base_url": "http://127.0.0.1:1", "api_key": "sk-evil",
                "extra_headers": {"x-evil": "1"}, "custom_llm_provider": "evil"}
    response = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=_body(**smuggled),
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert response.status_code == 200
    sent = upstream.requests[-1]
    assert not set(smuggled) & set(sent.body) and "x-evil" not in sent.headers


def test_the_gateway_still_serves_after_all_that(gateway: RunningGateway, key: str) -> None:
    response = httpx.post(f"{gateway.http_url}/v1/chat/completions", content=_body(),
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
