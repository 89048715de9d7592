"""Which core runs the cluster-wide background work (the orphan sweep): one replica at a time.

On PostgreSQL the leader is the core holding a session-level advisory lock
on a connection of its own (outside the pool, so it never starves requests).
The lock lives exactly as long as that session: when the leader dies or
loses its database connection, the server ends the session and frees the
lock, and the next core that tries (every reconcile interval) takes over.

On SQLite all cores share one machine and one file, and every core leads:
the sweep is safe to run concurrently anyway (each hold closes exactly once,
under BEGIN IMMEDIATE), so no lock is needed there.

Leadership is an optimisation, not the safety: if two cores ever swept at
once (a partitioned leader whose session the server has not yet ended), the
conditional close of each hold still lets exactly one of them release it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

log = logging.getLogger("tollgate.leader")

# Advisory lock key of the orphan sweep (any fixed bigint, distinct from the migration lock's).
RECONCILER_LOCK_KEY = 7_206_183_002


class LeaderLock:
    """try_lead() says whether this process leads now, taking the lead when it is free."""

    def __init__(self, engine: Engine, key: int = RECONCILER_LOCK_KEY) -> None:
        self._key = key
        self._shared = engine.dialect.name == "postgresql"
        # Own connection, never pooled: the lock must not be returned to the pool with it.
        self._engine = create_engine(engine.url, poolclass=NullPool, hide_parameters=True) if self._shared else None
        self._connection: Connection | None = None
        self._leading = not self._shared
        self._lock = threading.Lock()

    @property
    def leading(self) -> bool:
        """Whether the last try_lead() found this process leading."""
        return self._leading

    async def try_lead(self) -> bool:
        """Whether this process leads (taking the lock if free). Never raises: a database error means no."""
        if not self._shared:
            return True
        return await asyncio.to_thread(self._try_lead)

    def _try_lead(self) -> bool:
        with self._lock:
            was_leading = self._leading
            try:
                self._leading = self._check_or_take()
            except DBAPIError:
                log.warning("leader lock connection failed; not leading until it reconnects", exc_info=True)
                self._drop()
                self._leading = False
            if self._leading != was_leading:
                log.info("%s the orphan sweep", "now leading" if self._leading else "no longer leading")
            return self._leading

    def _check_or_take(self) -> bool:
        assert self._engine is not None
        if self._connection is None:
            self._connection = self._engine.connect()
        if self._leading:
            # Still our session, so still our lock: a dead connection raises here.
            self._connection.exec_driver_sql("SELECT 1")
            self._connection.commit()
            return True
        taken = bool(self._connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}).scalar())
        self._connection.commit()  # ends the transaction; a session-level lock outlives it
        return taken

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()
                connection.close()
            except DBAPIError:  # already broken; nothing left to free
                pass

    async def close(self) -> None:
        """Gives up the lead (closing the session frees the lock at once) and the connection."""
        if not self._shared:
            return
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
            leading, self._leading = self._leading, False
            if connection is not None:
                if leading:
                    # Unlock explicitly: the server frees a closed session's locks only once
                    # its backend has exited, a moment after the client hangs up.
                    with contextlib.suppress(DBAPIError):
                        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                        connection.commit()
                connection.close()
            if self._engine is not None:
                self._engine.dispose()
