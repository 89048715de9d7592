"""The facade's HTTP/1.1 server protocol: httptools parsing, hardened against slow and oversized requests.

Plugged in as uvicorn.Config(http=...): uvicorn keeps the server's lifecycle
(sockets, lifespan, signals, graceful shutdown, `server_state` connection and
task tracking, limit_concurrency), this class does each connection's HTTP. It
replaces uvicorn's HttpToolsProtocol with the same wire behaviour (keep-alive
and `Connection: close`, HTTP/1.0, pipelining one request at a time, Expect:
100-continue, chunked request and response bodies, HEAD, flow control, 500
for an app that fails before answering, `http.disconnect`) for less CPU per
request; edge_cycle.py is one request's ASGI side. On top it adds, per connection:

- a header deadline: from a request's first byte (or the connection's start)
  until its headers are complete, else 408 and close;
- a header size limit: request line plus headers, else 431 and close, counted
  per received chunk so nothing larger than one read is ever buffered beyond it;
- a body deadline: from the end of the headers until the body is complete,
  else 408 (if no response has started) and close;
- malformed requests answered in OpenAI's error shape instead of uvicorn's
  text: llhttp (strict) refuses CR, LF and every other control character but
  HTAB in a header name or value, and broken request lines or chunk framing.

The deadlines (and the keep-alive timeout) share one timer per connection,
re-armed lazily: a busy keep-alive connection sets three deadlines per request
but schedules a timer only every few seconds, not three per request.

Responses written here bypass the app, so they build their own OpenAI-shaped
body and x-request-id.

A response's head waits for its first body write (a streamed one at most
until the end of its event-loop step), so a small response is one send(), not two.

Closing lingers (as nginx's lingering_close does): a connection closed while
the client is still sending (a 413 to an oversized body, say) first shuts down
only our side, then reads and discards for up to LINGER_SECONDS. Closing a
socket with unread input sends a TCP reset, and a reset that overtakes our
answer makes the client see "connection reset" instead of the 413.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import urllib.parse
from collections import deque
from typing import Any

import httptools
import orjson
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from http_facade.edge_cycle import RequestCycle
from http_facade.edge_limits import EdgeLimits
from http_facade.middleware import new_request_id

# How long a closing connection keeps reading (and discarding) what the client still sends.
LINGER_SECONDS = 2.0
# Request body buffered for the app beyond which reading pauses until the app takes it (uvicorn's).
HIGH_WATER_BYTES = 65536
# A response head and a body up to this size are joined into one bytes; a larger body goes
# out with its head as two buffers of one writelines (still one send) rather than copied.
_JOIN_BELOW = 16 * 1024
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
_NEVER = float("inf")

logger = logging.getLogger("uvicorn.error")


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


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose headers are too large."""


class EdgeHttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection under uvicorn, with the edge's deadlines and limits; see the module doc."""

    edge_limits: EdgeLimits = EdgeLimits()

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.app_state = app_state
        self.server_state = server_state
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.root_path: str = config.root_path
        self._asgi_version: str = config.asgi_version
        self._limit_concurrency: int | None = config.limit_concurrency
        self._keep_alive_seconds: float = config.timeout_keep_alive
        self._fresh_context: bool = getattr(config, "reset_contextvars", False)
        self.access_log = logging.getLogger("uvicorn.access").hasHandlers()
        self.parser = httptools.HttpRequestParser(self)
        # As uvicorn: answer the first of pipelined requests even if the client closes after them.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.cycle: RequestCycle | None = None  # the latest request (queued, if pipelined)
        self._active: RequestCycle | None = None  # the request whose app runs
        self.pipeline: deque[RequestCycle] = deque()
        self.read_paused = False
        self.write_paused = False
        self._writable: asyncio.Event | None = None
        self.lingering = False
        self._head: bytes | None = None  # a response head waiting for its first body write
        self._defaults_source: list[tuple[bytes, bytes]] | None = None
        self._defaults = b""

        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_100 = False
        self._awaiting_headers = True
        self._header_bytes = 0  # received while awaiting headers: bounds what the parser buffers
        self._parsed_header_bytes = 0  # of the current request's complete header lines
        self._headers_too_large = False

        # Deadlines (loop.time() of the phase's start; None when not in that phase), one timer.
        self._headers_since: float | None = None
        self._body_since: float | None = None
        self._idle_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NEVER

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connections.add(self)
        self.transport = transport
        _no_delay(transport)
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        if is_ssl(transport):
            self.scheme = "https"
        self._headers_since = now = self.loop.time()
        self._arm(now + self.edge_limits.header_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._disarm()
        for cycle in (self._active, self.cycle):  # the running one too, if another is queued
            if cycle is not None:
                cycle.lost()
        self.resume_writing()
        if exc is None:
            self.transport.close()
        self.parser = None  # type: ignore[assignment]  # the parser refers back to self

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: asyncio closes the transport

    def data_received(self, data: bytes) -> None:
        if self.lingering:  # closing: what the client still sends is read and dropped
            return
        self._idle_since = None
        if self._awaiting_headers:
            if self._headers_since is None:
                self._headers_since = now = self.loop.time()
                self._arm(now + self.edge_limits.header_timeout_seconds)
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            logger.warning("Invalid HTTP request received.")
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            logger.warning("Unsupported upgrade request.")  # no WebSocket here: served as a plain request
        if self._awaiting_headers and self._header_bytes > self.edge_limits.max_header_bytes:
            self._refuse_large_headers()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    # --- httptools parser callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect_100 = False
        self._parsed_header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._parsed_header_bytes += len(url)
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        limits = self.edge_limits
        if self._parsed_header_bytes > limits.max_header_bytes:
            # Headers that arrived in one read are only measurable here. Raising
            # makes the parser fail, and _bad_request answers 431.
            self._headers_too_large = True
            raise _HeadersTooLarge()
        self._awaiting_headers = False
        self._header_bytes = 0
        self._headers_since = None
        self._body_since = now = self.loop.time()
        self._arm(now + limits.body_timeout_seconds)

        parser = self.parser
        method = parser.get_method()
        http_version = parser.get_http_version()
        raw_path = self._url
        query = b""
        if raw_path[:1] != b"/" or b"?" in raw_path or b"#" in raw_path:  # else it is all path
            url = httptools.parse_url(raw_path)
            raw_path, query = url.path, url.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root_path = self.root_path
        if root_path:
            path = root_path + path
            raw_path = root_path.encode("ascii") + raw_path
        scope = {
            "type": "http",
            "asgi": {"version": self._asgi_version, "spec_version": "2.3"},
            "http_version": http_version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": _METHODS.get(method) or method.decode("ascii"),
            "root_path": root_path,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self.app_state.copy(),
        }
        cycle = RequestCycle(scope, self, http_version != "1.0" and parser.should_keep_alive(), self._expect_100)
        running = self.cycle
        self.cycle = cycle
        if running is None or running.response_complete:
            self._run(cycle)
        else:  # pipelined: one request at a time, and no more reading until this one may start
            self.pause_reading()
            self.pipeline.appendleft(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.add_body(body) > HIGH_WATER_BYTES:
            self.pause_reading()

    def on_message_complete(self) -> None:
        self._body_since = None
        self._awaiting_headers = True
        cycle = self.cycle
        if cycle is None:
            return
        if not cycle.response_complete:
            cycle.end_body()
        elif not self.pipeline:  # answered before its body ended: idle from now, under keep-alive
            self._idle_since = now = self.loop.time()
            self._arm(now + self._keep_alive_seconds)

    # --- for RequestCycle ---------------------------------------------------------------

    def _run(self, cycle: RequestCycle) -> None:
        self._active = cycle
        app = self.app
        limit = self._limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            from uvicorn.protocols.http.flow_control import service_unavailable

            logger.warning("Exceeded concurrency limit.")
            app = service_unavailable
        if self._fresh_context:  # uvicorn's reset_contextvars: each request in an empty context
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def response_complete(self, cycle: RequestCycle) -> None:
        """A response went out whole: start the next pipelined request, or wait keep-alive for one."""
        self.server_state.total_requests += 1
        if self.lingering or self.transport.is_closing():
            return
        self.resume_reading()
        if self.pipeline:
            self._run(self.pipeline.pop())
        else:
            self._idle_since = now = self.loop.time()
            self._arm(now + self._keep_alive_seconds)

    def default_header_bytes(self) -> bytes:
        """The server's default headers (date) as head lines; uvicorn replaces the list each second."""
        source = self.server_state.default_headers
        if source is not self._defaults_source:
            self._defaults_source = source
            self._defaults = b"".join(b"%s: %s\r\n" % (name.lower(), value) for name, value in source)
        return self._defaults

    def write_head(self, head: bytes, *, flush_soon: bool = True) -> None:
        """Holds a response head for the first body write (or close), and if flush_soon at most
        until the end of this event-loop step."""
        self._head = head
        if flush_soon:
            self.loop.call_soon(self.flush)

    def write(self, data: bytes) -> None:
        """Writes data, after the held head if there is one (in the same send)."""
        head = self._head
        if head is not None:
            self._head = None
            if len(data) >= _JOIN_BELOW:
                if not self.lingering:
                    self.transport.writelines((head, data))
                return
            data = head + data
        if data and not self.lingering:
            self.transport.write(data)

    def flush(self) -> None:
        """Writes a held head now."""
        if self._head is not None:
            self.write(b"")

    def is_closing(self) -> bool:
        return self.lingering or self.transport.is_closing()

    async def drain(self) -> None:
        """Returns once the transport's buffer is below its low-water mark again."""
        if self.write_paused:
            if self._writable is None:
                self._writable = asyncio.Event()
            await self._writable.wait()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Closes after what is written, lingering (see the module doc)."""
        self.flush()
        transport = self.transport
        if self.lingering or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()  # our answer, then FIN; the client's data is still read
        self.read_paused = False
        transport.resume_reading()
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the response in progress."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.close()
        else:
            cycle.keep_alive = False

    # --- deadlines ------------------------------------------------------------------------

    def _arm(self, at: float) -> None:
        """Makes the timer fire no later than at (an earlier timer re-arms itself when it fires)."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= at:
                return
            timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._deadline_reached)

    def _disarm(self) -> None:
        self._headers_since = self._body_since = self._idle_since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = _NEVER

    def _deadline_reached(self) -> None:
        self._timer = None
        self._timer_at = _NEVER
        if self.lingering:
            return
        limits = self.edge_limits
        now = self.loop.time()
        next_at = _NEVER
        if self._awaiting_headers and self._headers_since is not None:
            at = self._headers_since + limits.header_timeout_seconds
            if now >= at:
                self._refuse(408, "Timed out waiting for the request headers.", "request_timeout")
                return
            next_at = at
        if self._body_since is not None:
            at = self._body_since + limits.body_timeout_seconds
            if now >= at:
                # A body still arriving after its request was answered gets no second answer.
                self._refuse(408, "Timed out waiting for the request body.", "request_timeout", after_response=False)
                return
            next_at = min(next_at, at)
        if self._idle_since is not None:
            at = self._idle_since + self._keep_alive_seconds
            if now >= at:
                self.close()  # keep-alive is over
                return
            next_at = min(next_at, at)
        if next_at != _NEVER:
            self._arm(next_at)

    # --- refusals -------------------------------------------------------------------------

    def _bad_request(self) -> None:
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

    def _refuse(self, status: int, message: str, code: str, *, after_response: bool = True) -> None:
        """Answers status, unless a response is under way (or done, if not after_response), and closes."""
        self._disarm()
        if self.is_closing():
            return
        cycle = self.cycle
        done = cycle is not None and cycle.response_complete
        if cycle is None or (done and after_response) or not cycle.response_started:
            self.write(error_response(status, message, code))
        if cycle is not None:
            # As connection_lost would, but now: the app sees a disconnect and its
            # own answer, if it still sends one, is dropped rather than written.
            cycle.lost()
        self.close()
