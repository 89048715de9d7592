"""The lean money path (store/lean.py, Database.run_lean): same rows as SQLAlchemy writes, durability per kind.

Holds and settlements run on the raw DBAPI connection with statements compiled
once. These tests prove that what they store is exactly what the ORM stores
(every column type involved, both backends), that SQLAlchemy errors still come
out, and that on SQLite only hold-only transactions commit with
synchronous=NORMAL (the crash test, test_crash_recovery, kills a process right
after such a hold and sees the orphan sweep release it).
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from gateway_core.errors import GatewayError, Reason
from gateway_core.metering.ledger import Ledger
from gateway_core.store import Database, Store
from gateway_core.store import holds as hold_sql
from gateway_core.store import clock, wal_sync
from gateway_core.store.clock import db_now
from gateway_core.store.lean import LeanConnection, lean_connection
from gateway_core.store.models import Account, Hold, LedgerEntry, UsageRecord
from tests.ledger_support import funded_key, outcome

# SQLAlchemy's SQLite DATETIME text, as the ORM writes it.
_SQLITE_DATETIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def _raw_rows(db: Database, table: str, key: str, values: tuple[str, ...]) -> dict[str, tuple[Any, ...]]:
    """Rows as the driver returns them (no SQLAlchemy types): how they are really stored."""
    pooled = db.engine.raw_connection()
    try:
        cursor = pooled.driver_connection.cursor()
        marks = ", ".join(["?" if db.engine.dialect.name == "sqlite" else "%s"] * len(values))
        cursor.execute(f"SELECT * FROM {table} WHERE {key} IN ({marks}) ORDER BY {key}", values)  # noqa: S608
        names = [column[0] for column in cursor.description]
        return {str(row[names.index(key)]): tuple(row) for row in cursor.fetchall()} | {"": tuple(names)}
    finally:
        pooled.close()


async def test_rows_written_lean_are_stored_and_read_exactly_like_orm_rows(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        store = Store(db)
        key = await funded_key(store, 10_000)
        ledger = Ledger(db, instance_id="lean-test")
        hold = await ledger.hold(
            request_id="lean", account_id=key.account_id, api_key_id=key.key_id, amount_micros=3_000, model="m"
        )
        settlement = await ledger.settle(hold, replace(outcome(1_234), prompt_tokens=-1))  # clamped: a boolean True

        # The same rows written through the ORM, copied column by column from what the lean path stored.
        def copy_through_orm(session: Session) -> None:
            lean_hold = session.get(Hold, "lean")
            usage = session.get(UsageRecord, "lean")
            assert lean_hold is not None and usage is not None
            session.add(Hold(**{**lean_hold.model_dump(), "request_id": "orm"}))
            session.flush()
            session.add(UsageRecord(**{**usage.model_dump(), "request_id": "orm"}))
            for entry in session.exec(select(LedgerEntry).where(col(LedgerEntry.request_id) == "lean")):
                session.add(LedgerEntry(**{**entry.model_dump(), "id": None, "request_id": "orm"}))

        await db.run(copy_through_orm, write=True)

        for table, key_column in (("holds", "request_id"), ("usage_records", "request_id")):
            rows = _raw_rows(db, table, key_column, ("lean", "orm"))
            names = rows.pop("")
            position = names.index(key_column)
            lean_row, orm_row = (row[:position] + row[position + 1 :] for row in (rows["lean"], rows["orm"]))
            assert lean_row == orm_row, f"{table}: lean {lean_row} != orm {orm_row}"
            assert [type(value) for value in lean_row] == [type(value) for value in orm_row]
        pooled = db.engine.raw_connection()
        try:  # entries as stored, by kind: ids differ, nothing else may
            cursor = pooled.driver_connection.cursor()
            cursor.execute("SELECT request_id, kind, account_id, amount_micros, balance_after_micros,"
                           " held_delta_micros, note, created_at FROM ledger_entries")
            raw_entries = {(row[0], row[1]): row[2:] for row in cursor.fetchall()}
        finally:
            pooled.close()
        for kind in ("hold", "settle", "release"):
            assert raw_entries[("lean", kind)] == raw_entries[("orm", kind)]
            assert [type(v) for v in raw_entries[("lean", kind)]] == [type(v) for v in raw_entries[("orm", kind)]]
        with Session(db.engine) as session:
            by_kind = {
                (entry.request_id, entry.kind): entry.model_dump(exclude={"id", "request_id"})
                for entry in session.exec(select(LedgerEntry).where(col(LedgerEntry.request_id).in_(["lean", "orm"])))
            }
            kinds = sorted(kind for request_id, kind in by_kind if request_id == "lean")
            assert kinds == ["hold", "release", "settle"]
            assert all(by_kind[("lean", kind)] == by_kind[("orm", kind)] for kind in kinds)
            # Read back through the ORM: aware UTC datetimes, ints, bools, as SQLAlchemy hands them out.
            stored = session.get(Hold, "lean")
            assert stored is not None and stored.closed_at is not None
            assert stored.created_at.tzinfo is UTC and stored.closed_at.tzinfo is UTC
            assert (stored.status, stored.charged_micros, stored.balance_after_micros) == ("settled", 1_234, 8_766)
            usage = session.get(UsageRecord, "lean")
            assert usage is not None and usage.clamped is True and usage.estimated is False
            assert usage.time_to_first_token_ms is not None and usage.created_at == stored.created_at
            account = session.get(Account, key.account_id)
            assert account is not None and account.updated_at.tzinfo is UTC
            assert account.updated_at == stored.closed_at  # the settle's debit, stamped with the same time
        assert settlement.balance_after_micros == 8_766
        # The store's readers (admin API, usage listing) see the lean rows like any other.
        record = await store.get_usage_record("lean")
        assert record is not None and record.cost_micros == 1_234 and record.created_at == stored.created_at
        page, _ = await store.list_usage_records(key.account_id)
        assert {usage.request_id for usage in page} == {"lean", "orm"}
        if db.engine.dialect.name == "sqlite":
            with sqlite3.connect(db.engine.url.database or "") as raw:
                for table, column in (("holds", "created_at"), ("holds", "closed_at"), ("usage_records", "created_at"),
                                      ("ledger_entries", "created_at"), ("accounts", "updated_at")):
                    for (value,) in raw.execute(f"SELECT {column} FROM {table}"):  # noqa: S608
                        assert _SQLITE_DATETIME.match(value), f"{table}.{column} stored as {value!r}"


async def test_lean_errors_are_sqlalchemy_errors_and_change_nothing(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        store = Store(db)
        key = await funded_key(store, 10_000)
        ledger = Ledger(db, instance_id="lean-errors")
        ids = {"account_id": key.account_id, "api_key_id": key.key_id}
        await ledger.hold(request_id="twice", amount_micros=100, **ids)
        with pytest.raises(GatewayError) as twice:  # the INSERT's IntegrityError, mapped
            await ledger.hold(request_id="twice", amount_micros=100, **ids)
        assert twice.value.reason == Reason.ALREADY_EXISTS
        assert (await store.get_account(key.account_id)).held_micros == 100  # the failed hold rolled back

        def violate_check(lean: LeanConnection) -> None:
            lean.execute(hold_sql._RECORD_CHARGE, {"b_request_id": "twice", "b_charged": 101, "b_balance_after": 0})

        with pytest.raises(IntegrityError):  # CHECK charged <= amount, raised as SQLAlchemy's exception
            await db.run_lean(violate_check)
        hold = await store.get_hold("twice")
        assert hold is not None and hold.charged_micros == 0

        def violate_check_unawaited(lean: LeanConnection) -> None:
            with lean.unawaited():  # PostgreSQL's pipeline: the error comes at the block's end, still SQLAlchemy's
                lean.count(hold_sql._LEAN_DEBIT_KEY, (key.key_id, 0, 100))
                lean.count(hold_sql._LEAN_RECORD_CHARGE, ("twice", 101, 0))

        with pytest.raises(IntegrityError):
            await db.run_lean(violate_check_unawaited)
        hold = await store.get_hold("twice")
        assert hold is not None and hold.charged_micros == 0
        api_key = await store.get_api_key(key.key_id)
        assert api_key is not None and api_key.held_micros == 100  # the statement before it rolled back too


async def test_release_through_a_session_runs_the_same_statements(database_url: str) -> None:
    """The orphan sweep releases inside a Session's transaction: same SQL, same rows, exactly once."""
    async with await Database.open(database_url) as db:
        store = Store(db)
        key = await funded_key(store, 5_000)
        ledger = Ledger(db, instance_id="session-release")
        hold = await ledger.hold(
            request_id="wrapped", account_id=key.account_id, api_key_id=key.key_id, amount_micros=2_000, model="m"
        )

        def release_and_read(session: Session) -> tuple[bool, Any]:
            released = hold_sql.release_hold(session, "wrapped")
            record = hold_sql.get_hold(session, "wrapped")
            assert record is not None and record.closed_at is not None and record.closed_at <= db_now(session)
            return released, record

        released, record = await db.run(release_and_read, write=True)
        assert released is True and record.status == "released" and record.charged_micros == 0
        assert record.balance_after_micros == 5_000
        assert await db.run(lambda session: hold_sql.release_hold(session, "wrapped"), write=True) is False
        replayed = await ledger.settle(hold, outcome(500))  # the late settle gets the release back, uncharged
        assert (replayed.charged_micros, replayed.released_micros, replayed.replayed) == (0, 2_000, True)
        usage = await store.get_usage_record("wrapped")
        assert usage is not None and usage.status == "abandoned" and usage.model == "m" and usage.provider == "unknown"
        account = await store.get_account(key.account_id)
        assert (account.balance_micros, account.held_micros) == (5_000, 0)
        with Session(db.engine) as session, session.begin():
            lean = lean_connection(session)
            assert lean.first(text("SELECT 1"), {}) == (1,)


