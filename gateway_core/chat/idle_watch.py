"""A silence limit between a stream's chunks: a deadline per stream instead of a timer per chunk.

`asyncio.timeout` around every read schedules and cancels a TimerHandle (heap
push, cancel bookkeeping, current_task lookups) per chunk: about a tenth of the
core's CPU per streamed chunk. IdleWatch keeps one deadline for the whole stream
on a DeadlineTimer (the attempts share one for every stream, so a stream adds
and removes a dict entry instead of making and cancelling a loop timer); each
read only notes when it began waiting. When the deadline comes it looks at the
read in progress: silent for `idle_seconds` -> cancel the reading task;
otherwise the deadline is set again for when the current wait would reach the
limit. A fast stream thus costs a callback per `idle_seconds`, not per chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from gateway_core.deadline_timer import EARLY_SECONDS, DeadlineTimer

T = TypeVar("T")


class IdleTimeout(Exception):
    """No chunk arrived within idle_seconds of the read that waited for it."""


class IdleWatch:
    """One per stream, read by one task (the first to read; a StreamRun's); not thread-safe.

        with IdleWatch(30.0) as watch:
            while ...:
                chunk = await watch.read(anext(chunks, None))   # raises IdleTimeout

    Same contract as `async with asyncio.timeout(idle): await ...` around each
    read: only time spent waiting inside read() counts; the timeout surfaces
    as IdleTimeout (not CancelledError), and a cancellation from anyone else
    still propagates as CancelledError.
    """

    def __init__(self, idle_seconds: float, timer: DeadlineTimer | None = None) -> None:
        """timer: where the watch keeps its deadline (one shared by many watches of one event loop);
        a timer of its own if None."""
        self._idle = idle_seconds
        self._loop = asyncio.get_running_loop()
        self._timer = timer if timer is not None else DeadlineTimer()
        self._waiting_since: float | None = None
        self._task: asyncio.Task[object] | None = None  # the reading task
        self._cancelling = 0
        self._fired = False
        self._armed = False  # the watch has a deadline on the timer

    def __enter__(self) -> IdleWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Ends the watch: its deadline is removed (for a watch that outlives one `with` block)."""
        if self._armed:
            self._armed = False
            self._timer.remove(self)

    async def read(self, waiting: Awaitable[T]) -> T:
        """Awaits `waiting` (an awaitable), cancelling it if it stays silent for idle_seconds."""
        self.waiting()
        try:
            return await waiting
        except asyncio.CancelledError:
            if self.timed_out():
                raise IdleTimeout() from None
            raise
        finally:
            self._waiting_since = None

    # read() in three steps, for a reader that awaits inline (no coroutine of the watch's per read):
    #     watch.waiting()
    #     try: await ...
    #     except asyncio.CancelledError: if watch.timed_out(): <time out>; raise
    #     finally: watch.waited()

    def waiting(self) -> None:
        """A wait begins: its silence counts from now (the deadline is set at the first)."""
        task = self._task
        if task is None:  # the first read: the reading task is the one for the whole stream
            task = self._task = asyncio.current_task()
        # As asyncio.timeout at each entry: cancellations already pending are not ours.
        self._cancelling = task.cancelling() if task is not None else 0
        since = self._waiting_since = self._loop.time()
        if not self._armed:
            self._armed = True
            self._timer.add(self, since + self._idle, self._check)

    def timed_out(self) -> bool:
        """Called with the wait's CancelledError: True if the watch alone cancelled it (its
        cancellation is then taken back from the task), False if someone else's must propagate."""
        if self._fired and self._task is not None:
            self._fired = False
            # Ours alone (nobody else cancelled meanwhile): a timeout, as asyncio.timeout decides it.
            return self._task.uncancel() <= self._cancelling
        return False

    def waited(self) -> None:
        """The wait is over (whatever its end): time between waits is not silence."""
        self._waiting_since = None

    def set_limit(self, idle_seconds: float) -> None:
        """A new limit for the waits from now on (a stream's first chunk may have its own)."""
        if idle_seconds < self._idle and self._armed:  # set for later than the new limit allows
            self._armed = False
            self._timer.remove(self)
        self._idle = idle_seconds

    def _check(self) -> None:
        self._armed = False
        since = self._waiting_since
        now = self._loop.time()
        # (The shared timer may run the deadline up to EARLY_SECONDS early: that close counts as reached.)
        if since is not None and now - since + EARLY_SECONDS >= self._idle and self._task is not None and not self._task.done():
            self._fired = True
            self._task.cancel()
            return
        # Not silent long enough (or between reads): look again when the current wait could expire.
        self._armed = True
        self._timer.add(self, (since if since is not None else now) + self._idle, self._check)
