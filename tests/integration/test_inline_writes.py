"""Inline writes (store/inline.py): at concurrency 1 a hold and a settlement run on the event loop itself.

Real SQLite files (and PostgreSQL, which keeps its pool): what runs inline is
read from the database's own counters (Database.writes_run_inline and
writes_run_on_thread), the money from the rows (check_invariants).
"""

from __future__ import annotations

import asyncio
import errno
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway_core.errors import GatewayError
from gateway_core.metering.ledger import Ledger
from gateway_core.store import Database, Store, lean, wal_sync
from gateway_core.store.engine import SQLITE_BUSY_TIMEOUT_MS
from gateway_core.store.inline import MAX_INLINE_RUN, InlineGate
from tests.ledger_support import check_invariants, funded_key, outcome


async def _first_request(ledger: Ledger, key: Any) -> None:
    """A hold and its settlement; the hold goes to the thread, which opens the writer's connection."""
    hold = await ledger.hold(request_id="first", account_id=key.account_id, api_key_id=key.key_id, amount_micros=1)
    await ledger.settle(hold, outcome(1))


def _never_paused(db: Database) -> Database:
    """Counts below are exact: a busy test machine (preempting the loop mid-write) must not close the gate."""
    db._inline_gate = InlineGate(slow_seconds=float("inf"))  # the pause after slow writes: tests/unit/test_inline_gate.py
    return db


def _writer_pragma(db: Database, name: str) -> int:
    """A PRAGMA of the writer's own connection, read on it (between writes: nothing else uses it then)."""
    connection = db._writer_pooled.driver_connection  # the writer's connection: no other way to see its settings
    return int(connection.execute(f"PRAGMA {name}").fetchone()[0])


async def test_one_request_at_a_time_holds_and_settles_inline(tmp_path: Path) -> None:
    async with await Database.open(f"sqlite:///{tmp_path}/alone.db") as db:
        _never_paused(db)
        store = Store(db)
        key = await funded_key(store, 10_000)
        ledger = Ledger(db, instance_id="alone")
        await ledger.ensure_instance()
        inline, thread = db.writes_run_inline, db.writes_run_on_thread
        await _first_request(ledger, key)
        # The first hold opens the writer's connection, on the thread; its settlement finds it open.
        assert (db.writes_run_inline - inline, db.writes_run_on_thread - thread) == (1, 1)
        inline, thread = db.writes_run_inline, db.writes_run_on_thread
        for index in range(5):
            hold = await ledger.hold(request_id=f"r{index}", account_id=key.account_id, api_key_id=key.key_id,
                                     amount_micros=1_000)  # fmt: skip
            settlement = await ledger.settle(hold, outcome(300))
            assert (settlement.charged_micros, settlement.released_micros) == (300, 700)
        assert (db.writes_run_inline - inline, db.writes_run_on_thread - thread) == (10, 0)
        # Set up for the loop: never waiting for another process's lock, never checkpointing there.
        assert (_writer_pragma(db, "busy_timeout"), _writer_pragma(db, "wal_autocheckpoint")) == (0, 0)
        assert (await store.get_account(key.account_id)).balance_micros == 10_000 - 1 - 5 * 300
        snapshot = check_invariants(db.engine)
        assert set(snapshot.holds.values()) == {"settled"}


async def test_a_second_open_hold_sends_the_writes_to_the_thread(tmp_path: Path) -> None:
    async with await Database.open(f"sqlite:///{tmp_path}/two.db") as db:
        _never_paused(db)
        key = await funded_key(Store(db), 10_000)
        ledger = Ledger(db, instance_id="two")
        ids = {"account_id": key.account_id, "api_key_id": key.key_id}
        first = await ledger.hold(request_id="first", amount_micros=100, **ids)
        inline, thread = db.writes_run_inline, db.writes_run_on_thread
        second = await ledger.hold(request_id="second", amount_micros=100, **ids)  # "first" is open
        await ledger.settle(first, outcome(10))  # "second" is open too
        assert (db.writes_run_inline - inline, db.writes_run_on_thread - thread) == (0, 2)
        # The thread gave its connection back its usual settings before using it.
        assert (_writer_pragma(db, "busy_timeout"), _writer_pragma(db, "wal_autocheckpoint")) == (
            SQLITE_BUSY_TIMEOUT_MS, 1000)  # fmt: skip
        await ledger.settle(second, outcome(10))  # its own hold is the only one left: inline
        assert db.writes_run_inline - inline == 1
        check_invariants(db.engine)


