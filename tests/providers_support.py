"""Helpers for provider tests: recorded fixtures, calls to build, and a fake-upstream fixture.

Use the fixture from a test module (or a conftest) by importing it:

    from tests.providers_support import fake_upstream  # noqa: F401  (pytest fixture)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ChatRequest, UpstreamCall
from gateway_core.providers.sse import SseDecoder
from tests.fakes.openai_upstream import FakeOpenAIUpstream

FIXTURES = Path(__file__).parent / "fixtures"
UPSTREAM_KEY = "sk-proj-Upstream0perator1Key2For3Tests4Only5abcdef"


def fixture_text(provider: str, name: str) -> str:
    """The text of tests/fixtures/<provider>/<name>."""
    return (FIXTURES / provider / name).read_text()


def fixture_json(provider: str, name: str) -> Any:
    """tests/fixtures/<provider>/<name>, parsed (big integers stay exact)."""
    return json.loads(fixture_text(provider, name))


def fixture_events(provider: str, name: str) -> list[Any]:
    """The data of each SSE event of a recorded .sse stream, parsed, up to [DONE]."""
    decoder = SseDecoder()
    events = decoder.feed((FIXTURES / provider / name).read_bytes()) + decoder.close()
    parsed = []
    for event in events:
        if event.data == "[DONE]":
            break
        parsed.append(json.loads(event.data))
    return parsed


def as_dicts(messages: list[Any]) -> list[dict[str, Any]]:
    """Protobuf messages as JSON-like dicts with proto field names (for comparisons)."""
    return [as_dict(m) for m in messages]


def as_dict(message: ProtoMessage) -> dict[str, Any]:
    """One protobuf message as a JSON-like dict with proto field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def user_request(text: str = "Hello there, gateway!", *, stream: bool = False, **fields: Any) -> ChatRequest:
    """A request with one user message; `fields` are request fields (n=2, stop=[...], ...)."""
    cls = chat_pb2.StreamChatCompletionRequest if stream else chat_pb2.CreateChatCompletionRequest
    request = cls(model="client-model", **fields)
    request.messages.add(role=types_pb2.ROLE_USER, content=text)
    return request


def call_for(request: ChatRequest, upstream_model: str = "chat", *, timeout: float | None = None) -> UpstreamCall:
    """An UpstreamCall as the servicer would build it."""
    return UpstreamCall(
        request=request, upstream_model=upstream_model, client_model="client-model",
        request_id="req-test-1", timeout_seconds=timeout,
    )


@pytest.fixture()
def fake_upstream() -> Iterator[FakeOpenAIUpstream]:
    """A running FakeOpenAIUpstream that requires UPSTREAM_KEY."""
    with FakeOpenAIUpstream(expected_key=UPSTREAM_KEY) as upstream:
        yield upstream
