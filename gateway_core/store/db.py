"""The database handle: one engine per URL, with blocking work kept off the event loop.

On SQLite, writes are group-committed by one writer thread (store/writer.py):
while one write transaction runs, later writes queue up and then run
together in the next transaction, each in
its own SAVEPOINT (so one failing write rolls back only itself). Each caller
still waits until the transaction holding its write has committed, so a
write is durable before run() returns; many concurrent writes share one
fsync instead of queueing behind one fsync each on SQLite's single writer.

The money path (run_lean) runs on the raw DBAPI connection with statements
compiled once (store/lean.py), grouped the same way (but without a SAVEPOINT
per write unless one fails after writing, and a group's holds and
settlements each run together: see _lean_group), on the writer thread's
own connection, which stays at synchronous=NORMAL. A group made only of
writes that asked for durable=False (the Ledger's holds) is committed without
fsync; see _RELAXED_SYNCHRONOUS for why that loses no money. Any other write
in the group makes the writer fsync the WAL after COMMIT, before any caller
hears of it (store/wal_sync.py): the fsync synchronous=FULL would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Self, TypeVar

from sqlalchemy import Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from gateway_core.store.engine import WRITE_OPTION, is_sqlite_memory, make_engine
from gateway_core.store.grouped import run_grouped
from gateway_core.store.lean import LeanConnection, statements_for
from gateway_core.store.migrate import upgrade_engine
from gateway_core.store.writer import Outcome as _Outcome
from gateway_core.store.writer import Pending as _Pending
from gateway_core.store.wal_sync import WalSync
from gateway_core.store.writer import WriterThread

T = TypeVar("T")
# Writes per group commit: bounds how long one transaction holds the write lock.
MAX_WRITES_PER_COMMIT = 128

# How queued writes run: through a Session, or on the lean path (durable or not).
_SESSION, _LEAN_DURABLE, _LEAN_RELAXED = "session", "lean-durable", "lean-relaxed"

# SQLite's synchronous=NORMAL (1). In WAL mode a commit at NORMAL is atomic and,
# once COMMIT returns, visible to every process (they share the WAL and its
# index); it survives any process crash, since the frames are in the OS's page
# cache. Only an OS crash or power loss before the next fsync can lose it, and
# that also kills every process on this machine that could have acted on it
# (SQLite's file is local to this machine) before its response was sent. The
# next FULL commit (every settle, top-up, release) fsyncs the WAL file, which
# makes every earlier frame durable too. So a hold lost that way is exactly a
# hold never taken: nothing was charged, nothing is owed, no client saw an
# answer. Only groups of holds go without the fsync; PostgreSQL stays fully synchronous.
_RELAXED_SYNCHRONOUS = 1
# Where a pooled connection remembers the synchronous level it was set up with.
_SYNCHRONOUS_INFO_KEY = "tollgate_synchronous"


class Database:
    """Owns an engine and a small thread pool that runs every blocking DB call.

    Create with ``await Database.open(url)`` (which migrates the schema) and
    end with ``await db.close()``; or use ``async with await Database.open(url)``.
    """

    def __init__(self, engine: Engine, workers: int) -> None:
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tollgate-db")
        self._closed = False
        self._group_writes = engine.dialect.name == "sqlite"
        self._statements = statements_for(engine.dialect)
        # In-memory SQLite has one connection for everyone: the writer thread and the
        # pool's one worker take turns on it. Elsewhere each has its own connection.
        memory = engine.dialect.name == "sqlite" and isinstance(engine.pool, StaticPool)
        self._serial: contextlib.AbstractContextManager[Any] = threading.RLock() if memory else contextlib.nullcontext()
        # The writer thread's own connection (see _writer_connection); the pool has one extra for it.
        self._keep_writer_connection = self._group_writes and not memory
        self._writer_pool: Any = None
        self._writer_pooled: Any = None
        self._writer_lean: LeanConnection | None = None
        self._writer_wal: WalSync | None = None
        self._writer = (
            WriterThread(
                self._run_group,
                max_group=MAX_WRITES_PER_COMMIT,
                name="tollgate-db-writer",
                same_group=lambda a, b: (a == _SESSION) == (b == _SESSION),
            )
            if self._group_writes
            else None
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        workers: int = 4,
        migrate: bool = True,
        max_overflow: int | None = None,
        pool_timeout_seconds: float = 30.0,
    ) -> Database:
        """Connects to url and, unless migrate is False, upgrades the schema to the newest.

        workers is the connection pool's size; on PostgreSQL up to max_overflow
        (default: workers) more connections open under load, and a thread runs
        for each, so no call queues for a thread while a connection is free.
        """
        if is_sqlite_memory(url):
            workers = 1
        # A SQLite file's writer thread keeps one connection of its own (Database._writer_connection).
        pool_size = workers + 1 if url.startswith("sqlite") and not is_sqlite_memory(url) else workers
        engine = make_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout_seconds)
        overflow = 0 if engine.dialect.name == "sqlite" else workers if max_overflow is None else max_overflow
        threads = workers + overflow
        db = cls(engine, threads)
        if migrate:
            try:
                await db._submit(partial(upgrade_engine, db._engine))
            except BaseException:
                await db.close()
                raise
        return db

    @property
    def engine(self) -> Engine:
        """The underlying engine (for tests and tools; the core goes through run())."""
        return self._engine

    async def run(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        """Runs fn(session) in one transaction on the pool; commits unless fn raises.

        Pass write=True for anything that writes: on SQLite the transaction then
        takes the write lock up front. Keep write functions short (one writer).
        """
        if write and self._group_writes:
            return await self._write_grouped(fn, _SESSION)
        return await self._submit(partial(self._transaction, fn, write))

    async def run_lean(self, fn: Callable[[LeanConnection], T], *, durable: bool = True) -> T:
        """Runs fn(lean) in one write transaction on the raw connection; commits unless fn raises.

        For the money path's hot statements (store/holds.py). durable=False
        lets SQLite commit it without waiting for fsync when every write in its
        group allows that (see _RELAXED_SYNCHRONOUS); only a transaction that
        merely takes holds may ask for it. fn must only touch the database:
        on SQLite it may run more than once (see _lean_group), and only its
        last run's writes are committed.
        """
        if self._group_writes:
            return await self._write_grouped(fn, _LEAN_DURABLE if durable else _LEAN_RELAXED)
        return await self._submit(partial(self._lean_transaction, fn))

    async def _write_grouped(self, fn: Callable[[Any], T], kind: str) -> T:
        if self._closed or self._writer is None:
            raise RuntimeError("database is closed")
        result: T = await self._writer.submit(fn, kind)
        return result

    def _run_group(self, group: list[_Pending]) -> list[_Outcome]:
        """On the writer thread: one group of writes of one path in one transaction."""
        fns = [fn for fn, _, _ in group]
        with self._serial:
            try:
                if group[0][2] == _SESSION:
                    return self._group_transaction(fns)
                durable = any(kind == _LEAN_DURABLE for _, _, kind in group)
                return self._lean_group_transaction(fns, durable)
            except Exception as exc:  # noqa: BLE001 - BEGIN or COMMIT failed: none of the group was written
                return [(False, exc)] * len(group)

    def _lean_group_transaction(self, fns: list[Callable[[LeanConnection], Any]], durable: bool) -> list[_Outcome]:
        """SQLite: runs fns in one BEGIN IMMEDIATE transaction on the writer's connection.

        The connection stays at synchronous=NORMAL (see _writer_connection);
        a durable group's commit is made durable by fsyncing the WAL before
        any of its callers hears of it (store/wal_sync.py), exactly what FULL
        would do at COMMIT.
        """
        lean, wal = self._writer_connection()
        try:
            changes = lean.driver_connection.total_changes
            outcomes = self._lean_group(lean, fns)
            # A group that wrote nothing (replayed or refused settlements) has nothing to make durable:
            # FULL would not sync its empty commit either.
            if durable and wal is not None and lean.driver_connection.total_changes != changes:
                wal.sync()
        except BaseException:
            # BEGIN, COMMIT or the WAL's fsync failed (or worse): the connection may be mid-transaction,
            # so it must not serve another write. A new one is cheap.
            self._drop_writer_connection(invalidate=True)
            raise
        if not self._keep_writer_connection:
            self._drop_writer_connection(invalidate=False)
        return outcomes

    def _writer_connection(self) -> tuple[LeanConnection, WalSync | None]:
        """The writer thread's connection and, if its commits need one, the WAL fsync that makes them durable.

        Kept checked out on a SQLite file, so its page cache stays warm
        (SQLite drops a connection's cache whenever another connection wrote
        since its last transaction; with one writer connection that is only
        other processes). A pool replaced by engine.dispose() replaces it too.
        A connection set up at FULL (or EXTRA) is switched to NORMAL once, here,
        and back when it returns to the pool; one set up below FULL (a
        deployment's or test's choice) is left as it is and never fsynced.
        """
        if self._writer_pooled is not None and self._writer_pool is not self._engine.pool:
            self._drop_writer_connection(invalidate=False)
        if self._writer_lean is None:
            self._writer_pool = self._engine.pool
            pooled = self._writer_pooled = self._engine.raw_connection()
            lean = self._writer_lean = LeanConnection(pooled.driver_connection, self._statements)
            level = pooled.info.get(_SYNCHRONOUS_INFO_KEY)
            if level is None:
                level = pooled.info[_SYNCHRONOUS_INFO_KEY] = int(lean.run_sql("PRAGMA synchronous")[0][0])
            if self._keep_writer_connection and level > _RELAXED_SYNCHRONOUS:
                path = next(str(row[2]) for row in lean.run_sql("PRAGMA database_list") if row[1] == "main")
                lean.run_sql(f"PRAGMA synchronous={_RELAXED_SYNCHRONOUS}")
                self._writer_wal = WalSync(path)
        return self._writer_lean, self._writer_wal

    def _drop_writer_connection(self, *, invalidate: bool) -> None:
        """Returns the writer's connection to its pool (or discards it, if it may be broken or mid-transaction)."""
        pooled, lean, wal = self._writer_pooled, self._writer_lean, self._writer_wal
        self._writer_pooled = self._writer_lean = self._writer_wal = None
        if wal is not None:
            with contextlib.suppress(OSError):
                wal.close()
            if not invalidate and lean is not None:
                # Back to the level it was set up with before another caller gets it from the pool.
                try:
                    lean.run_sql(f"PRAGMA synchronous={pooled.info[_SYNCHRONOUS_INFO_KEY]}")
                except Exception:  # noqa: BLE001 - it must not serve anyone at NORMAL: discard it
                    invalidate = True
        if lean is not None:
            with contextlib.suppress(Exception):
                lean.close()
        if pooled is not None:
            if invalidate:
                pooled.invalidate()
            pooled.close()

    @staticmethod
    def _lean_group(lean: LeanConnection, fns: list[Callable[[LeanConnection], Any]]) -> list[_Outcome]:
        """fns in one transaction; a write that fails is rolled back alone, so the others still commit.

        Holds and settlements (GroupedWrites) of a group of several are run
        first, each kind together as one set of statements in a SAVEPOINT;
        a kind that cannot go through together (a refusal among them) is
        rolled back to it and its writes run one by one with the rest
        (store/grouped.py, store/holds_together.py).
        Most failures change nothing before they are raised (the conditional
        UPDATE that refuses a hold is the first statement), so they need no
        rollback and no write pays for a SAVEPOINT. Only when a write fails
        after changing rows is the transaction rolled back and the group run
        again with a SAVEPOINT around each write; so a write function may run
        more than once, and only its last run counts.
        """
        connection = lean.driver_connection
        lean.run_sql("BEGIN IMMEDIATE")
        lean.transaction_time = None  # a new transaction: a new time (store/clock.py)
        try:
            outcomes: list[_Outcome | None] = [None] * len(fns)
            # Holds and settlements of the group first, each kind as one set of statements (store/grouped.py).
            alone = run_grouped(lean, fns, outcomes) if len(fns) > 1 else [0]
            for position in alone:
                fn = fns[position]
                changes = connection.total_changes
                try:
                    outcomes[position] = (True, fn(lean))
                except Exception as exc:  # noqa: BLE001 - handed to the caller (after a rollback, if it wrote)
                    if connection.total_changes == changes and connection.in_transaction:
                        outcomes[position] = (False, exc)  # it changed nothing: nothing to undo
                        continue
                    lean.rollback()
                    if len(fns) == 1:
                        return [(False, exc)]
                    return Database._lean_group_with_savepoints(lean, fns)
            lean.run_sql("COMMIT")
            return outcomes  # type: ignore[return-value]  # every position was filled above
        except BaseException:
            with contextlib.suppress(Exception):  # the error that got us here is the one to report
                lean.rollback()
            raise

    @staticmethod
    def _lean_group_with_savepoints(lean: LeanConnection, fns: list[Callable[[LeanConnection], Any]]) -> list[_Outcome]:
        """fns in one transaction, each in a SAVEPOINT: one that fails rolls back only itself."""
        lean.run_sql("BEGIN IMMEDIATE")
        lean.transaction_time = None  # a new transaction: a new time (store/clock.py)
        try:
            outcomes: list[_Outcome] = []
            for fn in fns:
                lean.run_sql("SAVEPOINT tollgate_write")
                try:
                    outcomes.append((True, fn(lean)))
                except Exception as exc:  # noqa: BLE001 - rolled back to its savepoint; handed to the caller
                    lean.run_sql("ROLLBACK TO tollgate_write")
                    outcomes.append((False, exc))
                lean.run_sql("RELEASE tollgate_write")
            lean.run_sql("COMMIT")
            return outcomes
        except BaseException:
            with contextlib.suppress(Exception):  # the error that got us here is the one to report
                lean.rollback()
            raise

    def _lean_transaction(self, fn: Callable[[LeanConnection], T]) -> T:
        """PostgreSQL: fn in one transaction (the driver begins it) on a raw pooled connection."""
        pooled = self._engine.raw_connection()
        lean = LeanConnection(pooled.driver_connection, self._statements)
        try:
            result = fn(lean)
            lean.commit()
            return result
        except BaseException:
            if lean.disconnected:
                pooled.invalidate()
            else:
                with contextlib.suppress(Exception):  # the error that got us here is the one to report
                    lean.rollback()
            raise
        finally:
            lean.close()
            pooled.close()

    def _group_transaction(self, fns: list[Callable[[Session], Any]]) -> list[_Outcome]:
        if len(fns) == 1:  # alone: a plain transaction, no savepoint
            try:
                return [(True, self._transaction(fns[0], True))]
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                return [(False, exc)]
        outcomes: list[_Outcome] = []
        with self._engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            with Session(bind=connection, expire_on_commit=False) as session, session.begin():
                for fn in fns:
                    try:
                        with session.begin_nested():
                            outcomes.append((True, fn(session)))
                    except Exception as exc:  # noqa: BLE001 - rolled back to its savepoint; handed to the caller
                        outcomes.append((False, exc))
        return outcomes

    def _transaction(self, fn: Callable[[Session], T], write: bool) -> T:
        with self._serial, self._engine.connect() as connection:
            if write:
                connection.execution_options(**{WRITE_OPTION: True})
            with Session(bind=connection, expire_on_commit=False) as session, session.begin():
                return fn(session)

    async def _submit(self, call: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        """Closes every pooled connection and stops the worker threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:  # runs every write handed in before close, then ends
            await asyncio.to_thread(self._writer.stop)
            self._drop_writer_connection(invalidate=False)
        # Jobs whose caller was cancelled may still be running on the pool: let
        # them finish and check their connections in first, or dispose() would
        # miss those connections and leave them open.
        await asyncio.to_thread(self._finish_and_dispose)

    def _finish_and_dispose(self) -> None:
        self._executor.shutdown(wait=True)
        self._engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
