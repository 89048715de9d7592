"""One HTTP request's ASGI exchange on an EdgeHttpProtocol connection: receive, send and the app's run.

The same contract as uvicorn's RequestResponseCycle (httptools_impl.py), which
this replaces: the same bytes on the wire, the same ASGI messages, the same
errors for an app that breaks the protocol. What differs is only what it costs:
- no asyncio.Event per request: `receive` makes a future only when it really
  has to wait (a unary request's body has normally arrived with its headers);
- the response head is handed to the protocol's write_head, which sends it
  with the first body write, so a small response leaves in one send();
- the status lines and the server's default headers (date) are bytes made
  once, not per request.

One per request; owned by its connection's protocol; not thread-safe.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from http_facade.edge_protocol import EdgeHttpProtocol

# uvicorn's checks of an app's response headers: no separators or controls in a name,
# no control but HTAB in a value (a CR or LF would let a value inject headers).
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


# An http.response.start message's key (an extension of this server's) saying the app writes the
# body's first part in the same event-loop step: the head waits for that write, no flush of its own.
BODY_FOLLOWS = "tollgate.body_follows"
STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT = {"type": "http.disconnect"}
_INTERNAL_ERROR_START = {
    "type": "http.response.start",
    "status": 500,
    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21"), (b"connection", b"close")],
}
_INTERNAL_ERROR_BODY = {"type": "http.response.body", "body": b"Internal Server Error", "more_body": False}

logger = logging.getLogger("uvicorn.error")
access_logger = logging.getLogger("uvicorn.access")


class _Sent:
    """An awaitable that is already done: what RequestCycle.send returns once it has written."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())


_SENT = _Sent()


