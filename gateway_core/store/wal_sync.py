"""A durable commit for a SQLite connection kept at synchronous=NORMAL: fsync of the WAL file after COMMIT.

In WAL mode the only thing synchronous=FULL adds to a commit over NORMAL is
an fsync of the WAL file once the commit's frames are written. The writer
thread's connection stays at NORMAL (so hold-only transactions need no fsync)
and, for every other transaction, calls WalSync.sync() once COMMIT has
returned and before any caller hears of the commit: the same fsync FULL
would have done, without switching the connection's synchronous level twice
per transaction (each switch is a statement outside a transaction, so it
opens and closes a read transaction of its own). Checkpoints are unaffected:
at NORMAL, SQLite still syncs the WAL before and the database after each one.
"""

from __future__ import annotations

import os


class WalSync:
    """fsyncs the WAL file of one SQLite database (its main file's path + '-wal').

    The WAL file exists, and keeps its inode, while any connection to the
    database is open, and the connection this serves stays open while it is
    used; a replaced file (every connection closed meanwhile) is noticed by
    its inode and reopened. Not thread-safe: one per writer connection.
    """

    def __init__(self, database_path: str) -> None:
        self.path = database_path + "-wal"
        self._fd: int | None = None
        self._inode = -1

    def sync(self) -> None:
        """Makes every commit written to the WAL so far durable (raises OSError if it cannot)."""
        inode = os.stat(self.path).st_ino
        if self._fd is None or inode != self._inode:
            self._reopen(inode)
        assert self._fd is not None
        os.fsync(self._fd)

    def _reopen(self, inode: int) -> None:
        self.close()
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._inode = os.fstat(self._fd).st_ino
        # A newly created WAL file's directory entry must be durable too (SQLite syncs the
        # directory at a new WAL file's first sync at FULL): once per file is enough.
        directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        if self._inode != inode:  # replaced between stat and open: the next sync compares again
            self._inode = -1

    def close(self) -> None:
        """Closes the file (the next sync() opens it again)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
