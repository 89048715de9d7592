"""WalSync: the sync that makes a commit on the writer's synchronous=NORMAL connection durable."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from gateway_core.store import wal_sync
from gateway_core.store.wal_sync import WalSync


def test_it_syncs_the_wal_file_of_the_database_and_fsyncs_its_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "money.db"
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE t (x INTEGER)")
    synced: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: int) -> None:  # the directory's entry (a new WAL file's name) needs a full fsync
        real_fsync(fd)
        synced.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))

    def fdatasync(fd: int) -> None:  # the WAL's frames and size, as SQLite's own FULL commit syncs them
        real_fdatasync(fd)
        synced.append("fdatasync " + os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(wal_sync.os, "fsync", fsync)
    monkeypatch.setattr(wal_sync.os, "fdatasync", fdatasync)
    wal = WalSync(str(database))
    try:
        for value in range(3):
            connection.execute("INSERT INTO t VALUES (?)", (value,))
            wal.sync()
        wal_synced = f"fdatasync {database}-wal"
        assert synced == [f"fsync {tmp_path}", wal_synced, wal_synced, wal_synced]
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # emptied, not replaced: the same file
        connection.execute("INSERT INTO t VALUES (3)")
        wal.sync()
        assert synced[-1] == wal_synced and len(synced) == 5
    finally:
        wal.close()
        connection.close()
    wal.close()  # idempotent


def test_a_missing_wal_file_is_an_error_not_a_silent_success(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WalSync(str(tmp_path / "nothing.db")).sync()
