"""When a SQLite write may run on its caller's thread (the event loop) instead of the writer thread.

At concurrency 1 a write handed to the writer thread and back costs two
context switches, GIL hand-overs and an extra loop iteration: about as much
CPU and wall time as the write itself. So when the writer thread is idle
(store/writer.py decides) and the Ledger says this process serves one
request (metering/ledger.py), the write runs inline, at once. The loop must
never wait on anything but this machine's own CPU and disk for it:

- another process holding SQLite's write lock: an inline write begins with
  busy_timeout 0 and, on SQLITE_BUSY, goes to the thread as today (which
  waits up to the busy timeout there, off the loop);
- a checkpoint (copying the WAL into the database and fsyncing both): the
  writer connection runs inline writes with wal_autocheckpoint 0, and one
  write in every MAX_INLINE_RUN goes to the thread anyway, with the
  connection's own settings back, so checkpoints keep happening there;
- a slow disk: a durable write fsyncs the WAL inline (~0.2 ms here), but once
  inline writes wait longer than SLOW_INLINE_SECONDS on average (wall time
  less the thread's own CPU time: the disk, or being preempted; a moving
  average, so one write delayed by the scheduler does not count, and one
  stalled fsync of 25 ms does) no write runs inline for PAUSE_SECONDS: a
  hand-over to the thread costs ~0.3 ms, a loop blocked on a stalled disk
  would stall every other request of the process.
"""

from __future__ import annotations

import sqlite3
import time

from gateway_core.store.engine import SQLITE_BUSY_TIMEOUT_MS
from gateway_core.store.lean import LeanConnection

# Inline writes in a row before one goes to the thread, whose commit then checkpoints
# (at ~10 WAL pages per request, about one checkpoint chance per 1000-page autocheckpoint).
MAX_INLINE_RUN = 128
# Inline writes waiting longer than this on average pause inlining: the thread's hand-over costs ~0.3 ms.
SLOW_INLINE_SECONDS = 0.003
# Weight of the newest write in the moving average of inline write times.
_NEWEST_WEIGHT = 0.125
PAUSE_SECONDS = 1.0
# SQLite's default, which the engine's connections keep (store/engine.py sets none).
_WAL_AUTOCHECKPOINT_PAGES = 1000


class InlineGate:
    """Whether the next write may run inline: the run of inline writes and the pause after slow ones.

    One per Database; used only under the writer's lock (store/writer.py), so not locked itself.
    """

    def __init__(
        self,
        *,
        max_run: int = MAX_INLINE_RUN,
        slow_seconds: float = SLOW_INLINE_SECONDS,
        pause_seconds: float = PAUSE_SECONDS,
    ) -> None:
        self._max_run = max_run
        self._slow_seconds = slow_seconds
        self._pause_seconds = pause_seconds
        self._run = 0
        self._paused_until = 0.0
        self._average_seconds = 0.0

    def is_open(self) -> bool:
        """Whether a write may run inline now."""
        if self._run >= self._max_run:
            return False
        if self._paused_until:
            if time.monotonic() < self._paused_until:
                return False
            self._paused_until = 0.0
        return True

    def ran_inline(self, seconds: float) -> None:
        """Counts an inline write that waited seconds; once they wait long on average, the gate closes a while."""
        self._run += 1
        average = self._average_seconds = self._average_seconds + (seconds - self._average_seconds) * _NEWEST_WEIGHT
        if average > self._slow_seconds:
            # After the pause the writes are tried again from a clean slate: slow ones close it again.
            self._paused_until = time.monotonic() + self._pause_seconds
            self._average_seconds = 0.0

    def ran_on_thread(self) -> None:
        """The thread ran a group: a new run of inline writes may start."""
        self._run = 0


def enter_inline_mode(lean: LeanConnection) -> None:
    """Sets the writer connection up for inline writes: never wait for a lock, never checkpoint."""
    lean.run_sql("PRAGMA busy_timeout=0")
    lean.run_sql("PRAGMA wal_autocheckpoint=0")


def leave_inline_mode(lean: LeanConnection) -> None:
    """Gives the writer connection its usual settings back (the thread's writes wait and checkpoint)."""
    lean.run_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    lean.run_sql(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")


def is_busy(error: BaseException) -> bool:
    """Whether error is SQLite's SQLITE_BUSY (another connection holds the lock), raw or wrapped by SQLAlchemy."""
    raw = getattr(error, "orig", error)
    code = getattr(raw, "sqlite_errorcode", None)
    return isinstance(raw, sqlite3.OperationalError) and code is not None and code & 0xFF == sqlite3.SQLITE_BUSY
