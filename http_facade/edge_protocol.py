"""uvicorn's httptools protocol, hardened against slow and oversized requests.

uvicorn bounds only the idle time between requests (keep-alive), and the first
byte of a request cancels even that: a client that dribbles a header byte every
few seconds, or a body byte at a time, holds its connection (a socket, a
buffer, a slot under `limit_concurrency`) for as long as it likes, and headers
have no size limit at all. This subclass adds, per connection:

- a header deadline: from a request's first byte (or the connection's start)
  until its headers are complete, else 408 and close;
- a header size limit: request line plus headers, else 431 and close, counted
  per received chunk so nothing larger than one read is ever buffered beyond it;
- a body deadline: from the end of the headers until the body is complete,
  else 408 (if no response has started) and close;
- malformed requests answered in OpenAI's error shape instead of uvicorn's
  text: llhttp (strict) refuses CR, LF and every other control character but
  HTAB in a header name or value, and broken request lines or chunk framing.

Responses written here bypass the app, so they build their own OpenAI-shaped
body and x-request-id.

A response's head and what follows it in the same event-loop step go out in
one socket write (see _EdgeTransport): a small response is one send(), not two.

Closing lingers (as nginx's lingering_close does): a connection closed while
the client is still sending (a 413 to an oversized body, say) first shuts down
only our side, then reads and discards for up to LINGER_SECONDS. Closing a
socket with unread input sends a TCP reset, and a reset that overtakes our
answer makes the client see "connection reset" instead of the 413.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from http_facade.edge_limits import EdgeLimits
from http_facade.middleware import new_request_id

# How long a closing connection keeps reading (and discarding) what the client still sends.
LINGER_SECONDS = 2.0
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def edge_http_protocol(limits: EdgeLimits) -> type[asyncio.Protocol]:
    """An HTTP protocol class for uvicorn.Config(http=...) enforcing limits."""

    class _Bound(EdgeHttpProtocol):
        edge_limits = limits

    return _Bound


def error_response(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response in OpenAI's shape that closes the connection."""
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\nconnection: close\r\n\r\n"
        % (status, _REASONS[status], len(body), new_request_id().encode())
    )
    return head + body


def _no_delay(transport: asyncio.Transport) -> None:
    """Turns Nagle's algorithm off, which asyncio skips for sockets made with proto 0.

    asyncio sets TCP_NODELAY only when the listening socket's proto is
    IPPROTO_TCP, and a socket made as socket.socket(AF_INET) (uvicorn's
    bind_socket for --workers/--fd, and most test harnesses) has proto 0. A
    response written as head then body then waits for the client's delayed
    ACK: about 40 ms on every request.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # already closed by the peer: nothing to speed up
            pass


class _EdgeTransport:
    """The connection's transport, writing a response's start coalesced and closing lingering.

    Coalescing: uvicorn writes a response's head and its body separately, and
    each write is a send() system call, which costs more than everything else
    the server does for a small response. So the first write after hold() (a
    request's headers are in) waits for the end of its event-loop step, and
    what else is written in that step (the body, a stream's first event) goes
    out with it in one send(). Later writes go straight through: a queued
    callback per streamed chunk would cost more than it saves. Anything that
    must follow the data (closing, EOF) flushes first.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._hold = False
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def hold(self) -> None:
        """Coalesces the next write with the others of its event-loop step."""
        self._hold = True

    def write(self, data: bytes) -> None:
        if self._pending:
            self._pending.append(data)
        elif self._hold:
            self._hold = False
            self._pending.append(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Writes what is pending now."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def close(self) -> None:
        self.flush()
        if self.lingering or self._transport.is_closing():
            return
        if not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()  # our answer, then FIN; the client's data is still read
        self._transport.resume_reading()
        self._loop.call_later(LINGER_SECONDS, self._transport.close)


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose headers are too large."""


class EdgeHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header/body deadlines and a header size limit; see the module doc."""

    edge_limits: EdgeLimits = EdgeLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_bytes = 0  # received while awaiting headers: bounds what the parser buffers
        self._parsed_header_bytes = 0  # of the current request's complete header lines
        self._headers_too_large = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(_EdgeTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
        self._arm_header_timer()

    def eof_received(self) -> bool | None:
        if self.transport.lingering:
            return None  # the client is done too: asyncio closes the transport now
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:  # closing: what the client still sends is read and dropped
            return
        if self._awaiting_headers:
            self._arm_header_timer()
            self._header_bytes += len(data)
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > self.edge_limits.max_header_bytes:
            self._refuse_large_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._parsed_header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._parsed_header_bytes > self.edge_limits.max_header_bytes:
            # Headers that arrived in one read are only measurable here. Raising
            # makes the parser fail, and send_400_response answers 431.
            self._headers_too_large = True
            raise _HeadersTooLarge()
        self._awaiting_headers = False
        self._header_bytes = 0
        self._cancel(self._header_timer)
        self._header_timer = None
        self._body_timer = self.loop.call_later(self.edge_limits.body_timeout_seconds, self._body_timed_out)
        self.transport.hold()  # the response's head and first body write: one send()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        self._awaiting_headers = True
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._headers_too_large:
            self._refuse_large_headers()
        else:
            self._refuse(400, "We could not parse your HTTP request: it is malformed.", "invalid_http_request")

    def _refuse_large_headers(self) -> None:
        self._refuse(
            431,
            f"Request headers too large: the limit is {self.edge_limits.max_header_bytes} bytes.",
            "request_header_fields_too_large",
        )

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.edge_limits.header_timeout_seconds, self._headers_timed_out
            )

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self._awaiting_headers:
            self._refuse(408, "Timed out waiting for the request headers.", "request_timeout")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        # A body still arriving after its request was answered gets no second answer.
        self._refuse(408, "Timed out waiting for the request body.", "request_timeout", after_response=False)

    def _refuse(self, status: int, message: str, code: str, *, after_response: bool = True) -> None:
        """Answers status, unless a response is under way (or done, if not after_response), and closes."""
        self._cancel_timers()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        done = cycle is not None and cycle.response_complete
        if cycle is None or (done and after_response) or not cycle.response_started:
            self.transport.write(error_response(status, message, code))
        if cycle is not None and not cycle.response_complete:
            # As connection_lost would, but now: the app sees a disconnect and its
            # own answer, if it still sends one, is dropped rather than written.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _cancel_timers(self) -> None:
        self._cancel(self._header_timer)
        self._cancel(self._body_timer)
        self._header_timer = self._body_timer = None

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()
