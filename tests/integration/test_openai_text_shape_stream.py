"""OpenAIStream reads most text deltas through a learned TextShape: the chunks are the same as the parser's.

A raw upstream (tests/fakes/raw_openai_upstream.py) writes bursts of every
kind of event; each is read twice, with shapes (the default) and with the
parser alone (SHAPE_TRIES = 0), and the two streams must be byte for byte
the same, errors included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway_core.config import ProviderSettings
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import ProviderError
from gateway_core.providers.http import make_http_client
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.openai import stream as openai_stream
from gateway_core.providers.openai.client import OpenAIProvider
from tests.fakes.raw_openai_upstream import END, FINISH, FIRST, HEAD, USAGE, RawUpstream, event, token
from tests.providers_support import call_for, user_request

FIRST_1 = FIRST.replace(b'"index":0', b'"index":1')
ESCAPED = token("line\\nbreak")  # the wire form of "line\nbreak": an escape, so the parser reads it
QUOTED = token('say \\"hi\\"')
MIXED = [FIRST, FIRST_1, token("a"), token("b"), ESCAPED, token("c"), token("d", index=1), token("e", index=1),
         token("f"), token("g", fingerprint="fp_1"), token("h", fingerprint="fp_1"), QUOTED, token("i"),
         token("j", index=1), token("k", fingerprint="fp_1"), token("l"), FINISH, USAGE, b"[DONE]"]


@pytest.fixture()
async def http() -> AsyncIterator[UpstreamClient]:
    async with make_http_client() as client:
        yield client


async def read_all(body: bytes, http: UpstreamClient) -> tuple[list[bytes], str | None]:
    """Every chunk of one stream (serialized), and the failure that ended it, if any."""
    async with RawUpstream([(0, body)]) as upstream:
        provider = OpenAIProvider(
            ProviderSettings(name="up", type="openai", base_url=upstream.base_url, api_key="sk-up"), http)
        stream = provider.stream(call_for(user_request(stream=True)))
        chunks: list[chat_pb2.StreamChatCompletionResponse] = []
        try:
            async for chunk in stream:
                chunks.append(chunk)
        except ProviderError as failure:
            return [c.SerializeToString() for c in chunks], f"{failure.reason}: {failure.message}"
        return [c.SerializeToString() for c in chunks], None


async def with_and_without_shapes(body: bytes, http: UpstreamClient,
                                  monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[list[bytes], str | None], ...]:
    shaped = await read_all(body, http)
    monkeypatch.setattr(openai_stream, "SHAPE_TRIES", 0)
    parsed = await read_all(body, http)
    return shaped, parsed


@pytest.mark.parametrize("events", [
    MIXED,
    [FIRST, *(token(f"t{i} ") for i in range(200)), FINISH, USAGE, b"[DONE]"],
    [FIRST, token("a"), b'{"choices":[{"index":0,"delta":{"content":"reordered"}}],"id":"chatcmpl-1"}',
     token("b"), FINISH, b"[DONE]"],
], ids=["mixed", "long", "reordered"])
async def test_a_burst_gives_the_same_chunks_with_shapes_as_with_the_parser_alone(
    events: list[bytes], http: UpstreamClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    shaped, parsed = await with_and_without_shapes(HEAD + b"".join(map(event, events)) + END, http, monkeypatch)
    assert shaped == parsed and shaped[1] is None
    assert len(shaped[0]) >= 3


async def test_a_named_error_event_of_a_text_deltas_shape_is_still_an_error(
    http: UpstreamClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    named = b"event: error\ndata: " + token("b") + b"\n\n"
    body = (HEAD + event(FIRST) + event(token("a")) + b"%x\r\n%s\r\n" % (len(named), named) + event(token("c"))
            + event(b"[DONE]") + END)
    shaped, parsed = await with_and_without_shapes(body, http, monkeypatch)
    assert shaped == parsed
    assert shaped[1] is not None, "the error event ended the stream"
    texts = [chat_pb2.StreamChatCompletionResponse.FromString(c).choices[0].delta.content for c in shaped[0]]
    assert texts == ["", "a"]


async def test_a_raw_control_character_is_still_malformed_after_a_shape_is_learned(
    http: UpstreamClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = HEAD + b"".join(map(event, [FIRST, token("a"), token("b\x01"), b"[DONE]"])) + END
    shaped, parsed = await with_and_without_shapes(body, http, monkeypatch)
    assert shaped == parsed
    assert shaped[1] is not None and "malformed" in shaped[1]


async def test_most_text_deltas_of_a_burst_skip_the_parser(http: UpstreamClient,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real_loads = openai_stream.orjson.loads

    class CountingOrjson:
        JSONDecodeError = openai_stream.orjson.JSONDecodeError

        @staticmethod
        def loads(data: str) -> object:
            parsed.append(data)
            return real_loads(data)

    monkeypatch.setattr(openai_stream, "orjson", CountingOrjson)
    body = HEAD + b"".join(map(event, [FIRST, *(token(f"t{i} ") for i in range(100)), FINISH, USAGE, b"[DONE]"]))
    chunks, failure = await read_all(body + END, http)
    assert failure is None and len(chunks) == 4
    assert len(parsed) == 4, "the first, the one the shape was learned from, the finish and the usage"
