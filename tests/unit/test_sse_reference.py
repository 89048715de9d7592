"""The bytes-level SSE decoder agrees with a plain text-level reading of the WHATWG spec.

The reference below is the gateway's previous decoder (incremental UTF-8
decoding, then regex line splitting, one string per line), kept here as an
oracle: on random streams of fields, comments, line endings of every kind,
multi-byte and invalid UTF-8 and a byte order mark, cut into network chunks
at random places, both must dispatch the same events.
"""

from __future__ import annotations

import codecs
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.providers.sse import SseDecoder, SseEvent

_LINE_END = re.compile(r"\r\n|\r|\n")


class ReferenceDecoder:
    """Text-level SSE decoding, line by line, straight from the spec (no size bound)."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._skip_lf = False
        self._started = False

    def feed(self, chunk: bytes, *, final: bool = False) -> list[SseEvent]:
        text = self._utf8.decode(chunk, final=final)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")
        events: list[SseEvent] = []
        start = 0
        for match in _LINE_END.finditer(text):
            line, self._line = self._line + text[start : match.start()], ""
            event = self._take(line)
            if event is not None:
                events.append(event)
            start = match.end()
        if text.endswith("\r"):
            self._skip_lf = True
        self._line += text[start:]
        return events

    def _take(self, line: str) -> SseEvent | None:
        if not line:
            data, had_data, event = "\n".join(self._data), bool(self._data), self._event or "message"
            self._data, self._event = [], ""
            return SseEvent(data, event, self._last_id) if had_data else None
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        return None


PIECES = [
    b"data: ", b"data:", b"data", b"event: ", b"event:update", b"id: ", b"id:7", b"retry: 10", b": comment",
    b"x", b"hello", b"{\"a\": 1}", b" ", b"\n", b"\r", b"\r\n", b"\n\n", b"\r\n\r\n",
    "h\u00e9llo \u2713 \U0001f389".encode(), b"\xff", b"\xe2\x82", b"\x00", b"\xef\xbb\xbf", b"[DONE]",
]


@st.composite
def chunked_streams(draw: st.DrawFn) -> list[bytes]:
    stream = b"".join(draw(st.lists(st.sampled_from(PIECES), max_size=60)))
    if draw(st.booleans()):
        stream = b"\xef\xbb\xbf" + stream
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(chunked_streams())
def test_the_bytes_decoder_agrees_with_the_text_reference(chunks: list[bytes]) -> None:
    reference = ReferenceDecoder()
    expected = [event for chunk in chunks for event in reference.feed(chunk)] + reference.feed(b"", final=True)
    decoder = SseDecoder()
    got = [event for chunk in chunks for event in decoder.feed(chunk)] + decoder.close()
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES[:18] + PIECES[18:20]), max_size=6), max_size=12))
def test_one_event_per_chunk_agrees_with_the_text_reference(events: list[list[bytes]]) -> None:
    """Each chunk one whole `data: ...` event (the decoder's fast path), between odd ones."""
    chunks = [b"data: " + b"".join(parts) + b"\n\n" for parts in events]
    reference, decoder = ReferenceDecoder(), SseDecoder()
    expected = [event for chunk in chunks for event in reference.feed(chunk)] + reference.feed(b"", final=True)
    assert [event for chunk in chunks for event in decoder.feed(chunk)] + decoder.close() == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.lists(st.sampled_from(PIECES[:18] + PIECES[18:20]), max_size=5), min_size=1, max_size=5),
                max_size=10))
def test_several_whole_events_per_chunk_agree_with_the_text_reference(bursts: list[list[list[bytes]]]) -> None:
    """Each chunk several whole `data: ...` events that arrived together (the decoder's burst path)."""
    chunks = [b"".join(b"data: " + b"".join(parts) + b"\n\n" for parts in burst) for burst in bursts]
    reference, decoder = ReferenceDecoder(), SseDecoder()
    expected = [event for chunk in chunks for event in reference.feed(chunk)] + reference.feed(b"", final=True)
    assert [event for chunk in chunks for event in decoder.feed(chunk)] + decoder.close() == expected
