"""SQLite's one writer: a thread that runs queued writes together, each group in one transaction.

SQLite has a single writer, so writes are serialized anyway; one dedicated
thread runs them as group commits (see store/db.py). Compared with a task per
burst and an executor job per group, a write costs one append on the event
loop, one hand-over to the thread per loop iteration (writes queued in the
same iteration travel together) and one callback per group back on the loop
that resolves every caller's future of the group. A caller's future resolves
only after the transaction holding its write has committed (or failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

# One queued write: the function, its caller's future, and how it runs (Database decides).
Pending = tuple[Callable[[Any], Any], "asyncio.Future[Any]", str]
# What a write came to: (True, its result) or (False, the exception to raise in its caller).
Outcome = tuple[bool, Any]
# Runs one group of writes of the same kind in one transaction; one outcome per write, in order.
GroupRunner = Callable[[list[Pending]], list[Outcome]]

_STOP = None


class WriterThread:
    """Runs writes handed in by submit() on one thread, in groups of at most max_group.

    same_group(a, b) says whether writes of kinds a and b may share a transaction.
    Create one per database; stop() (blocking) runs what was handed in
    before it, then ends the thread. submit() must be called on an event loop.
    """

    def __init__(
        self, run_group: GroupRunner, *, max_group: int, name: str, same_group: Callable[[str, str], bool]
    ) -> None:
        self._run_group = run_group
        self._same_group = same_group
        self._max_group = max_group
        self._queue: queue.SimpleQueue[list[Pending] | None] = queue.SimpleQueue()
        # Writes of each loop's current iteration, handed over together by _hand_over.
        self._batches: dict[asyncio.AbstractEventLoop, list[Pending]] = {}
        self._lock = threading.Lock()  # guards _batches: loops in other threads may submit too
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Any], Any], kind: str) -> asyncio.Future[Any]:
        """Queues fn; the returned future resolves once the transaction holding it has ended."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            batch = self._batches.get(loop)
            if batch is None:
                batch = self._batches[loop] = []
                loop.call_soon(self._hand_over, loop)
            batch.append((fn, future, kind))
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch = self._batches.pop(loop, None)
        if batch:
            self._queue.put(batch)

    def stop(self) -> None:
        """Hands over what is still batched, lets the thread run it all, and waits for the thread to end."""
        with self._lock:
            batches, self._batches = list(self._batches.values()), {}
        for batch in batches:
            self._queue.put(batch)
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            handed = self._queue.get()
            if handed is _STOP:
                return
            writes = list(handed)
            # Whatever queued while the last group ran joins this round (checked first: an empty
            # queue's get_nowait costs a raised exception, on every round at low load).
            while not self._queue.empty():
                more = self._queue.get_nowait()
                if more is _STOP:
                    stopping = True
                    break
                writes.extend(more)
            # A caller cancelled before its write started: like a never-started job, skip it.
            writes = [write for write in writes if not write[1].cancelled()]
            while writes:
                group = self._take_group(writes)
                try:
                    outcomes = self._run_group(group)
                except BaseException as exc:  # noqa: BLE001 - every caller of the group must hear of it
                    outcomes = [(False, exc)] * len(group)
                _deliver(group, outcomes)

    def _take_group(self, writes: list[Pending]) -> list[Pending]:
        """Removes and returns the oldest writes that may share a transaction, at most max_group."""
        kind = writes[0][2]
        size = 1
        while size < min(len(writes), self._max_group) and self._same_group(kind, writes[size][2]):
            size += 1
        group = writes[:size]
        del writes[:size]
        return group


def _deliver(group: list[Pending], outcomes: list[Outcome]) -> None:
    """Resolves each caller's future on its own loop: one callback per loop and group."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
    for (_, future, _), outcome in zip(group, outcomes, strict=True):
        by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    for loop, results in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, results)


def _resolve(results: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, (ok, value) in results:
        if future.done():  # cancelled while its write ran: the write stands, the result is dropped
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
