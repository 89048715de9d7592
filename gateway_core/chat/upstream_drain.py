"""The bounded drain of an upstream call whose caller left: one rule for unary and stream runs.

A caller that leaves while its upstream call runs still owes what the call
produces. While fewer than max_concurrent_drains drains run, the run's task
reads on for drain_seconds, to bill the real usage; otherwise (or once that
time is up) the task is cancelled where it waits upstream, and bills what it
saw. Either way the settlement that follows must not be cancelled by the cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway_core.chat.pipeline import ChatPipeline


class UpstreamDrain:
    """Made when the caller leaves mid-upstream; cut() is called at the drain's end.

    cut() cancels the run's task if it is still upstream and says whether it
    did. The run calls end_upstream() once its upstream call is over (ended by
    the cut or not), then release() before billing.
    """

    __slots__ = ("_pipeline", "_timer", "_holds_slot", "fired")

    def __init__(self, pipeline: ChatPipeline, cut: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        self._pipeline = pipeline
        self.fired = False  # the cut cancelled the task
        self._holds_slot = pipeline._may_drain()
        if self._holds_slot:  # read on a bounded time, to bill the real usage
            pipeline._drains += 1
            self._timer = loop.call_later(pipeline._metering.drain_seconds, self._fire, cut)
        else:
            self._timer = loop.call_soon(self._fire, cut)  # no slot free: stop the upstream call now

    def _fire(self, cut: Callable[[], bool]) -> None:
        self.fired = cut()

    def end_upstream(self, task: asyncio.Task[object] | None) -> None:
        """The upstream call is over: the cut can no longer fire, and one that did its job is undone
        from the task's cancellation count (as asyncio.timeout does), so later awaits see a plain task."""
        self._timer.cancel()
        if self.fired and task is not None:
            task.uncancel()

    def release(self) -> None:
        """Gives the drain slot back (once)."""
        if self._holds_slot:
            self._holds_slot = False
            self._pipeline._drains -= 1
