"""WalSync: the fsync that makes a commit on the writer's synchronous=NORMAL connection durable."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from gateway_core.store import wal_sync
from gateway_core.store.wal_sync import WalSync


def test_it_fsyncs_the_wal_file_of_the_database_and_its_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "money.db"
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE t (x INTEGER)")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(wal_sync.os, "fsync", fsync)
    wal = WalSync(str(database))
    try:
        for value in range(3):
            connection.execute("INSERT INTO t VALUES (?)", (value,))
            wal.sync()
        assert synced == [str(tmp_path), f"{database}-wal", f"{database}-wal", f"{database}-wal"]
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # emptied, not replaced: the same file
        connection.execute("INSERT INTO t VALUES (3)")
        wal.sync()
        assert synced[-1] == f"{database}-wal" and len(synced) == 5
    finally:
        wal.close()
        connection.close()
    wal.close()  # idempotent


def test_a_missing_wal_file_is_an_error_not_a_silent_success(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WalSync(str(tmp_path / "nothing.db")).sync()
