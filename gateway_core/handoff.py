"""A bounded FIFO between tasks of one event loop, cheaper per item than asyncio.Queue.

A streamed chunk crosses a queue on its way to the client (the StreamRun's,
and over the in-process channel with a non-generator handler also the call's
window), and asyncio.Queue's put_nowait and get_nowait are each a handful of
Python calls (full, qsize, _put, task-done bookkeeping, _wakeup_next): about
a tenth of the core's CPU per chunk. Handoff keeps the same contract for what these queues use
(put_nowait/put/get_nowait/get, QueueFull/QueueEmpty, waiters woken in
order, cancellation-safe waits) in one inlined method each, and drops what
they never use (task_done/join, unbounded queues).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")
# What poll() returns when there is no item: a reader that often finds the queue empty (a
# stream waiting for its next token) pays no raised-and-caught QueueEmpty for it.
EMPTY: object = object()


class Handoff(Generic[T]):
    """A FIFO of at most maxsize items; put waits for room, get for an item. Not thread-safe."""

    __slots__ = ("_items", "_maxsize", "_getters", "_putters", "_loop")

    def __init__(self, maxsize: int) -> None:
        if maxsize <= 0:
            raise ValueError("maxsize must be positive")
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        # Futures of tasks waiting for an item (getters) or for room (putters), oldest first.
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._loop = asyncio.get_running_loop()

    def __len__(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self._maxsize

    def put_nowait(self, item: T) -> None:
        """Adds item, or raises asyncio.QueueFull; wakes the oldest waiting getter."""
        items = self._items
        if len(items) >= self._maxsize:
            raise asyncio.QueueFull
        items.append(item)
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)
                break

    def get_nowait(self) -> T:
        """Takes the oldest item, or raises asyncio.QueueEmpty; wakes the oldest waiting putter."""
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        putters = self._putters
        while putters:
            putter = putters.popleft()
            if not putter.done():
                putter.set_result(None)
                break
        return item

    def poll(self) -> T | object:
        """get_nowait, but EMPTY instead of raising when there is no item."""
        if not self._items:
            return EMPTY
        return self.get_nowait()

    async def put(self, item: T) -> None:
        """Adds item, waiting for room first."""
        while len(self._items) >= self._maxsize:
            await self._wait(self._putters, room=True)
        self.put_nowait(item)

    async def get(self) -> T:
        """Takes the oldest item, waiting for one first."""
        while not self._items:
            await self._wait(self._getters, room=False)
        return self.get_nowait()

    def clear(self) -> None:
        """Drops every item (waiting putters are woken: there is room now)."""
        self._items.clear()
        putters = self._putters
        while putters:
            putter = putters.popleft()
            if not putter.done():
                putter.set_result(None)

    async def _wait(self, waiters: deque[asyncio.Future[None]], *, room: bool) -> None:
        waiter = self._loop.create_future()
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            waiter.cancel()  # a no-op if it was woken already
            try:
                waiters.remove(waiter)
            except ValueError:  # woken, so already taken off
                pass
            # As asyncio.Queue does: a wake-up this waiter got but will not use goes to the next one.
            still_possible = len(self._items) < self._maxsize if room else bool(self._items)
            if not waiter.cancelled() and still_possible:
                self._wake(waiters)
            raise

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