async def test_a_run_of_inline_writes_leaves_a_turn_to_the_thread(tmp_path: Path) -> None:
    """Inline commits do not checkpoint; one write in every MAX_INLINE_RUN goes to the thread, whose commits do."""
    async with await Database.open(f"sqlite:///{tmp_path}/run.db") as db:
        _never_paused(db)
        key = await funded_key(Store(db), 10_000_000)
        ledger = Ledger(db, instance_id="run")
        await ledger.ensure_instance()
        await _first_request(ledger, key)
        inline, thread = db.writes_run_inline, db.writes_run_on_thread
        for index in range(MAX_INLINE_RUN):
            hold = await ledger.hold(request_id=f"r{index}", account_id=key.account_id, api_key_id=key.key_id,
                                     amount_micros=10)  # fmt: skip
            await ledger.settle(hold, outcome(1))
        assert db.writes_run_on_thread - thread == 1
        assert db.writes_run_inline - inline == 2 * MAX_INLINE_RUN - 1
        check_invariants(db.engine)


@pytest.mark.parametrize("concurrency", [4, 12])
async def test_callers_mixing_inline_and_thread_writes_keep_every_invariant(tmp_path: Path, concurrency: int) -> None:
    """Callers that sometimes run alone (inline) and sometimes together (the thread's groups)."""
    async with await Database.open(f"sqlite:///{tmp_path}/mixed.db") as db:
        store = Store(db)
        keys = [await funded_key(store, 40_000), await funded_key(store, 30_000, spend_limit_micros=15_000)]
        ledger = Ledger(db, instance_id="mixed")
        await ledger.ensure_instance()
        chance = random.Random(concurrency)
        admitted: list[str] = []
        inline, thread = db.writes_run_inline, db.writes_run_on_thread

        async def caller(index: int) -> None:
            for turn in range(10):
                # Mostly apart (one request at a time: inline), now and then together (the thread).
                await asyncio.sleep(chance.choice([0, 0.002, 0.004, 0.01]) * index)
                key = keys[(index + turn) % 2]
                try:
                    hold = await ledger.hold(
                        request_id=f"c{index}-{turn}", account_id=key.account_id, api_key_id=key.key_id,
                        amount_micros=chance.choice([0, 100, 900, 3_000]),
                    )  # fmt: skip
                except GatewayError:
                    continue
                admitted.append(hold.request_id)
                await asyncio.sleep(chance.choice([0, 0, 0.001]))
                await ledger.settle(hold, outcome(chance.choice([0, 50, 800, 5_000])))
                if turn == 3:  # a retry of a settlement changes nothing
                    assert (await ledger.settle(hold, outcome(1))).replayed

        await asyncio.gather(*(caller(index) for index in range(concurrency)))
        assert admitted
        assert db.writes_run_inline > inline and db.writes_run_on_thread > thread  # both paths were taken
        snapshot = check_invariants(db.engine)  # one usage record per closed hold, exact sums
        assert set(snapshot.holds.values()) == {"settled"} and set(snapshot.holds) == set(admitted)
        for key in keys:
            assert (await store.get_account(key.account_id)).balance_micros >= 0
        assert 0 < (await store.get_api_key(keys[1].key_id)).spent_micros <= 15_000


@pytest.mark.parametrize("write", ["hold", "settle"])
async def test_a_write_that_finds_the_lock_taken_waits_on_the_thread_not_the_loop(tmp_path: Path, write: str) -> None:
    path = tmp_path / "busy.db"
    async with await Database.open(f"sqlite:///{path}") as db:
        _never_paused(db)
        key = await funded_key(Store(db), 10_000)
        ledger = Ledger(db, instance_id="busy")
        ids = {"account_id": key.account_id, "api_key_id": key.key_id}
        held = await ledger.hold(request_id="held", amount_micros=500, **ids)  # opens the writer's connection
        if write == "hold":
            await ledger.settle(held, outcome(100))  # nothing open any more: the next hold tries inline
        writer_connection = db._writer_pooled.driver_connection
        inline, thread = db.writes_run_inline, db.writes_run_on_thread
        blocker = sqlite3.connect(path, isolation_level=None)  # another process's writer
        blocker.execute("BEGIN IMMEDIATE")
        try:
            if write == "hold":
                waiting = asyncio.ensure_future(ledger.hold(request_id="next", amount_micros=500, **ids))
            else:
                waiting = asyncio.ensure_future(ledger.settle(held, outcome(100)))
            loop = asyncio.get_running_loop()
            began = loop.time()
            for _ in range(40):  # the loop keeps turning while the write waits (5 s busy timeout) for the lock
                await asyncio.sleep(0.002)
            assert loop.time() - began < 1.0 and not waiting.done()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await waiting
        # Tried inline (SQLITE_BUSY at once), then waited on the thread; the connection stayed.
        assert (db.writes_run_inline - inline, db.writes_run_on_thread - thread) == (0, 1)
        assert db._writer_pooled.driver_connection is writer_connection
        snapshot = check_invariants(db.engine)
        assert snapshot.holds == ({"held": "settled", "next": "open"} if write == "hold" else {"held": "settled"})


