"""OpenAIStream hands on the chunks of one network read together, and loses nothing doing so.

A raw upstream (tests/fakes/raw_openai_upstream.py) writes an OpenAI event
stream in the writes each test chooses: all of it at once (a burst, as a fast
model's tokens arrive), or in parts with pauses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway_core.config import ProviderSettings
from gateway_core.errors import Reason
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import ProviderError
from gateway_core.providers.http import make_http_client
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.openai.client import OpenAIProvider
from tests.fakes.raw_openai_upstream import END, ERROR, FINISH, FIRST, HEAD, USAGE, RawUpstream, event, token
from tests.providers_support import call_for, user_request

@pytest.fixture()
async def http() -> AsyncIterator[UpstreamClient]:
    async with make_http_client() as client:
        yield client


def provider_for(upstream: RawUpstream, http: UpstreamClient) -> OpenAIProvider:
    return OpenAIProvider(ProviderSettings(name="up", type="openai", base_url=upstream.base_url, api_key="sk-up"), http)


def texts(chunks: list[chat_pb2.StreamChatCompletionResponse]) -> list[str]:
    return [choice.delta.content for chunk in chunks for choice in chunk.choices]


async def test_a_burst_comes_as_one_batch_in_order_and_the_connection_goes_back_to_the_pool(
    http: UpstreamClient,
) -> None:
    burst = HEAD + b"".join(event(e) for e in (FIRST, token("a"), token("b"), token("c"), FINISH, USAGE, b"[DONE]"))
    async with RawUpstream([(0, burst + END)], [(0, burst + END)]) as upstream:
        provider = provider_for(upstream, http)
        stream = provider.stream(call_for(user_request(stream=True)))
        batch = await stream.next_batch()
        # The text deltas that arrived together leave as one chunk (the first delta, with the role, on its own).
        assert batch is not None and texts(batch) == ["", "abc", ""]
        assert batch[-1].HasField("usage") and batch[-1].usage.completion_tokens == 3 and not batch[-1].choices
        assert await stream.next_batch() is None
        assert http.idle_count == 1, "read to its end: the connection is reusable"
        # The same stream read chunk by chunk gives the same chunks.
        one_by_one = [chunk async for chunk in provider.stream(call_for(user_request(stream=True)))]
        assert [c.SerializeToString() for c in one_by_one] == [c.SerializeToString() for c in batch]
        assert upstream.connections == 1


async def test_reads_apart_are_batches_apart(http: UpstreamClient) -> None:
    script = [(0, HEAD + event(FIRST) + event(token("a"))), (0.05, event(token("b")) + event(token("c"))),
              (0.05, event(FINISH) + event(USAGE) + event(b"[DONE]") + END)]
    async with RawUpstream(script) as upstream:
        stream = provider_for(upstream, http).stream(call_for(user_request(stream=True)))
        batches = []
        while (batch := await stream.next_batch()) is not None:
            batches.append(texts(batch))
        assert batches == [["", "a"], ["bc"], [""]], "text of one read is merged, never across reads"


async def test_an_error_in_the_same_read_as_good_chunks_is_raised_after_them(http: UpstreamClient) -> None:
    burst = HEAD + event(FIRST) + event(token("a")) + event(ERROR) + event(b"[DONE]") + END
    async with RawUpstream([(0, burst)]) as upstream:
        stream = provider_for(upstream, http).stream(call_for(user_request(stream=True)))
        batch = await stream.next_batch()
        assert batch is not None and texts(batch) == ["", "a"], "the chunks before the error are not lost to it"
        with pytest.raises(ProviderError) as caught:
            await stream.next_batch()
        assert caught.value.reason == Reason.UPSTREAM_UNAVAILABLE
        assert await stream.next_batch() is None


async def test_an_error_before_any_chunk_of_a_read_is_raised_at_once(http: UpstreamClient) -> None:
    script = [(0, HEAD + event(FIRST)), (0.05, event(b"not json") + event(token("late")))]
    async with RawUpstream(script) as upstream:
        stream = provider_for(upstream, http).stream(call_for(user_request(stream=True)))
        assert texts(await stream.next_batch() or []) == [""]
        with pytest.raises(ProviderError) as caught:
            await stream.next_batch()
        assert caught.value.reason == Reason.UPSTREAM_ERROR
        assert await stream.next_batch() is None


async def test_chunks_received_after_the_deadline_are_not_handed_out(http: UpstreamClient) -> None:
    script = [(0, HEAD + event(FIRST)), (0.1, event(token("late")) + event(FINISH) + event(b"[DONE]") + END)]
    async with RawUpstream(script) as upstream:
        stream = provider_for(upstream, http).stream(call_for(user_request(stream=True), timeout=0.3))
        started = time.monotonic()
        assert texts(await stream.next_batch() or []) == [""]
        await asyncio.sleep(0.4)  # the consumer holds on: the rest arrives meanwhile, then the deadline passes
        with pytest.raises(ProviderError) as caught:
            await stream.next_batch()
        assert caught.value.reason == Reason.UPSTREAM_TIMEOUT and time.monotonic() - started < 2
        assert http.idle_count == 0, "a stream cut short is never handed back half read"


async def test_a_body_that_ends_without_done_or_finish_is_an_upstream_error(http: UpstreamClient) -> None:
    async with RawUpstream([(0, HEAD + event(FIRST) + event(token("a")) + END)]) as upstream:
        stream = provider_for(upstream, http).stream(call_for(user_request(stream=True)))
        batch = await stream.next_batch()
        assert batch is not None and texts(batch) == ["", "a"]
        with pytest.raises(ProviderError) as caught:
            await stream.next_batch()
        assert caught.value.message == "upstream stream ended early"


async def test_closing_between_batches_closes_the_upstream_connection(http: UpstreamClient) -> None:
    script = [(0, HEAD + event(FIRST)), (5, event(FINISH) + event(b"[DONE]") + END)]
    async with RawUpstream(script) as upstream:
        stream = provider_for(upstream, http).stream(call_for(user_request(stream=True)))
        assert await stream.next_batch() is not None
        await stream.aclose()
        assert await stream.next_batch() is None
        await asyncio.sleep(0.05)  # the transport's close lands
        assert http.connection_count == 0, "closed, not pooled"


@pytest.mark.parametrize(("body", "reason", "message"), [
    (b'{"error":{"message":"model overloaded","type":"server_error","code":"overloaded"}}',
     Reason.UPSTREAM_UNAVAILABLE, None),
    (b'{"id":"chatcmpl-1","choices":[]}', Reason.UPSTREAM_ERROR, "upstream sent a malformed response"),
])
async def test_a_json_answer_to_a_stream_request_is_refused(http: UpstreamClient, body: bytes, reason: Reason,
                                                            message: str | None) -> None:
    """Some vendors answer a stream request with a plain JSON error and status 200."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\ncontent-length: %d\r\n\r\n" % len(body)
    async with RawUpstream([(0, head + body)]) as upstream:
        stream = provider_for(upstream, http).stream(call_for(user_request(stream=True)))
        with pytest.raises(ProviderError) as caught:
            await stream.next_batch()
        assert caught.value.reason == reason and (message is None or caught.value.message == message)
        assert await stream.next_batch() is None
