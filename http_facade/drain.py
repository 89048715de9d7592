"""Draining the facade at shutdown: refuse new requests, let running ones finish, cut the rest.

The process's signal handling (gateway_core/lifecycle.py) drives a Drain;
DrainMiddleware applies it to every HTTP request. While draining, /healthz
still answers 200 (the process is alive), /readyz and everything else answer
503 in OpenAI's shape with `connection: close`, so load balancers and clients
go elsewhere. Requests already running go on until `cut()`; then a stream
gets an in-band error event and ends, and a request that has not answered yet
gets the same 503. Cutting cancels the request's gRPC call, so the core bills
the stream for what it produced.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_facade.errors import ApiError

log = logging.getLogger("tollgate.facade")

LIVENESS_PATH = "/healthz"
SHUTTING_DOWN = ApiError(
    503,
    "The server is shutting down. Please retry your request.",
    type="server_error",
    code="server_shutting_down",
    headers={"connection": "close", "retry-after": "1"},
)


class Drain:
    """Shutdown state shared by the signal handler and DrainMiddleware. One per app; one event loop."""

    def __init__(self) -> None:
        self.draining = False
        self._running: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """HTTP requests running now."""
        return len(self._running)

    def begin(self) -> None:
        """From now on, new requests are refused with 503."""
        self.draining = True

    async def wait_idle(self) -> None:
        """Returns once no request is running."""
        await self._idle.wait()

    def cut(self) -> int:
        """Ends every running request now (see module docstring); how many were cut."""
        self.begin()
        for task in self._running - self._cut:
            self._cut.add(task)
            task.cancel()
        if self._cut:
            log.warning("shutdown grace is over: cutting %d request(s) still running", len(self._cut))
        return len(self._cut)

    def _enter(self, task: asyncio.Task[Any]) -> None:
        self._running.add(task)
        self._idle.clear()

    def _leave(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        self._cut.discard(task)
        if not self._running:
            self._idle.set()

    def _was_cut(self, task: asyncio.Task[Any]) -> bool:
        return task in self._cut


class _Progress:
    """What one request has sent so far, so a cut can end it well-formed."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.ended = False
        self.event_stream = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.event_stream = any(
                name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                for name, value in message.get("headers", ())
            )
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True
        await self._send(message)


class DrainMiddleware:
    """Applies a Drain to HTTP requests (see module docstring). Pure ASGI, so streams pass through unbuffered."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] != LIVENESS_PATH:
            await SHUTTING_DOWN.to_response()(scope, receive, send)
            return
        progress = _Progress(send)
        # The request's own task (the server's, one per request) is what a cut cancels: no extra
        # task per request on the hot path. The CancelledError then surfaces here, inside the app.
        task = asyncio.current_task()
        assert task is not None
        self.drain._enter(task)
        handled = False
        try:
            await self.app(scope, receive, progress.send)
        except asyncio.CancelledError:
            if not self.drain._was_cut(task):
                raise
            handled = True
            if task.uncancel() > 0:  # cancelled by the server too: that one wins
                raise
            await _end_cut_request(progress, scope, receive)
        finally:
            if self.drain._was_cut(task) and not handled:
                task.uncancel()  # the app swallowed the cut's cancellation; keep the count true
            self.drain._leave(task)


async def _end_cut_request(progress: _Progress, scope: Scope, receive: Receive) -> None:
    if not progress.started:
        await SHUTTING_DOWN.to_response()(scope, receive, progress.send)
    elif not progress.ended:
        body = b"data: " + SHUTTING_DOWN.body() + b"\n\n" if progress.event_stream else b""
        await progress.send({"type": "http.response.body", "body": body, "more_body": False})