# --- durability on SQLite -------------------------------------------------------------------


def _trace_statements(db: Database) -> list[str]:
    """Every statement SQLite runs on the pool's connections from now on."""
    statements: list[str] = []

    def trace(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    event.listen(db.engine, "connect", trace)
    db.engine.dispose()  # connections opened before the listener have no trace
    return statements


def _trace_wal_syncs(monkeypatch: pytest.MonkeyPatch, statements: list[str]) -> list[str]:
    """Every sync the writer makes through WalSync (fdatasync of the WAL, fsync of its directory), as the
    path of the file synced; the WAL's marked in statements too, as "sync <name>"."""
    synced: list[str] = []

    def traced(real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            real(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            synced.append(path)
            if not Path(path).is_dir():  # the directory is synced once, when the WAL file is opened
                statements.append(f"sync {Path(path).name}")

        return sync

    monkeypatch.setattr(wal_sync.os, "fsync", traced(os.fsync))
    monkeypatch.setattr(wal_sync.os, "fdatasync", traced(os.fdatasync))
    return synced


async def test_only_hold_only_transactions_commit_without_fsync(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's connection runs at NORMAL; every group with anything but holds fsyncs the WAL after COMMIT."""
    async with await Database.open(f"sqlite:///{tmp_path}/durability.db") as db:
        store = Store(db)
        key = await funded_key(store, 100_000)
        ledger = Ledger(db, instance_id="durability")
        await ledger.ensure_instance()
        ids = {"account_id": key.account_id, "api_key_id": key.key_id}
        statements = _trace_statements(db)
        synced = _trace_wal_syncs(monkeypatch, statements)

        first = await ledger.hold(request_id="h1", amount_micros=100, **ids)
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        assert statements.index("PRAGMA synchronous=1") < statements.index("BEGIN IMMEDIATE")  # set up once
        assert synced == []  # a hold-only commit: NORMAL, no fsync
        statements.clear()

        await ledger.settle(first, outcome(50))
        assert statements[-2:] == ["COMMIT", "sync durability.db-wal"]  # the WAL made durable before the answer
        assert not any(s.startswith("PRAGMA synchronous") for s in statements)  # no switching per transaction
        statements.clear()

        replayed = await ledger.settle(first, outcome(50))  # writes nothing: nothing to fsync
        assert replayed.replayed and statements[-1] == "COMMIT"
        statements.clear()

        # A hold and a settle queued together share one transaction, which therefore is fsynced.
        second = await ledger.hold(request_id="h2", amount_micros=100, **ids)
        assert statements[-1] == "COMMIT"
        statements.clear()
        await asyncio.gather(ledger.hold(request_id="h3", amount_micros=100, **ids), ledger.settle(second, outcome(1)))
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        assert statements[-2:] == ["COMMIT", "sync durability.db-wal"]
        statements.clear()

        # Holds queued together share one commit without fsync.
        await asyncio.gather(*(ledger.hold(request_id=f"g{i}", amount_micros=100, **ids) for i in range(3)))
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        assert not any(s.startswith("sync") for s in statements)
        statements.clear()

        # Top-ups (and every other write) stay on the Session path, on pool connections at FULL.
        await store.top_up(key.account_id, 1, "durability-top-up")
        assert not any(s.startswith(("PRAGMA synchronous", "sync")) for s in statements)
        with db.engine.connect() as connection:  # the pool's other connections are all at FULL
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        wal = str(tmp_path / "durability.db-wal")
        assert synced == [str(tmp_path), wal, wal]  # its directory once, then the WAL per durable commit



async def test_the_writer_connection_returns_to_the_pool_at_full(tmp_path: Any) -> None:
    async with await Database.open(f"sqlite:///{tmp_path}/back.db") as db:
        key = await funded_key(Store(db), 1_000)
        ledger = Ledger(db, instance_id="back")
        await ledger.hold(request_id="h", account_id=key.account_id, api_key_id=key.key_id, amount_micros=10)
        writer_connection = db._writer_pooled.driver_connection
        assert writer_connection.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL while the writer has it
        await asyncio.to_thread(db._drop_writer_connection, invalidate=False)
        with db.engine.connect() as connection:  # LIFO pool: the connection just returned
            assert connection.connection.driver_connection is writer_connection
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2


async def test_a_connection_set_up_below_full_is_left_alone(tmp_path: Any) -> None:
    """A deployment (or test) that chose synchronous=OFF keeps it: relaxing never raises durability."""
    async with await Database.open(f"sqlite:///{tmp_path}/off.db") as db:

        def no_fsync(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            dbapi_connection.execute("PRAGMA synchronous=OFF")

        event.listen(db.engine, "connect", no_fsync)
        statements = _trace_statements(db)
        store = Store(db)
        key = await funded_key(store, 1_000)
        ledger = Ledger(db, instance_id="off")
        await ledger.hold(request_id="off", account_id=key.account_id, api_key_id=key.key_id, amount_micros=10)
        assert db._writer_wal is None  # nothing to fsync: the deployment chose no fsync
        assert not any(s.startswith("PRAGMA synchronous=") for s in statements if s != "PRAGMA synchronous=OFF")
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 0


_READ_HOLD = """
import sqlite3, sys
row = sqlite3.connect(sys.argv[1]).execute("SELECT status, amount_micros FROM holds WHERE request_id = 'seen'").fetchone()
print(row)
"""


async def test_a_relaxed_hold_is_visible_to_another_process_at_once(tmp_path: Any) -> None:
    path = tmp_path / "visible.db"
    async with await Database.open(f"sqlite:///{path}") as db:
        key = await funded_key(Store(db), 1_000)
        ledger = Ledger(db, instance_id="visible")
        await ledger.hold(request_id="seen", account_id=key.account_id, api_key_id=key.key_id, amount_micros=70)
        # Another process, while this one still runs and holds its connections open.
        seen = subprocess.run([sys.executable, "-c", _READ_HOLD, str(path)], capture_output=True, text=True, check=True)
        assert seen.stdout.strip() == "('open', 70)"


async def test_sqlite_time_is_the_machine_clock_in_milliseconds(tmp_path: Any) -> None:
    async with await Database.open(f"sqlite:///{tmp_path}/clock.db") as db:
        with Session(db.engine) as session:
            before = datetime.now(UTC)
            now = db_now(session)
            sqlite_text = session.connection().exec_driver_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").scalar()
            after = datetime.now(UTC)
        assert now.microsecond % 1000 == 0 and now.tzinfo is UTC
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= now <= after
        sqlite_now = datetime.fromisoformat(str(sqlite_text)).replace(tzinfo=UTC)
        assert abs((sqlite_now - now).total_seconds()) < 1  # the same clock SQLite's own 'now' reads


async def test_the_writes_of_one_sqlite_transaction_share_its_time(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group commit is one transaction, so its writes share one database time, read once; the next takes a new one."""
    async with await Database.open(f"sqlite:///{tmp_path}/group-time.db") as db:
        store = Store(db)
        key = await funded_key(store, 10_000)
        ledger = Ledger(db, instance_id="group-time")
        await ledger.ensure_instance()
        ids = {"account_id": key.account_id, "api_key_id": key.key_id}
        statements = _trace_statements(db)
        reads: list[datetime] = []

        def counted_now() -> datetime:
            reads.append(real_now())
            return reads[-1]

        real_now = clock.sqlite_now
        monkeypatch.setattr(clock, "sqlite_now", counted_now)
        together = [f"together-{index}" for index in range(4)]
        held = await asyncio.gather(*(ledger.hold(request_id=request_id, amount_micros=10, **ids) for request_id in together))
        assert statements.count("COMMIT") == 1 and len(reads) == 1  # one transaction for the four, one time
        await asyncio.sleep(0.005)  # SQLite's time has milliseconds: the next transaction's differs
        settled = await asyncio.gather(*(ledger.settle(hold, outcome(5)) for hold in held[:2]))
        assert statements.count("COMMIT") == 2 and len(reads) == 2
        assert all(not settlement.replayed for settlement in settled)
        monkeypatch.undo()
        rows = [await store.get_hold(request_id) for request_id in together]
        assert {hold.created_at for hold in rows if hold is not None} == {reads[0]}
        assert {hold.closed_at for hold in rows[:2] if hold is not None} == {reads[1]} and reads[1] > reads[0]


async def test_a_group_that_cannot_begin_fails_its_callers_and_its_connection_is_replaced(tmp_path: Any) -> None:
    path = tmp_path / "busy.db"
    async with await Database.open(f"sqlite:///{path}") as db:

        def short_wait(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            dbapi_connection.execute("PRAGMA busy_timeout=50")

        event.listen(db.engine, "connect", short_wait)
        db.engine.dispose()
        key = await funded_key(Store(db), 1_000)
        ledger = Ledger(db, instance_id="busy")
        ids = {"account_id": key.account_id, "api_key_id": key.key_id}
        await ledger.hold(request_id="before", amount_micros=10, **ids)
        writer_connection = db._writer_pooled.driver_connection  # the writer thread's own connection
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock past the busy timeout
        try:
            with pytest.raises(OperationalError, match="locked"):  # SQLAlchemy's exception, as on the Session path
                await ledger.hold(request_id="blocked", amount_micros=10, **ids)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):  # discarded: never serves another write
            writer_connection.execute("SELECT 1")
        await ledger.hold(request_id="after", amount_micros=10, **ids)
        assert await Store(db).get_hold("blocked") is None
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2


async def test_a_failing_write_in_a_group_rolls_back_alone(tmp_path: Any) -> None:
    """Writes queued together share a transaction without savepoints; one that fails changes nothing of its own."""
    async with await Database.open(f"sqlite:///{tmp_path}/group.db") as db:
        store = Store(db)
        key = await funded_key(store, 1_000)
        other = await funded_key(store, 1_000)  # a key of another account
        ledger = Ledger(db, instance_id="group")
        ids = {"account_id": key.account_id, "api_key_id": key.key_id}
        await ledger.hold(request_id="taken", amount_micros=100, **ids)
        statements = _trace_statements(db)

        async def outcome_of(call: Any) -> str:
            try:
                await call
            except GatewayError as error:
                return error.reason.name
            return "ok"

        # The three cannot be held together (their sum does not fit): that attempt is rolled back to its
        # savepoint and each runs alone. A refusal by its first statement changes nothing, so no write
        # needs a savepoint of its own, and the rest commit together.
        clean = await asyncio.gather(
            outcome_of(ledger.hold(request_id="a", amount_micros=200, **ids)),
            outcome_of(ledger.hold(request_id="too-much", amount_micros=10_000, **ids)),
            outcome_of(ledger.hold(request_id="b", amount_micros=300, **ids)),
        )
        assert clean == ["ok", "INSUFFICIENT_BALANCE", "ok"]
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        assert statements.count("ROLLBACK TO tollgate_together") == 1
        assert not any(s.startswith("SAVEPOINT tollgate_write") for s in statements)
        statements.clear()

        # A duplicate request_id and a key of another account fail after the account's row was
        # updated: the group is run again with a savepoint per write, and only they roll back.
        dirty = await asyncio.gather(
            outcome_of(ledger.hold(request_id="c", amount_micros=50, **ids)),
            outcome_of(ledger.hold(request_id="taken", amount_micros=70, **ids)),
            outcome_of(ledger.hold(request_id="wrong-key", amount_micros=80, account_id=key.account_id,
                                   api_key_id=other.key_id)),
            outcome_of(ledger.hold(request_id="d", amount_micros=60, **ids)),
        )
        assert dirty == ["ok", "ALREADY_EXISTS", "NOT_FOUND", "ok"]
        assert statements.count("COMMIT") == 1 and statements.count("SAVEPOINT tollgate_write") == 4
        assert statements.count("ROLLBACK TO tollgate_write") == 2
        account = await store.get_account(key.account_id)
        assert account.held_micros == 100 + 200 + 300 + 50 + 60  # nothing of the refused ones
        for request_id in ("a", "b", "c", "d"):
            assert await store.get_hold(request_id) is not None
        assert await store.get_hold("wrong-key") is None and await store.get_hold("too-much") is None
        taken = await store.get_hold("taken")
        assert taken is not None and taken.amount_micros == 100


async def test_a_sqlite_settlement_records_its_charge_in_the_closing_update(tmp_path: Any) -> None:
    """On SQLite the close, the charge and the balance after it are one UPDATE of the hold (_CLOSE_CHARGED)."""
    async with await Database.open(f"sqlite:///{tmp_path}/fold.db") as db:
        key = await funded_key(Store(db), 10_000)
        ledger = Ledger(db, instance_id="fold")
        ids = {"account_id": key.account_id, "api_key_id": key.key_id}
        statements = _trace_statements(db)
        for request_id, cost, charged in (("under", 1_234, 1_234), ("over", 9_999, 3_000), ("negative", -5, 0)):
            hold = await ledger.hold(request_id=request_id, amount_micros=3_000, **ids)
            statements.clear()
            settlement = await ledger.settle(hold, outcome(cost))
            updates_of_holds = [s for s in statements if s.startswith("UPDATE holds")]
            assert len(updates_of_holds) == 1 and "charged_micros" in updates_of_holds[0]
            assert settlement.charged_micros == charged
            stored = await db.run(lambda session, r=request_id: session.get(Hold, r))
            assert stored is not None
            assert (stored.charged_micros, stored.balance_after_micros) == (charged, settlement.balance_after_micros)
        assert (await Store(db).get_account(key.account_id)).balance_micros == 10_000 - 1_234 - 3_000


async def test_sqlite_money_statements_return_no_rows_but_the_closed_hold(tmp_path: Any) -> None:
    """On SQLite a RETURNING clause costs more than the rest of these UPDATEs: a hold and a settlement use none,
    and read back only the closed hold, by its key. The balance after each step is still ledgered exactly."""
    async with await Database.open(f"sqlite:///{tmp_path}/no-returning.db") as db:
        store = Store(db)
        key = await funded_key(store, 10_000)
        ledger = Ledger(db, instance_id="no-returning")
        await ledger.ensure_instance()
        statements = _trace_statements(db)
        hold = await ledger.hold(request_id="r", account_id=key.account_id, api_key_id=key.key_id, amount_micros=700)
        settlement = await ledger.settle(hold, outcome(250))
        money = [s for s in statements if s.split(" ", 1)[0] in ("UPDATE", "INSERT", "SELECT")]
        assert money and not any("RETURNING" in s for s in money)
        assert [s for s in money if s.startswith("SELECT")] == [next(s for s in money if s.startswith("SELECT holds."))]
        assert settlement.balance_after_micros == 10_000 - 250 and settlement.charged_micros == 250
        entries = await db.run(
            lambda session: [
                (entry.kind, entry.amount_micros, entry.held_delta_micros, entry.balance_after_micros)
                for entry in session.exec(select(LedgerEntry).where(col(LedgerEntry.request_id) == "r")).all()
            ]
        )
        assert sorted(entries) == [("hold", 0, 700, 10_000), ("release", 0, -450, 9_750), ("settle", -250, -250, 9_750)]


async def test_a_balance_moved_between_close_and_debit_fails_the_settlement_whole(tmp_path: Any) -> None:
    """The balance _CLOSE_CHARGED reads must be the one the debit leaves; if not, nothing of the settlement stays."""
    async with await Database.open(f"sqlite:///{tmp_path}/moved.db") as db:
        store = Store(db)
        key = await funded_key(store, 10_000)
        ledger = Ledger(db, instance_id="moved")
        hold = await ledger.hold(request_id="r", account_id=key.account_id, api_key_id=key.key_id, amount_micros=500)
        with db.engine.begin() as connection:  # something that SQLite's one writer rules out: a second balance move
            connection.exec_driver_sql(
                "CREATE TRIGGER meddle AFTER UPDATE OF status ON holds BEGIN"
                " UPDATE accounts SET balance_micros = balance_micros + 1 WHERE id = NEW.account_id; END"
            )
        with pytest.raises(RuntimeError, match="recorded balance"):
            await ledger.settle(hold, outcome(200))
        assert (await store.get_account(key.account_id)).balance_micros == 10_000
        still = await store.get_hold("r")
        assert still is not None and still.status.value == "open"
        assert await store.get_usage_record("r") is None
        with db.engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER meddle")
        assert (await ledger.settle(hold, outcome(200))).balance_after_micros == 9_800
