"""Fire-and-forget work that must still finish: drains and settlements after a client left."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("tollgate.background")


class BackgroundTasks:
    """Holds strong references to detached tasks (asyncio keeps only weak ones) and
    lets shutdown wait for them, so no settlement is dropped by a clean stop."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Watches a task that is already running, as if spawn() had started it."""
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task %s failed", task.get_name(), exc_info=error)

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout_seconds: float) -> None:
        """Waits up to timeout for every task, including ones spawned meanwhile."""
        deadline = asyncio.get_running_loop().time() + timeout_seconds
        while self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                log.warning("%d background tasks still running at shutdown", len(self._tasks))
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)
