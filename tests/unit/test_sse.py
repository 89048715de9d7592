"""The SSE parser: spec line endings, fields, chunk boundaries anywhere, bounded events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway_core.errors import Reason
from gateway_core.providers.base import ProviderError
from gateway_core.providers.sse import SseDecoder, SseEvent, iter_sse


def decode(*chunks: bytes, max_event_chars: int = 1024) -> list[SseEvent]:
    decoder = SseDecoder(max_event_chars)
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.close()


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


OPENAI_STYLE = b'data: {"a": 1}\n\n: keep-alive\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(line_end: bytes) -> None:
    stream = OPENAI_STYLE.replace(b"\n", line_end)
    expected = [SseEvent('{"a": 1}'), SseEvent('{"b": 2}'), SseEvent("[DONE]")]
    assert decode(stream) == expected
    assert decode(*bytewise(stream)) == expected, "split at every byte"


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [SseEvent("a\nb")]


def test_multiline_data_fields_and_comments() -> None:
    stream = (
        b"\xef\xbb\xbfretry: 3000\n: a comment\nevent: update\nid: 7\ndata:first\ndata: second\ndata\n"
        b"unknown: field\n\n"
        b"id: bad\x00id\ndata:  two spaces\n\n"
    )
    assert decode(*bytewise(stream)) == [
        SseEvent("first\nsecond\n", event="update", id="7"),
        SseEvent(" two spaces", event="message", id="7"),
    ]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert decode(b"\n\n\nevent: ping\n\n: only a comment\n\n") == []


def test_multibyte_utf8_split_across_chunks() -> None:
    stream = "data: héllo ✓ 🎉\n\n".encode()
    assert decode(*bytewise(stream)) == [SseEvent("héllo ✓ 🎉")]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert decode(b"data: \xff\xfe ok\n\n") == [SseEvent("\ufffd\ufffd ok")]


def test_unterminated_last_event_is_dropped() -> None:
    assert decode(b"data: complete\n\ndata: cut off") == [SseEvent("complete")]


def test_an_oversized_event_is_refused() -> None:
    with pytest.raises(ProviderError) as caught:
        decode(b"data: " + b"x" * 600 + b"\n", b"data: " + b"y" * 600 + b"\n\n", max_event_chars=1000)
    assert caught.value.reason == Reason.UPSTREAM_ERROR


def test_one_oversized_event_in_a_chunk_of_its_own_is_refused() -> None:
    assert decode(b"data: " + b"x" * 999 + b"\n\n", max_event_chars=1000) == [SseEvent("x" * 999)]
    with pytest.raises(ProviderError):
        decode(b"data: " + b"x" * 1000 + b"\n\n", max_event_chars=1000)


def test_an_endless_line_is_refused_while_it_grows() -> None:
    decoder = SseDecoder(max_event_chars=1000)
    with pytest.raises(ProviderError):
        for _ in range(100):
            decoder.feed(b"z" * 100)


def test_many_events_are_fine_when_each_is_small() -> None:
    stream = b"data: " + b"x" * 500 + b"\n\n"
    assert len(decode(*[stream] * 50, max_event_chars=1000)) == 50


async def test_iter_sse_over_a_streamed_body() -> None:
    async def body() -> AsyncIterator[bytes]:
        for chunk in (b"data: one\r", b"\n\r\ndata: t", b"wo\n", b"\n"):
            yield chunk

    assert [event.data async for event in iter_sse(body())] == ["one", "two"]
