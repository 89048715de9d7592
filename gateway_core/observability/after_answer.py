"""Work a call must do but its answer need not wait for: run it right after the answer is taken.

At concurrency 1 every microsecond the event loop spends before a response's
bytes are written is latency the client waits for. The access line, the
`upstream_attempt` line and the metric updates that go with them change nothing
the client receives. So a call that knows when its answer has been taken (the
in-process unary call under `tollgate serve`, in_process.py) opens an
AfterAnswer while its handler runs; `after_answer(work, ...)` then only queues
the work, and once the caller has been handed the answer the queue joins a
batch with other calls' queues, run a few tens of milliseconds later
(InProcessServices.run_after_answer): run together, the same lines and counts
also cost the event loop much less than each run between two requests' work.

Everywhere else (calls through a real gRPC server, streams, a settlement that
outlives its call, code called with no call around it) `after_answer` runs the
work at once, as if it had never been deferred. Either way each piece of work
runs exactly once, with the arguments it was given when it was queued (so a
line says what was true then), and an exception in it is logged, never raised
into the request.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tollgate.observability")

# The AfterAnswer of the call this code runs for, if that call defers; tasks a handler starts inherit it.
_current: contextvars.ContextVar[AfterAnswer | None] = contextvars.ContextVar("tollgate_after_answer", default=None)


class AfterAnswer:
    """The deferred work of one call, in the order it was queued. One per call; used on its event loop only."""

    __slots__ = ("_work", "_closed")

    def __init__(self) -> None:
        self._work: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._closed = False

    def add(self, work: Callable[..., object], args: tuple[Any, ...]) -> bool:
        """Queues work(*args); False once closed (the answer is out: the caller runs it at once)."""
        if self._closed:
            return False
        self._work.append((work, args))
        return True

    def close(self) -> bool:
        """No more queueing: from now on after_answer() runs work at once. Whether anything is queued."""
        self._closed = True
        return bool(self._work)

    def run(self, _done: object = None) -> None:
        """Runs the queued work once, in order, logging (not raising) any failure.

        Closes first, so work that queues more work runs it at once. Takes (and
        ignores) one argument, to be a future's done callback.
        """
        self._closed = True
        work, self._work = self._work, []
        for function, args in work:
            _run_one(function, args)


def after_answer(work: Callable[..., object], *args: Any) -> None:
    """Runs work(*args) after the current call's answer is out, or now if the call does not defer."""
    collector = _current.get()
    if collector is None or not collector.add(work, args):
        _run_one(work, args)


def open_for_call() -> tuple[AfterAnswer, contextvars.Token[AfterAnswer | None]]:
    """Makes a new AfterAnswer current for the call running in this task (and tasks it starts);
    the caller closes it, resets the token and runs it once the answer is out."""
    collector = AfterAnswer()
    return collector, _current.set(collector)


def close_for_call(token: contextvars.Token[AfterAnswer | None]) -> None:
    """Forgets the call's AfterAnswer in this context (tasks the call started keep theirs: it is closed)."""
    _current.reset(token)


def _run_one(work: Callable[..., object], args: tuple[Any, ...]) -> None:
    try:
        work(*args)
    except Exception:  # noqa: BLE001 - observation only: logged, never raised into a request or the loop
        log.exception("deferred observation %s failed", getattr(work, "__qualname__", work))