async def test_an_inline_commit_that_fails_gives_the_caller_the_error_and_charges_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await Database.open(f"sqlite:///{tmp_path}/commit.db") as db:
        _never_paused(db)
        store = Store(db)
        key = await funded_key(store, 10_000)
        ledger = Ledger(db, instance_id="commit")
        hold = await ledger.hold(request_id="r", account_id=key.account_id, api_key_id=key.key_id, amount_micros=1_000)
        writer_connection = db._writer_pooled.driver_connection
        inline = db.writes_run_inline
        real_run_sql = lean.LeanConnection.run_sql

        def failing_commit(self: lean.LeanConnection, sql: str) -> list[Any]:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return real_run_sql(self, sql)

        monkeypatch.setattr(lean.LeanConnection, "run_sql", failing_commit)
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            await ledger.settle(hold, outcome(400))
        monkeypatch.undo()
        assert db.writes_run_inline - inline == 1  # it ran inline, and failed there
        assert (await store.get_hold("r")).status == "open"  # type: ignore[union-attr]  # rolled back: nothing charged
        assert (await store.get_account(key.account_id)).balance_micros == 10_000
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):  # mid-transaction once: discarded
            writer_connection.execute("SELECT 1")
        settlement = await ledger.settle(hold, outcome(400))  # a retry, on the thread: it opens a new connection
        assert (settlement.charged_micros, settlement.replayed) == (400, False)
        assert db.writes_run_inline - inline == 1
        check_invariants(db.engine)


async def test_an_inline_fsync_that_fails_gives_the_caller_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on the thread: the caller hears of the failure, the connection is replaced, a retry replays the settlement."""
    async with await Database.open(f"sqlite:///{tmp_path}/fsync.db") as db:
        _never_paused(db)
        store = Store(db)
        key = await funded_key(store, 10_000)
        ledger = Ledger(db, instance_id="fsync")
        hold = await ledger.hold(request_id="r", account_id=key.account_id, api_key_id=key.key_id, amount_micros=1_000)
        writer_connection = db._writer_pooled.driver_connection
        inline, thread = db.writes_run_inline, db.writes_run_on_thread

        def failing_fdatasync(fd: int) -> None:
            raise OSError(errno.EIO, "fdatasync failed")

        monkeypatch.setattr(wal_sync.os, "fdatasync", failing_fdatasync)
        with pytest.raises(OSError, match="fdatasync failed"):
            await ledger.settle(hold, outcome(400))
        monkeypatch.undo()
        assert (db.writes_run_inline - inline, db.writes_run_on_thread - thread) == (1, 0)
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            writer_connection.execute("SELECT 1")
        again = await ledger.settle(hold, outcome(999))  # idempotent: the first settlement's values
        assert (again.charged_micros, again.replayed) == (400, True)
        assert (await store.get_account(key.account_id)).balance_micros == 10_000 - 400
        check_invariants(db.engine)


async def test_in_memory_sqlite_writes_inline_too(tmp_path: Path) -> None:
    async with await Database.open("sqlite://") as db:
        _never_paused(db)
        store = Store(db)
        key = await funded_key(store, 10_000)
        ledger = Ledger(db, instance_id="memory")
        await ledger.ensure_instance()
        inline = db.writes_run_inline
        hold = await ledger.hold(request_id="m", account_id=key.account_id, api_key_id=key.key_id, amount_micros=500)
        await ledger.settle(hold, outcome(200))
        assert db.writes_run_inline - inline == 2
        assert (await store.get_account(key.account_id)).balance_micros == 9_800
        check_invariants(db.engine)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_keeps_its_pool(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        key = await funded_key(Store(db), 10_000)
        ledger = Ledger(db, instance_id="pg")
        hold = await ledger.hold(request_id="pg", account_id=key.account_id, api_key_id=key.key_id, amount_micros=500)
        assert (await ledger.settle(hold, outcome(200))).charged_micros == 200
        assert (db.writes_run_inline, db.writes_run_on_thread) == (0, 0)  # no writer thread, nothing inline
        check_invariants(db.engine)


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path}/closed.db")
    key = await funded_key(Store(db), 10_000)
    ledger = Ledger(db, instance_id="closed")
    hold = await ledger.hold(request_id="c", account_id=key.account_id, api_key_id=key.key_id, amount_micros=500)
    await db.close()
    with pytest.raises(RuntimeError, match="closed"):
        await ledger.settle(hold, outcome(100))
