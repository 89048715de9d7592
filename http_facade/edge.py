"""The facade's edge: what every HTTP request gets before and after its route, in one pure-ASGI layer.

In order, outermost first (as three nested middlewares did, in one frame and
one `send` wrapper, which every streamed chunk passes through):
- a request id (middleware.py): made here, put in the scope for routes and in
  the x-request-id header of every response, and an exception that escapes
  before the response started becomes an OpenAI-shaped 500 carrying it;
- drain (drain.py): while draining, a 503 for all but liveness; otherwise the
  request is counted in flight, and a shutdown cut ends it well-formed;
- observe (observe.py): the /v1 server span when a tracer is set, and the
  facade's own access line for a failed request that never reached the core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_facade.drain import LIVENESS_PATH, SHUTTING_DOWN, Drain
from http_facade.errors import ApiError
from http_facade.middleware import REQUEST_ID_HEADER, REQUEST_ID_SCOPE_KEY, new_request_id
from http_facade.observe import CORE_REACHED_SCOPE_KEY, access_line, traced

_SERVER_ERROR = ApiError(500, "The server had an error while processing your request.", type="server_error")


class _Exchange:
    """One request's response as it goes out: adds the id header, remembers what was sent.

    status is what observe logs (500 until a response starts); started, ended
    and event_stream let a cut end the request well-formed.
    """

    __slots__ = ("_send", "_header", "_headers", "status", "started", "ended")

    def __init__(self, send: Send, header: tuple[bytes, bytes]) -> None:
        self._send = send
        self._header = header
        self._headers: list[tuple[bytes, bytes]] = []
        self.status = 500
        self.started = False
        self.ended = False

    @property
    def event_stream(self) -> bool:
        """Whether the response started is an event stream (only a cut asks, so it is looked up then)."""
        for name, value in self._headers:
            if value.startswith(b"text/event-stream") and name.lower() == b"content-type":
                return True
        return False

    def send(self, message: Message) -> Awaitable[None]:
        """Passes message on to the server's send, whose awaitable it returns (no coroutine of its
        own: every streamed write passes here)."""
        if message["type"] == "http.response.start":
            self.started = True
            self.status = int(message["status"])
            self._headers = headers = [*message.get("headers", ()), self._header]
            message = {**message, "headers": headers}
        elif not message.get("more_body", False) and message["type"] == "http.response.body":
            self.ended = True
        return self._send(message)


class EdgeMiddleware:
    """Request id, drain and observe for every HTTP request (see module docstring)."""

    def __init__(self, app: ASGIApp, drain: Drain, tracer: trace.Tracer | None = None) -> None:
        self.app = app
        self.drain = drain
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        exchange = _Exchange(send, (REQUEST_ID_HEADER, request_id.encode()))
        # Request id, drain and observe in this one frame (a coroutine per layer costs on every request).
        try:
            drain = self.drain
            if drain.draining and scope["path"] != LIVENESS_PATH:
                await SHUTTING_DOWN.to_response()(scope, receive, exchange.send)
                return
            # The request's own task (the server's, one per request) is what a cut cancels: no extra
            # task per request on the hot path. The CancelledError then surfaces here, inside the app.
            task = asyncio.current_task()
            assert task is not None
            drain._enter(task)
            handled = False
            started = time.monotonic()
            try:
                try:
                    if self._tracer is not None and scope["path"].startswith("/v1/"):
                        await traced(self._tracer, self.app, scope, receive, exchange.send, lambda: exchange.status)
                    else:
                        await self.app(scope, receive, exchange.send)
                finally:  # observe: the access line of a request the facade answered alone
                    if exchange.status >= 400 and not scope.get(CORE_REACHED_SCOPE_KEY):
                        access_line(scope, exchange.status, started)
            except asyncio.CancelledError:
                if not drain._was_cut(task):
                    raise
                handled = True
                if task.uncancel() > 0:  # cancelled by the server too: that one wins
                    raise
                await _end_cut_request(exchange, scope, receive)
            finally:
                if drain._was_cut(task) and not handled:
                    task.uncancel()  # the app swallowed the cut's cancellation; keep the count true
                drain._leave(task)
        except Exception:
            if not exchange.started:
                await _SERVER_ERROR.to_response()(scope, receive, exchange.send)
            raise  # so the server logs it


async def _end_cut_request(exchange: _Exchange, scope: Scope, receive: Receive) -> None:
    if not exchange.started:
        await SHUTTING_DOWN.to_response()(scope, receive, exchange.send)
    elif not exchange.ended:
        body = b"data: " + SHUTTING_DOWN.body() + b"\n\n" if exchange.event_stream else b""
        await exchange.send({"type": "http.response.body", "body": body, "more_body": False})

