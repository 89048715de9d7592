"""The database handle: one engine per URL, with blocking work kept off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Self, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from gateway_core.store.engine import WRITE_OPTION, is_sqlite_memory, make_engine
from gateway_core.store.migrate import upgrade_engine

T = TypeVar("T")


class Database:
    """Owns an engine and a small thread pool that runs every blocking DB call.

    Create with ``await Database.open(url)`` (which migrates the schema) and
    end with ``await db.close()``; or use ``async with await Database.open(url)``.
    """

    def __init__(self, engine: Engine, workers: int) -> None:
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tollgate-db")
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, workers: int = 4, migrate: bool = True) -> Database:
        """Connects to url and, unless migrate is False, upgrades the schema to the newest."""
        if is_sqlite_memory(url):
            workers = 1
        db = cls(make_engine(url, pool_size=workers), workers)
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
        return await self._submit(partial(self._transaction, fn, write))

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
        await asyncio.get_running_loop().run_in_executor(self._executor, self._engine.dispose)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
