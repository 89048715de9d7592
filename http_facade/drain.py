"""Draining the facade at shutdown: refuse new requests, let running ones finish, cut the rest.

The process's signal handling (gateway_core/lifecycle.py) drives a Drain;
EdgeMiddleware (edge.py) applies it to every HTTP request. While draining, /healthz
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
    """Shutdown state shared by the signal handler and EdgeMiddleware. One per app; one event loop."""

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
