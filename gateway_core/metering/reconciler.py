"""The Reconciler: keeps this process's hold lease alive and frees holds of dead processes.

One background task per core process. Every interval it renews the lease
(Ledger.heartbeat) and releases orphan holds (Ledger.release_orphans), so a
hold left open by a killed process is released within stale_after_seconds
plus one interval, in database time. start() also runs one pass at once, so
a restarted core frees what its dead predecessors left behind before serving.

With a LeaderLock (store/leader.py) only the leading core sweeps orphans, so
on PostgreSQL the sweep runs on one replica at a time however many there are;
every core still renews its own lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway_core.metering.ledger import Ledger
from gateway_core.store.leader import LeaderLock

log = logging.getLogger("tollgate.reconciler")


class Reconciler:
    """Heartbeat and orphan release on a timer; errors are logged and the loop goes on."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        interval_seconds: float = 5.0,
        stale_after_seconds: float = 30.0,
        leader: LeaderLock | None = None,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        # A live process renews every interval; staleness must allow for a few
        # missed beats (a busy database, a paused event loop) before its holds go.
        if stale_after_seconds < 2 * interval_seconds:
            raise ValueError("stale_after_seconds must be at least twice interval_seconds")
        self._ledger = ledger
        self._interval = interval_seconds
        self._stale_after = stale_after_seconds
        self._leader = leader
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the background task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Registers the lease (raises if the database is unusable), runs one pass, starts the timer."""
        if self._task is not None:
            raise RuntimeError("reconciler already started")
        await self._ledger.ensure_instance()
        await self._release_orphans()
        self._task = asyncio.create_task(self._loop(), name=f"reconciler-{self._ledger.instance_id}")

    async def stop(self) -> None:
        """Cancels the background task and waits for it. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._leader is not None:
            await self._leader.close()  # hands the sweep to another replica at once

    async def retire(self) -> None:
        """Stops the timer, then gives up the lease (so a peer frees any hold left at once); never raises."""
        await self.stop()
        try:
            await self._ledger.retire()
        except Exception:  # noqa: BLE001 - stopping anyway; the lease then expires by staleness
            log.exception("giving up the hold lease failed")

    async def run_once(self) -> int:
        """One heartbeat and one orphan pass now (what the timer does); how many holds were released."""
        await self._heartbeat()
        return await self._release_orphans()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.run_once()

    async def _heartbeat(self) -> None:
        try:
            await self._ledger.heartbeat()
        except Exception:  # noqa: BLE001 - the loop must outlive a bad moment of the database
            log.exception("hold lease heartbeat failed")

    async def _release_orphans(self) -> int:
        if self._leader is not None and not await self._leader.try_lead():
            return 0  # another replica sweeps
        try:
            released = await self._ledger.release_orphans(stale_after_seconds=self._stale_after)
        except Exception:  # noqa: BLE001 - as above; the next pass tries again
            log.exception("releasing orphan holds failed")
            return 0
        if released:
            log.warning("released %d hold(s) left open by core processes that stopped", released)
        return released
