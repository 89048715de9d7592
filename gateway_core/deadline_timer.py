"""One event-loop timer for the deadlines of many calls, instead of one timer per call.

Every in-process unary call has a deadline (the facade always passes a timeout),
and almost every call ends long before it. A timer per call costs a timer
handle made and cancelled on each request (on uvloop a libuv timer started,
stopped and closed). Here a call's deadline is an entry in a dict, added when
the call starts and dropped when it ends; the one timer is armed for the
earliest deadline known when it was armed, and moved only when an earlier one
arrives. With the usual equal timeouts, each new deadline is later than the
armed one, so calls come and go without touching the timer; when it fires, the
deadlines that have passed expire and it is armed again for the earliest left.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Hashable

# libuv times in whole milliseconds, so a timer may run up to 1 ms before the time it was set
# for by loop.time(); a deadline that close is due (a timer per call would have fired too).
EARLY_SECONDS = 0.001


class DeadlineTimer:
    """Calls each added deadline's expire() once its loop time has come, unless it was removed first.

    One per registry of calls; used on its event loop only.
    """

    __slots__ = ("_deadlines", "_timer", "_armed_at")

    def __init__(self) -> None:
        self._deadlines: dict[Hashable, tuple[float, Callable[[], object]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        return len(self._deadlines)

    def add(self, key: Hashable, at: float, expire: Callable[[], object]) -> None:
        """Calls expire() at loop time `at` unless remove(key) comes first (one deadline per key)."""
        self._deadlines[key] = (at, expire)
        if at < self._armed_at:
            self._arm(at)

    def remove(self, key: Hashable) -> None:
        """Forgets key's deadline (a no-op once it expired or if none was added)."""
        self._deadlines.pop(key, None)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = math.inf
        now = asyncio.get_running_loop().time() + EARLY_SECONDS
        due = [(key, expire) for key, (at, expire) in self._deadlines.items() if at <= now]
        for key, _ in due:
            del self._deadlines[key]
        if self._deadlines:
            self._arm(min(at for at, _ in self._deadlines.values()))
        for _, expire in due:
            expire()
