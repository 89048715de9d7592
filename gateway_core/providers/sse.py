"""Server-sent events from an upstream HTTP response, per the WHATWG spec.

Lines end with CRLF, LF or CR (a CRLF split across network chunks is still one
line end); `:` lines are comments; `data:` lines accumulate; a blank line
dispatches. One event may not grow beyond `max_event_chars`, so a hostile or
broken upstream cannot make the gateway buffer without bound.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx

from gateway_core.errors import Reason
from gateway_core.providers.base import ProviderError

DEFAULT_MAX_EVENT_CHARS = 4 * 1024 * 1024
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event: its type ("message" unless named), data and last event id."""

    data: str
    event: str = "message"
    id: str = ""


class SseDecoder:
    """Incremental SSE decoder: bytes in, complete events out. One per stream."""

    def __init__(self, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS) -> None:
        self._max = max_event_chars
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line: list[str] = []  # the current, unterminated line, in pieces
        self._line_chars = 0
        self._data: list[str] = []
        self._data_chars = 0
        self._event = ""
        self._last_id = ""
        self._skip_lf = False  # the previous piece ended with a CR that may start a CRLF
        self._started = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by this chunk of the body."""
        return self._feed_text(self._utf8.decode(chunk))

    def close(self) -> list[SseEvent]:
        """Ends the body. A last event not followed by a blank line is dropped, as the spec says."""
        return self._feed_text(self._utf8.decode(b"", final=True))

    def _feed_text(self, text: str) -> list[SseEvent]:
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")
        events: list[SseEvent] = []
        start = 0
        for match in _LINE_END.finditer(text):
            self._append(text[start : match.start()])
            event = self._take_line()
            if event is not None:
                events.append(event)
            start = match.end()
        if text.endswith("\r"):
            self._skip_lf = True
        self._append(text[start:])
        return events

    def _append(self, piece: str) -> None:
        if piece:
            self._line.append(piece)
            self._line_chars += len(piece)
            if self._line_chars + self._data_chars > self._max:
                raise ProviderError(Reason.UPSTREAM_ERROR, "upstream sent an oversized stream event")

    def _take_line(self) -> SseEvent | None:
        line = "".join(self._line)
        self._line.clear()
        self._line_chars = 0
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._data_chars += len(value) + 1
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        # "retry" only matters to reconnecting browsers; other fields are ignored by the spec.
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event = "\n".join(self._data), self._event or "message"
        had_data = bool(self._data)
        self._data.clear()
        self._data_chars = 0
        self._event = ""
        return SseEvent(data=data, event=event, id=self._last_id) if had_data else None


async def iter_sse(
    response: httpx.Response, *, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS
) -> AsyncGenerator[SseEvent, None]:
    """The events of a streamed httpx response, as they complete."""
    decoder = SseDecoder(max_event_chars)
    async for chunk in response.aiter_bytes():
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
