"""Server-sent events from an upstream HTTP response, per the WHATWG spec.

Lines end with CRLF, LF or CR (a CRLF split across network chunks is still one
line end); `:` lines are comments; `data:` lines accumulate; a blank line
dispatches. One event may not grow beyond `max_event_chars`, so a hostile or
broken upstream cannot make the gateway buffer without bound.

The decoder works on bytes: lines are split on b"\\n" (which never occurs inside
a multi-byte UTF-8 sequence, so a character split across network chunks is
whole again once its line is), and each event's data is decoded once, when it
is dispatched. The size bound counts bytes, which is never less than characters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

from gateway_core.errors import Reason
from gateway_core.providers.base import ProviderError

DEFAULT_MAX_EVENT_CHARS = 4 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class SseEvent(NamedTuple):
    """One dispatched event: its type ("message" unless named), data and last event id."""

    data: str
    event: str = "message"
    id: str = ""


# SseEvent(data, event, id) without the NamedTuple's Python-level __new__ (half the cost, per event).
_new_tuple = tuple.__new__


def _oversized() -> ProviderError:
    return ProviderError(Reason.UPSTREAM_ERROR, "upstream sent an oversized stream event")


class SseDecoder:
    """Incremental SSE decoder: bytes in, complete events out. One per stream; not thread-safe."""

    __slots__ = ("_max", "_rest", "_rest_size", "_data", "_data_size", "_event", "_last_id", "_skip_lf", "_started")

    def __init__(self, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS) -> None:
        self._max = max_event_chars
        self._rest: list[bytes] = []  # the current, unterminated line, in pieces
        self._rest_size = 0
        self._data: list[bytes] = []  # the current event's data lines
        self._data_size = 0
        self._event = b""
        self._last_id = ""
        self._skip_lf = False  # the previous chunk ended with a CR that may start a CRLF
        self._started = False  # past a possible byte order mark

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by this chunk of the body."""
        if not self._started:
            chunk = self._after_bom(chunk)
            if not chunk:
                return []
        if (
            # The common shapes, whole one-line `data: ...` events (OpenAI, Gemini): no line splitting.
            chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
            and not (self._rest or self._data or self._event or self._skip_lf) and b"\r" not in chunk
        ):
            if chunk.count(b"\n") == 2:  # one event per network chunk: a token as it is generated
                if len(chunk) - 7 > self._max:
                    raise _oversized()
                return [_new_tuple(SseEvent, (chunk[6:-2].decode("utf-8", "replace"), "message", self._last_id))]
            events = self._whole_data_events(chunk)  # several that arrived together
            if events is not None:
                return events
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            self._hold(chunk)
            return []
        if self._rest:
            self._rest.append(chunk)
            chunk = b"".join(self._rest)
            self._rest.clear()
            self._rest_size = 0
        lines = chunk.split(b"\n")
        self._hold(lines.pop())
        return self._take_lines(lines)

    def _whole_data_events(self, chunk: bytes) -> list[SseEvent] | None:
        """The events of a chunk made only of whole one-line `data: ` events, else None (the
        general path decides). Same events, and same size bound, as line-by-line decoding."""
        # Split at each event's start: data parts with no line end of their own are whole one-line
        # events, which the chunk's count of line ends (two per event) shows in one scan.
        parts = chunk[6:-2].split(b"\n\ndata: ")
        if chunk.count(b"\n") != 2 * len(parts):
            return None
        if len(chunk) > self._max:  # only then can one event be past the bound
            for part in parts:
                if len(part) + 1 > self._max:  # the data and its line end, as _take_lines counts
                    raise _oversized()
        last_id = self._last_id
        return [_new_tuple(SseEvent, (part.decode("utf-8", "replace"), "message", last_id)) for part in parts]

    def close(self) -> list[SseEvent]:
        """Ends the body. A last event not followed by a blank line is dropped, as the spec says,
        so nothing is ever dispatched here; it exists so callers mark the end explicitly."""
        self._rest.clear()
        self._rest_size = 0
        return []

    def _after_bom(self, chunk: bytes) -> bytes:
        """chunk without a leading byte order mark, which may arrive split (b"" while unsure)."""
        if self._rest:
            chunk = b"".join(self._rest) + chunk
            self._rest.clear()
            self._rest_size = 0
        if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
            self._hold(chunk)
            return b""
        self._started = True
        return chunk[len(_BOM):] if chunk.startswith(_BOM) else chunk

    def _hold(self, piece: bytes) -> None:
        if piece:
            self._rest.append(piece)
            self._rest_size += len(piece)
            if self._rest_size + self._data_size > self._max:
                raise _oversized()

    def _take_lines(self, lines: list[bytes]) -> list[SseEvent]:
        events: list[SseEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(self._dispatch())
                else:
                    self._event = b""
            elif line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                self._data_size += len(value) + 1
                if self._data_size > self._max:
                    raise _oversized()
            elif line[0] != 0x3A:  # not a ":" comment
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        """A line other than data and comments: event and id count, the rest is ignored."""
        if len(line) + self._data_size > self._max:
            raise _oversized()
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":  # "data" with no colon: an empty data line
            self._data.append(b"")
            self._data_size += 1
        elif name == b"event":
            self._event = value
        elif name == b"id" and b"\0" not in value:
            self._last_id = value.decode("utf-8", "replace")
        # "retry" only matters to reconnecting browsers; other fields are ignored by the spec.

    def _dispatch(self) -> SseEvent:
        data = self._data
        raw = data[0] if len(data) == 1 else b"\n".join(data)
        data.clear()
        self._data_size = 0
        event = self._event.decode("utf-8", "replace") if self._event else "message"
        self._event = b""
        return _new_tuple(SseEvent, (raw.decode("utf-8", "replace"), event, self._last_id))


class SseStream:
    """The events of a streamed body as they complete: an async iterator (with aclose, for aclosing).

    The body is any async iterator of bytes (an UpstreamResponse); closing this
    stream does not close the body, whose owner does that.
    """

    __slots__ = ("_body", "_next_chunk", "_decoder", "_pending", "_next", "_ended")

    def __init__(self, body: AsyncIterator[bytes], max_event_chars: int = DEFAULT_MAX_EVENT_CHARS) -> None:
        self._body = body
        # An UpstreamResponse hands out chunks directly (None at the end), a frame and an exception cheaper.
        self._next_chunk: Callable[[], Awaitable[bytes | None]] | None = getattr(body, "next_chunk", None)
        self._decoder = SseDecoder(max_event_chars)
        self._pending: list[SseEvent] = []
        self._next = 0  # index of the next pending event to hand out
        self._ended = False

    def __aiter__(self) -> SseStream:
        return self

    async def __anext__(self) -> SseEvent:
        while self._next >= len(self._pending):
            if self._ended:
                raise StopAsyncIteration
            if self._next_chunk is not None:
                chunk = await self._next_chunk()
            else:
                try:
                    chunk = await self._body.__anext__()
                except StopAsyncIteration:
                    chunk = None
            if chunk is None:
                self._ended = True
                self._pending, self._next = self._decoder.close(), 0
                continue
            self._pending, self._next = self._decoder.feed(chunk), 0
        event = self._pending[self._next]
        self._next += 1
        return event

    def ready(self) -> SseEvent | None:
        """The next event if it is already decoded (reading it cannot wait), else None.

        Events of one network chunk are decoded together: a reader takes all
        but the first without the machinery a wait needs (StreamEvents)."""
        pending, index = self._pending, self._next
        if index < len(pending):
            self._next = index + 1
            return pending[index]
        return None

    async def aclose(self) -> None:
        """Stops handing out events (the body is closed by its owner)."""
        self._ended = True
        self._pending, self._next = [], 0


def iter_sse(body: AsyncIterator[bytes], *, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS) -> SseStream:
    """The events of a streamed response body, as they complete."""
    return SseStream(body, max_event_chars)
