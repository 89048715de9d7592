"""Database time: the one clock that every core replica agrees on.

Hold leases (instance heartbeats and their staleness) and usage timestamps are
compared across processes, so they are taken from the database inside the
transaction that uses them, never from a replica's clock, which may be skewed
or jump (reliability.md §4, "Clock skew or jumps"). The value is read once per
transaction and then bound as an ordinary parameter, so rows written through
the ORM and the cut-offs compared against them share one format.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from sqlmodel import Session

# SQLite's CURRENT_TIMESTAMP has whole seconds only; strftime('%f') gives milliseconds.
_SQLITE_NOW = text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")
# clock_timestamp(), not now(): now() is frozen at the start of the transaction,
# which under lock waits can be long before the write that uses it.
_POSTGRESQL_NOW = text("SELECT clock_timestamp()")


def db_now(session: Session) -> datetime:
    """The database server's current time, as an aware UTC datetime."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        raw = connection.execute(_SQLITE_NOW).scalar_one()
        return datetime.fromisoformat(str(raw)).replace(tzinfo=UTC)
    value = connection.execute(_POSTGRESQL_NOW).scalar_one()
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise RuntimeError("the database returned no time-zone-aware time")
    return value.astimezone(UTC)
