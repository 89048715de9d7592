"""Engines configured for Tollgate: SQLite pragmas and write transactions.

SQLite gets WAL, a busy timeout, foreign keys and full fsync on every
connection, and write transactions start with BEGIN IMMEDIATE: a deferred
transaction that reads and then writes can fail with SQLITE_BUSY at once,
without waiting for the busy timeout. PostgreSQL runs through the same code.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.pool import StaticPool

# Execution option that marks a connection's next transaction as a write.
WRITE_OPTION = "tollgate_write"
SQLITE_BUSY_TIMEOUT_MS = 5000
# Page size of a new SQLite database (an existing one keeps its own: WAL mode fixes it). Every page
# a transaction changes is written to the WAL whole and checksummed byte by byte at COMMIT, and the
# money path's transactions change a few rows on each of ~9 pages: at 2 KiB instead of SQLite's
# 4 KiB a hold+settle pair costs ~6 % fewer instructions on the writer thread, and up to ~15 %
# less writer CPU with group commits (bench/micro_writer.py --page-size). Not smaller: an index
# entry longer than ~(page size / 4) spills into an overflow page, and at 2 KiB (488 bytes) no
# key of the money path's indexes can (request ids are at most 255 characters).
SQLITE_PAGE_SIZE = 2048


def _on_sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # Autocommit at the driver level, so our "begin" listener decides how
    # transactions start; PRAGMAs must run outside a transaction anyway.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # before WAL mode writes the first page
        _enter_wal_mode(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        # Money: under WAL with synchronous=NORMAL a commit can be lost on power failure.
        # Only the writer thread's own connection runs at NORMAL, and it fsyncs the WAL
        # itself after every commit but hold-only ones (store/db.py, store/wal_sync.py).
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _enter_wal_mode(cursor: sqlite3.Cursor) -> None:
    # Two connections switching a new file to WAL at once deadlock on its locks, and
    # SQLite fails one at once with "database is locked" rather than call the busy
    # handler: replicas starting together on a new database crashed ~1 start in 20.
    # Retry within the busy timeout instead.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _on_sqlite_begin(connection: Any) -> None:
    write = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def make_engine(url: str, pool_size: int = 4, *, max_overflow: int | None = None, pool_timeout: float = 30.0) -> Engine:
    """A SQLAlchemy engine for url, configured for Tollgate's access pattern.

    max_overflow (default: pool_size) and pool_timeout apply to PostgreSQL;
    SQLite keeps exactly pool_size connections (it has one writer anyway).
    """
    parsed = make_url(url)
    # hide_parameters: SQL errors end up in logs; bound values (hashes, notes) should not.
    if parsed.get_backend_name() != "sqlite":
        # Read Committed (PostgreSQL's default) is what the money statements are
        # written for: each is one conditional UPDATE that re-checks its WHERE
        # on the newest row version after waiting for a concurrent writer.
        return create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=pool_size if max_overflow is None else max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=True,
            isolation_level="READ COMMITTED",
            hide_parameters=True,
        )
    if is_sqlite_memory(url):
        # One shared connection, or every thread would see its own empty database.
        engine = create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}, hide_parameters=True
        )
    else:
        # LIFO: the connection used last has the warmest page cache (SQLite drops a
        # connection's cache when another connection wrote since its last transaction).
        engine = create_engine(parsed, pool_size=pool_size, max_overflow=0, pool_use_lifo=True, hide_parameters=True)
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def is_sqlite_memory(url: str) -> bool:
    """Whether url names an in-memory SQLite database (one shared connection only)."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
