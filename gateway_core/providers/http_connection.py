"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio Protocol with an httptools parser.

One exchange at a time (no pipelining). The event loop pushes bytes in
(`data_received`), httptools calls back per header and body piece, and the
one task waiting for progress is woken through a single future. Timeouts are
one lazily re-armed timer per connection rather than one per wait: the timer
fires at the earliest moment the read (idle) timeout or the caller's deadline
could be due and, if bytes arrived meanwhile, simply re-arms; so a fast
stream costs one `loop.time()` per received segment and no timer work.

A server closing the connection is seen at once (`eof_received`,
`connection_lost`), so the pool never polls sockets. Anything that leaves an
exchange half done (an error, a timeout, a cancelled waiter) kills the
connection: it is never handed back half-read.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable

import httptools

from gateway_core.providers.http_errors import (
    DeadlineExceeded,
    ProtocolViolation,
    ReadTimeout,
    ResponseBroken,
    ServerDisconnected,
    UpstreamTransportError,
    WriteTimeout,
)

# Body bytes buffered for a consumer that lags before the socket stops being read (backpressure).
BUFFER_HIGH_WATER = 256 * 1024
# A timer that fires this close to its target counts as due (uvloop's clock has millisecond steps).
_TIMER_SLACK = 0.001


class Exchange:
    """The per-request limits of one exchange: read (idle) and write timeouts, and the deadline.

    `deadline` is on the event loop's clock (loop.time()); None means none.
    """

    __slots__ = ("read_timeout", "write_timeout", "deadline")

    def __init__(self, read_timeout: float, write_timeout: float, deadline: float | None) -> None:
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.deadline = deadline


