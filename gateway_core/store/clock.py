"""Database time: the one clock that every core replica agrees on.

Hold leases (instance heartbeats and their staleness) and usage timestamps are
compared across processes, so they are taken from the database inside the
transaction that uses them, never from a replica's clock, which may be skewed
or jump (reliability.md §4, "Clock skew or jumps"). The value is read once per
transaction and then bound as an ordinary parameter, so rows written through
the ORM and the cut-offs compared against them share one format.

SQLite is a file on this machine, shared only by processes on this machine
(WAL needs shared memory), and its 'now' is this machine's real-time clock,
the same one Python's datetime.now() reads. So on SQLite database time is
taken in Python, truncated to the milliseconds SQLite's strftime('%f') gives,
without a SELECT per transaction; PostgreSQL's clock is the server's, read
with a query.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlmodel import Session

from gateway_core.store.lean import LeanConnection

# clock_timestamp(), not now(): now() is frozen at the start of the transaction,
# which under lock waits can be long before the write that uses it.
_POSTGRESQL_NOW = text("SELECT clock_timestamp()")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def db_now(session: Session) -> datetime:
    """The database server's current time, as an aware UTC datetime."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        return sqlite_now()
    return _aware_utc(connection.execute(_POSTGRESQL_NOW).scalar_one())


def transaction_now(lean: LeanConnection) -> datetime:
    """db_now() for a LeanConnection's transaction; on SQLite the same value for the whole transaction."""
    if lean.dialect.name == "sqlite":
        now = lean.transaction_time
        if now is None:
            now = lean.transaction_time = sqlite_now()
        return now
    row = lean.first(_POSTGRESQL_NOW, {})
    assert row is not None
    return _aware_utc(row[0])


def sqlite_now() -> datetime:
    """SQLite's time on this machine, as strftime('%Y-%m-%d %H:%M:%f', 'now') would give it (see above)."""
    # datetime.now(UTC) truncated to the millisecond, from the same clock in whole milliseconds: a
    # third of the instructions of now() and replace() (whose keyword parsing alone is ~6k).
    return _EPOCH + timedelta(0, 0, 0, time.time_ns() // 1_000_000)


def _aware_utc(value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise RuntimeError("the database returned no time-zone-aware time")
    return value.astimezone(UTC)
