"""A durable commit for a SQLite connection kept at synchronous=NORMAL: fdatasync of the WAL file after COMMIT.

In WAL mode the only thing synchronous=FULL adds to a commit over NORMAL is
a sync of the WAL file once the commit's frames are written; on Linux SQLite
does it with fdatasync (the file's data and its size, not its timestamps),
and so does WalSync: fsync would also journal the modification time that
every commit changes, a second write to the disk for nothing a reader needs. The writer
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
    """Syncs the WAL file of one SQLite database (its main file's path + '-wal') to disk.

    Use one per connection, while that connection is open: SQLite deletes a
    WAL file only when the last connection to its database closes, and
    truncating or restarting it keeps the file (and its inode), so the file
    opened here on the first sync() is the WAL for as long as the connection
    lives. Not thread-safe.
    """

    def __init__(self, database_path: str) -> None:
        self.path = database_path + "-wal"
        self._fd: int | None = None

    def sync(self) -> None:
        """Makes every commit written to the WAL so far durable (raises OSError if it cannot)."""
        if self._fd is None:
            self._open()
        assert self._fd is not None
        os.fdatasync(self._fd)

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        # A newly created WAL file's directory entry must be durable too (SQLite syncs the
        # directory at a new WAL file's first sync at FULL): once per connection is enough.
        directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        """Closes the file (the next sync() opens it again)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
