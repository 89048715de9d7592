"""The database handle: one engine per URL, with blocking work kept off the event loop.

On SQLite, writes are group-committed: while one write transaction runs,
later writes queue up and then run together in the next transaction, each in
its own SAVEPOINT (so one failing write rolls back only itself). Each caller
still waits until the transaction holding its write has committed, so a
write is durable before run() returns; many concurrent writes share one
fsync instead of queueing behind one fsync each on SQLite's single writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Self, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from gateway_core.store.engine import WRITE_OPTION, is_sqlite_memory, make_engine
from gateway_core.store.migrate import upgrade_engine

T = TypeVar("T")
# Writes per group commit: bounds how long one transaction holds the write lock.
MAX_WRITES_PER_COMMIT = 128
_Outcome = tuple[bool, Any]


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
        self._pending: list[tuple[Callable[[Session], Any], asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None

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
        engine = make_engine(url, pool_size=workers, max_overflow=max_overflow, pool_timeout=pool_timeout_seconds)
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
            return await self._write_grouped(fn)
        return await self._submit(partial(self._transaction, fn, write))

    async def _write_grouped(self, fn: Callable[[Session], T]) -> T:
        if self._closed:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, future))
        if self._writer is None:
            self._writer = loop.create_task(self._write_pending(), name="tollgate-db-group-commit")
        return await future

    async def _write_pending(self) -> None:
        """Runs queued writes, a group per transaction, until none is left."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                group = self._pending[:MAX_WRITES_PER_COMMIT]
                del self._pending[:MAX_WRITES_PER_COMMIT]
                # A caller cancelled before its write started: like a never-started executor job, skip it.
                group = [(fn, future) for fn, future in group if not future.cancelled()]
                if not group:
                    continue
                try:
                    outcomes = await loop.run_in_executor(
                        self._executor, self._group_transaction, [fn for fn, _ in group]
                    )
                except Exception as exc:  # BEGIN or COMMIT failed: none of the group was written
                    outcomes = [(False, exc)] * len(group)
                except BaseException:  # this task was cancelled (loop shutdown): its callers must not hang
                    for _, future in group:
                        future.cancel()
                    raise
                for (_, future), (ok, value) in zip(group, outcomes):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._writer = None
            for _, future in self._pending if self._closed else ():
                future.cancel()

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
        with self._engine.connect() as connection:
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
        if self._writer is not None:
            await asyncio.shield(self._writer)
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
