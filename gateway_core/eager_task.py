"""Starting a coroutine at once, in the caller's pass of the event loop (Python 3.12's eager tasks).

`create_task` runs a coroutine's first step on the loop's next pass: one loop
iteration more before, say, a unary request's hold reaches the writer thread.
At concurrency 1 every such iteration is latency (an epoll_wait, a wake-up on
a core that went idle). `start_eagerly` runs the first step now, in the context
the task will have, and hands the coroutine, stopped wherever it first waited,
to a task that carries it on: what the coroutine does, in what order, and how
it is cancelled are the same as in a task of its own.

What differs from `create_task`, so only for coroutines written for it:
- during the first step, `asyncio.current_task()` is the caller's task (nothing
  of the coroutine may ask for its own task before its first wait);
- if the first step finishes the coroutine, the result is a done Future, not a
  Task (done, result, exception, cancel and callbacks as a task's);
- a KeyboardInterrupt or SystemExit of the first step propagates to the caller
  (as it would out of the loop).
A coroutine that needs its own task (asyncio.timeout, task.cancel() by a timer,
current_task()) after something that may or may not wait awaits `own_task()`
first: nothing once it runs in its task, one loop pass while still in the first step.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

# How many first steps are running on this thread (one loop per thread; steps may nest).
_first_steps = threading.local()


def start_eagerly(coroutine: Coroutine[Any, Any, T], *,
                  context: contextvars.Context | None = None) -> asyncio.Future[T]:
    """Runs coroutine up to its first wait now; a task (or, if it ended, a done future) for the rest.

    context is the one the coroutine runs in, first step included (default: a copy of the
    current one, as create_task makes).
    """
    loop = asyncio.get_running_loop()
    if context is None:
        context = contextvars.copy_context()
    try:
        waiting_on = context.run(_first_step, coroutine)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except asyncio.CancelledError:
        done = loop.create_future()
        done.cancel()
        return done
    except Exception as error:  # noqa: BLE001 - the task's outcome, as a task would hold it
        done = loop.create_future()
        done.set_exception(error)
        return done
    return loop.create_task(_CarryOn(coroutine, waiting_on), context=context)


def _first_step(coroutine: Coroutine[Any, Any, Any]) -> Any:
    _first_steps.depth = getattr(_first_steps, "depth", 0) + 1
    try:
        return coroutine.send(None)
    finally:
        _first_steps.depth -= 1


async def own_task() -> None:
    """Returns once the calling coroutine runs in its own task: at once if it does already, after
    one loop pass if it is still in start_eagerly's first step (where current_task() is the caller's)."""
    if getattr(_first_steps, "depth", 0):
        await asyncio.sleep(0)


class _CarryOn(Coroutine[Any, Any, T]):
    """The coroutine from where its first step stopped, for a task to drive: the task's first send
    gets what that step waited on (a future, or None for a bare yield); every later send, and every
    throw (a cancellation even before the task's first step), goes to the coroutine itself.

    A class rather than a generator: a generator not yet started drops what is thrown into it,
    and a task cancelled before its first step throws into it."""

    __slots__ = ("_coroutine", "_waiting_on", "_started")

    def __init__(self, coroutine: Coroutine[Any, Any, T], waiting_on: Any) -> None:
        self._coroutine = coroutine
        self._waiting_on = waiting_on
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            waiting_on, self._waiting_on = self._waiting_on, None
            return waiting_on
        return self._coroutine.send(value)

    def throw(self, *error: Any) -> Any:
        self._started = True
        self._waiting_on = None
        return self._coroutine.throw(*error)

    def close(self) -> None:
        self._coroutine.close()

    def __await__(self) -> Generator[Any, Any, T]:
        return self  # type: ignore[return-value]  # an iterator over the same steps, as a coroutine's

    def __next__(self) -> Any:
        return self.send(None)