class RequestCycle:
    """One request's ASGI receive/send over its connection (see module docstring)."""

    __slots__ = (
        "scope", "_protocol", "body", "more_body", "has_message", "_waiters", "disconnected",
        "keep_alive", "waiting_for_100_continue", "response_started", "response_complete", "_chunked",
        "_length_left", "_head_only", "_on_disconnect",
    )

    def __init__(self, scope: dict[str, Any], protocol: EdgeHttpProtocol, keep_alive: bool,
                 expect_100_continue: bool) -> None:
        self.scope = scope
        self._protocol = protocol
        # Request side: body bytes not yet received by the app; has_message is uvicorn's
        # message_event (set by body, end of body, disconnect, response complete).
        self.body = b""
        self.more_body = True
        self.has_message = False
        self._waiters: list[asyncio.Future[None]] | None = None
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        # Response side.
        self.response_started = False
        self.response_complete = False
        self._chunked: bool | None = None
        self._length_left = 0
        self._head_only = scope["method"] == "HEAD"
        self._on_disconnect: list[Callable[[], object]] | None = None

    # --- the connection's side ----------------------------------------------------------

    def wake(self) -> None:
        """Marks a message ready for receive (uvicorn's message_event.set())."""
        self.has_message = True
        waiters = self._waiters
        if waiters:
            self._waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def add_body(self, chunk: bytes) -> int:
        """Buffers a piece of the request body for receive; returns how much is buffered."""
        self.body += chunk
        self.wake()
        return len(self.body)

    def end_body(self) -> None:
        self.more_body = False
        self.wake()

    def lost(self) -> None:
        """The connection is gone (or being refused): the app sees a disconnect, its writes are dropped."""
        if not self.response_complete:
            self.disconnected = True
        self.wake()
        callbacks = self._on_disconnect
        if callbacks:
            self._on_disconnect = None
            for callback in callbacks:
                self._protocol.loop.call_soon(callback)

    # --- disconnect callbacks (disconnect.DisconnectWatch) -------------------------------

    def add_disconnect_callback(self, callback: Callable[[], object]) -> None:
        """Calls callback (soon, once) when receive would return http.disconnect: the client left.

        What a task looping on receive() would notice, without the task: the
        facade watches every request for its client leaving during the core call.
        """
        if self.disconnected or self.response_complete:
            self._protocol.loop.call_soon(callback)
            return
        if self._protocol.read_paused:  # as receive() would: a paused transport sees no EOF
            self._protocol.resume_reading()
        if self._on_disconnect is None:
            self._on_disconnect = [callback]
        else:
            self._on_disconnect.append(callback)

    def remove_disconnect_callback(self, callback: Callable[[], object]) -> None:
        """Stops calling callback (a no-op if it was called or never added)."""
        callbacks = self._on_disconnect
        if callbacks and callback in callbacks:
            callbacks.remove(callback)

    # --- the app ----------------------------------------------------------------------

    async def run_asgi(self, app: Any) -> None:
        """Runs app for this request, answering 500 (or closing) if it fails or breaks the protocol."""
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self._send_500()
            else:
                self._protocol.close()
        else:
            if result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._protocol.close()
            elif not self.response_started and not self.disconnected:
                logger.error("ASGI callable returned without starting response.")
                await self._send_500()
            elif not self.response_complete and not self.disconnected:
                logger.error("ASGI callable returned without completing response.")
                self._protocol.close()

    async def _send_500(self) -> None:
        await self.send(_INTERNAL_ERROR_START)
        await self.send(_INTERNAL_ERROR_BODY)

    async def receive(self) -> dict[str, Any]:
        """The next ASGI request message: body (as much as has arrived) or http.disconnect."""
        if self.waiting_for_100_continue and not self._protocol.is_closing():
            self._protocol.write(CONTINUE)
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            protocol = self._protocol
            if protocol.read_paused:
                protocol.resume_reading()
            if not self.has_message:
                waiter = protocol.loop.create_future()
                if self._waiters is None:
                    self._waiters = [waiter]
                else:
                    self._waiters.append(waiter)
                await waiter
            self.has_message = False
        if self.disconnected or self.response_complete:
            return _DISCONNECT
        body = self.body
        self.body = b""
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    def send(self, message: Any) -> Awaitable[None]:
        """Writes an ASGI response message; after a disconnect, drops it (as uvicorn does).

        A plain function returning an awaitable: a write that need not wait for
        a slow client (nearly all) is done before it returns, and what it
        returns is a shared awaitable that is already done, so the app's
        `await send(...)` costs no coroutine per write. Waiting for room
        (backpressure) takes a coroutine, as before.
        """
        if self._protocol.write_paused and not self.disconnected:
            return self._send_when_writable(message)
        self._send_now(message)
        return _SENT

    async def _send_when_writable(self, message: Any) -> None:
        await self._protocol.drain()
        self._send_now(message)

    def _send_now(self, message: Any) -> None:
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self._start(message)
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
            self._write_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after response already completed.")

    def _start(self, message: Any) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        protocol = self._protocol
        if protocol.access_log:
            scope = self.scope
            client = scope["client"]
            access_logger.info('%s - "%s %s HTTP/%s" %d', "%s:%d" % client if client else "", scope["method"],
                               scope["path"], scope["http_version"], status)
        content = [STATUS_LINES[status], protocol.default_header_bytes()]
        has_close = False
        bad_name, bad_value = _BAD_NAME.search, _BAD_VALUE.search
        for name, value in message.get("headers", ()):
            if bad_name(name):
                raise RuntimeError("Invalid HTTP header name.")
            if bad_value(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = name.lower()
            if name == b"content-length" and self._chunked is None:
                self._length_left = int(value.decode())
                self._chunked = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self._length_left = 0
                self._chunked = True
            elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                self.keep_alive = False
                has_close = True
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not has_close:
            content.append(b"connection: close\r\n")
        if self._chunked is None and not self._head_only and status not in (204, 304):
            self._chunked = True  # neither content-length nor transfer-encoding: chunk it
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        # With a Content-Length the body must follow to complete the response, and the head
        # is worth nothing to the client without it: it waits for that write, whenever it comes
        # (closing flushes it too). Other heads (a stream's) leave at the end of this step at the latest,
        # or with the body's first write if the app promised it in this step (BODY_FOLLOWS).
        protocol.write_head(b"".join(content), flush_soon=self._chunked is not False and BODY_FOLLOWS not in message)

    def _write_body(self, body: bytes, more_body: bool) -> None:
        write = self._protocol.write
        if self._head_only:
            self._length_left = 0
            write(b"")
        elif self._chunked:
            if more_body:
                write(b"%x\r\n%b\r\n" % (len(body), body) if body else b"")
            else:
                write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n")
        else:
            size = len(body)
            if size > self._length_left:
                raise RuntimeError("Response content longer than Content-Length")
            self._length_left -= size
            write(body)
        if not more_body:
            if self._length_left != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.wake()
            protocol = self._protocol
            if not self.keep_alive:
                protocol.close()
            protocol.response_complete(self)
