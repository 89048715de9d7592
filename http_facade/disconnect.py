"""Noticing that the HTTP client went away, so the gRPC call behind it is cancelled.

Cancelling the call is how the core learns to stop the upstream request (and
to charge only for what was generated). uvicorn does not cancel a handler when
its client disconnects, and silently drops writes after it, so the facade
watches ASGI `receive()` for `http.disconnect` itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The HTTP client disconnected before its answer was ready."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects; call only once the request body is read."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(awaitable: Awaitable[T], receive: Receive, cancel: Callable[[], object]) -> T:
    """awaitable's result, or ClientDisconnected after calling cancel() if the client leaves first.

    cancel() also runs if this coroutine itself is cancelled, so the gRPC call
    never outlives the HTTP request that started it.
    """
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        cancel()
        raise
    finally:
        watcher.cancel()
        if not work.done():
            cancel()
            work.cancel()
        # Retrieve outcomes so no "exception was never retrieved" is logged.
        await asyncio.gather(work, watcher, return_exceptions=True)
    if work.done() and not work.cancelled() and work.exception() is None:
        return work.result()
    if watcher.done() and not watcher.cancelled():
        raise ClientDisconnected()
    return work.result()  # re-raises the call's own error
