"""WAL checkpoints of a SQLite file on a thread of their own, so no commit waits for one.

SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past
wal_autocheckpoint pages (1000 by default): that commit copies every page
changed since the last checkpoint into the database file and syncs both files
before its caller hears of it. On the writer thread that is a request every
~50 whose settle waits several milliseconds, and writer time nobody else can
use. Here a background thread with its own connection runs PASSIVE
checkpoints instead (they never block a writer or a reader), after every
CHECKPOINT_EVERY_WRITES writes and once more when writes pause; the writer's
connection keeps SQLite's own automatic checkpoint only as a backstop at
BACKSTOP_PAGES, should this thread ever fall behind or fail.

Nothing about durability changes: a checkpoint only copies committed frames
into the database file, and SQLite keeps those frames in the WAL until a
checkpoint has fully copied and synced them; a crash at any point of one
leaves the WAL to be replayed by the next connection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from gateway_core.store.engine import SQLITE_BUSY_TIMEOUT_MS

log = logging.getLogger("tollgate.store")

# Writes (holds, settles: ~8-10 WAL pages each) between checkpoints: about SQLite's default 1000 pages.
CHECKPOINT_EVERY_WRITES = 100
# The writer connection's own automatic checkpoint, only reached if this thread falls far behind (~16 MiB of WAL).
BACKSTOP_PAGES = 4000
# A pass after writes pause, so an idle database's WAL is copied back and the next writes restart it from the top.
IDLE_SECONDS = 1.0


class WalCheckpointer:
    """Checkpoints one SQLite database file from its own thread when told that enough writes were committed.

    wrote() is for the one thread that commits (the writer): it only counts
    and, every `every_writes`, wakes the checkpoint thread. stop() (blocking)
    ends the thread and closes its connection. `passes` counts completed
    checkpoint calls, for tests and diagnostics.
    """

    def __init__(
        self, database_path: str, *, every_writes: int = CHECKPOINT_EVERY_WRITES, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        if every_writes < 1:
            raise ValueError("every_writes must be at least 1")
        self.path = database_path
        self.passes = 0
        self._every = every_writes
        self._idle = idle_seconds
        self._wake = threading.Event()
        self._stopping = False
        # Written only by the writer thread (committed) and only by the checkpoint thread (checkpointed).
        self._committed = 0
        self._woken_at = 0
        self._checkpointed = 0
        self._thread = threading.Thread(target=self._run, name="tollgate-db-checkpoint", daemon=True)
        self._thread.start()

    def wrote(self, count: int) -> None:
        """Counts count committed writes; wakes the checkpoint thread every `every_writes`."""
        self._committed += count
        if self._committed - self._woken_at >= self._every:
            self._woken_at = self._committed
            self._wake.set()

    def stop(self) -> None:
        """Ends the thread after its current checkpoint (if any). Idempotent."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            # A checkpoint syncs the WAL before copying and the database file after (at NORMAL or FULL alike).
            connection.execute("PRAGMA synchronous=FULL")
            while not self._stopping:
                self._wake.wait(self._idle)
                self._wake.clear()
                committed = self._committed
                if self._stopping or committed == self._checkpointed:
                    continue
                self._checkpoint(connection)
                self._checkpointed = committed
        finally:
            connection.close()

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:  # the backstop checkpoints meanwhile; the next pass tries again
            log.warning("background WAL checkpoint of %s failed", self.path, exc_info=True)
        else:
            self.passes += 1