class Connection(asyncio.Protocol):
    """A pooled connection: `send` a request, `wait_headers`, then `read_chunk` until None.

    Owned by one exchange at a time (the pool's job); not thread-safe.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int],
                 on_closed: Callable[[Connection], None]) -> None:
        self.loop = loop
        self.origin = origin
        self.idle_since = 0.0
        # Counted in the pool's total until the pool forgets it (once).
        self.counted = True
        # The transport is gone or going: never reuse.
        self.closed = False
        self._on_closed = on_closed
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._exchange: Exchange | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # The response being received.
        self.status = 0
        self.content_encoding = b""
        self.content_type = b""  # the first Content-Type field's value, as received
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._informational = False
        self._until_close = False  # neither Content-Length nor chunked: the body ends at EOF
        self._complete = False
        self._reusable = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._error: UpstreamTransportError | None = None
        # The one task waiting for progress (headers, body bytes, the end, an error).
        self._waiter: asyncio.Future[None] | None = None
        self._wait_started = 0.0
        self._last_data_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Request heads and small bodies leave at once, not after a delayed ACK.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # being torn down: nothing more is read
        if self._exchange is None or self._complete:
            # Bytes on an idle connection (a late 408, garbage): it cannot carry another request.
            self._kill()
            return
        self._last_data_at = self.loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self._complete:
                self._kill()  # garbage after a whole response: the response stands, the connection goes
            else:
                self._fail(ProtocolViolation("upstream sent an invalid HTTP response"))

    def eof_received(self) -> bool | None:
        self.closed = True
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        if self._exchange is not None and not self._complete and self._error is None:
            if self._headers_done and self._until_close:
                self._reusable = False
                self.on_message_complete()
            elif self._headers_done:
                self._fail(ResponseBroken("upstream connection broke off mid-response"))
            else:
                self._fail(ServerDisconnected("upstream closed the connection without a response"))
        self._wake_drain()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_closed(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # --- httptools callbacks (after the response is complete, another message is never ours) ---

    def on_message_begin(self) -> None:
        if self._complete:
            self._kill()  # a second response to one request: the connection is out of step

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._headers_done:  # chunked trailers are dropped, as httpx did
            self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # Informational (103 Early Hints, a stray 100): the real response follows.
            self._informational = True
            self._raw_headers = []
            return
        self.status = status
        self._headers_done = True
        framed = False
        encoding = content_type = b""
        for name, value in self._raw_headers:
            name = name.lower()
            if name == b"content-length" or name == b"transfer-encoding":
                framed = True
            elif name == b"content-encoding":
                encoding = value
            elif name == b"content-type" and not content_type:
                content_type = value
        self.content_encoding = encoding
        self.content_type = content_type
        self._until_close = not framed and status != 204 and status != 304
        self._wake_drain()  # an early answer ends the wait to send
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > BUFFER_HIGH_WATER and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
        waiter = self._waiter  # _wake(), inlined: this runs once per streamed chunk
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._complete:
            return
        self._complete = True
        self._reusable = (
            not self._until_close and not self.closed and not self._write_paused and self._parser.should_keep_alive()
        )
        self._wake()

    # --- the exchange, for the pool and the response ---

    def send(self, data: bytes, body: bytes, exchange: Exchange) -> None:
        """Starts an exchange: resets the response state and writes the request (head, body)."""
        self._exchange = exchange
        self.status = 0
        self.content_encoding = self.content_type = b""
        self._raw_headers = []
        self._headers_done = self._complete = self._reusable = self._until_close = False
        self._error = None
        now = self._wait_started = self._last_data_at = self.loop.time()
        timer = self._timer
        if timer is not None:
            # Left armed by the previous exchange (cheaper than a timer per request); within one
            # exchange due times only move later, so it only needs replacing if it is due too late.
            earliest = now + exchange.read_timeout
            if exchange.deadline is not None and exchange.deadline < earliest:
                earliest = exchange.deadline
            if timer.when() > earliest:
                timer.cancel()
                self._timer = None
        transport = self._transport
        if transport is None or self.closed:
            raise ServerDisconnected("upstream closed the connection without a response")
        if len(body) < 65536:
            transport.write(data + body)
        else:
            transport.write(data)
            transport.write(body)

    async def wait_sent(self) -> None:
        """Waits while the transport's buffer is above its high-water mark (large bodies only).

        The write timeout is the longest stretch without progress, as a per-chunk timeout would be.
        """
        assert self._exchange is not None
        while self._write_paused and not self._headers_done and self._error is None and not self.closed:
            transport = self._transport
            before = transport.get_write_buffer_size() if transport is not None else 0
            self._drain = self.loop.create_future()
            limit = self._exchange.write_timeout
            deadline = self._exchange.deadline
            if deadline is not None:
                limit = min(limit, deadline - self.loop.time())
            try:
                async with asyncio.timeout(max(limit, 0.0)):
                    await self._drain
            except TimeoutError:
                after = self._transport.get_write_buffer_size() if self._transport is not None else 0
                if deadline is not None and self.loop.time() >= deadline - _TIMER_SLACK:
                    self._fail(DeadlineExceeded("the caller's deadline passed"))
                elif after >= before:
                    self._fail(WriteTimeout("upstream took too long to accept the request"))
            except BaseException:
                self._kill()
                raise
            finally:
                self._drain = None
        if self._error is not None and not self._headers_done:
            raise self._error

    async def wait_headers(self) -> None:
        """Waits for the response's status and headers (raw_headers)."""
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers as received (names in their original case)."""
        return self._raw_headers

    async def read_chunk(self) -> bytes | None:
        """The body bytes received so far (at least one byte), or None once the body is over."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._reading_paused:
                    self._reading_paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            await self._wait()

    @property
    def complete(self) -> bool:
        """The whole response has been received (reading the rest of it never waits)."""
        return self._complete

    @property
    def reusable(self) -> bool:
        """True when the exchange ended cleanly, the body was read and the server keeps the connection."""
        return self._reusable and self._complete and not self._chunks and not self.closed and self._error is None

    def finish_exchange(self) -> None:
        """Readies a reusable connection for the idle pool (a pending timer fires once, idly, and lapses)."""
        self._exchange = None
        self.idle_since = self.loop.time()

    def close(self) -> None:
        """Closes the connection (the pool learns it in connection_lost)."""
        self._kill()

    # --- waiting, timing out, failing ---

    async def _wait(self) -> None:
        """Waits for the next piece of progress, under the read timeout and the deadline."""
        waiter = self._waiter = self.loop.create_future()
        self._wait_started = self.loop.time()
        if self._timer is None:
            self._arm_timer()
        try:
            await waiter
        except asyncio.CancelledError:
            # Cancelled mid-exchange: the rest of the response can never be read in step.
            self._kill()
            raise
        finally:
            self._waiter = None

    def _due(self) -> float:
        """When a waiting consumer would time out, on the loop clock."""
        exchange = self._exchange
        assert exchange is not None
        due = max(self._last_data_at, self._wait_started) + exchange.read_timeout
        if exchange.deadline is not None and exchange.deadline < due:
            return exchange.deadline
        return due

    def _arm_timer(self) -> None:
        self._timer = self.loop.call_at(self._due(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done() or self._exchange is None:
            return  # nobody waits: the next wait arms a new timer
        now = self.loop.time()
        exchange = self._exchange
        if exchange.deadline is not None and now >= exchange.deadline - _TIMER_SLACK:
            self._fail(DeadlineExceeded("the caller's deadline passed"))
        elif now >= max(self._last_data_at, self._wait_started) + exchange.read_timeout - _TIMER_SLACK:
            self._fail(ReadTimeout("upstream sent nothing for too long"))
        else:
            self._arm_timer()  # bytes arrived since this timer was set: wait for the new due time

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _fail(self, error: UpstreamTransportError) -> None:
        """Ends the exchange with error and closes the connection."""
        if self._error is None:
            self._error = error
        self._kill()
        self._wake()
        self._wake_drain()

    def _kill(self) -> None:
        self.closed = True
        self._reusable = False
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, on the next loop turn

    def __repr__(self) -> str:  # the origin names a host: keep it out of anything a client could see
        return f"<upstream Connection closed={self.closed}>"

