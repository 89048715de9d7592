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

    cancel() must make awaitable raise CancelledError (a gRPC call's, or a read of
    it, does). cancel() also runs if this coroutine itself is cancelled, so the
    gRPC call never outlives the HTTP request that started it. awaitable runs in
    the caller's task; only the watch has a task of its own.
    """
    watch = DisconnectWatch(receive, cancel)
    try:
        return await awaitable
    except BaseException as exc:
        cancel()
        if isinstance(exc, asyncio.CancelledError) and cancelled_by_disconnect(watch):
            raise ClientDisconnected() from None
        raise
    finally:
        watch.stop()


class DisconnectWatch:
    """Cancels a core call when the HTTP client disconnects: one task per request, nothing per chunk.

    The request's own task keeps awaiting the call (or reading its stream);
    when the client leaves, this cancels the call, so that await raises
    CancelledError, and `seen` tells the caller why. Start it only once the
    request body is read; stop() it when the response is done.
    """

    __slots__ = ("seen", "_task", "_cancel", "_cycle")

    def __init__(self, receive: Receive, cancel: Callable[[], object]) -> None:
        self.seen = False
        self._cancel = cancel
        # The facade's own HTTP protocol (edge_cycle.RequestCycle) calls back on a disconnect:
        # no task per request. Under another server, a task waits on receive().
        cycle = getattr(receive, "__self__", None)
        self._cycle = cycle if hasattr(cycle, "add_disconnect_callback") else None
        if self._cycle is not None:
            self._task = None
            self._cycle.add_disconnect_callback(self._disconnected)
        else:
            self._task = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        await wait_for_disconnect(receive)
        self._disconnected()

    def _disconnected(self) -> None:
        self.seen = True
        self._cancel()

    def stop(self) -> None:
        """Stops watching (a no-op after a disconnect was seen, or once stopped)."""
        if self._task is not None:
            self._task.cancel()
        elif self._cycle is not None:
            self._cycle.remove_disconnect_callback(self._disconnected)
            self._cycle = None  # stopped: a second stop() (a stream's route and writer both stop it) costs nothing


def cancelled_by_disconnect(watch: DisconnectWatch) -> bool:
    """Whether a CancelledError just caught came from watch (the client left), not from this task
    itself being cancelled (a shutdown cut, the server), which must propagate."""
    task = asyncio.current_task()
    return watch.seen and (task is None or task.cancelling() == 0)
