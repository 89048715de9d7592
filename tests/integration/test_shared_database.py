"""Several cores on one database: schema upgrades once, one orphan-sweep leader, `tollgate migrate`, pool settings."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlmodel import Session

from gateway_core.cli import main
from gateway_core.config import parse_settings
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.reconciler import Reconciler
from gateway_core.store import Database, HoldStatus, Store, migrate
from gateway_core.store.engine import make_engine
from gateway_core.store.holds import get_hold
from gateway_core.store.leader import LeaderLock
from tests.ledger_support import check_invariants, funded_key, make_stale
from tests.postgres_support import PostgresServer

HEAD = "0005"
_TERMINATE_LOCK_HOLDERS = (
    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def test_replicas_migrating_at_once_upgrade_the_schema_once(database_url: str) -> None:
    """Without the advisory lock, concurrent CREATE TABLEs on PostgreSQL fail with duplicate errors."""
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def upgrade() -> None:
        try:
            start.wait()
            migrate.upgrade(database_url)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert migrate.current_revision(database_url) == HEAD


def test_migrate_command_upgrades_and_reports_the_revision(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "tollgate.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\nmigrate_on_start = false\n')
    assert migrate.current_revision(database_url) is None
    first = CliRunner().invoke(main, ["migrate", "--config", str(config)])
    assert first.exit_code == 0, first.output
    assert f"at revision {HEAD} (was empty)" in first.output
    again = CliRunner().invoke(main, ["migrate", "--config", str(config)])
    assert again.exit_code == 0 and f"at revision {HEAD} (was {HEAD})" in again.output
    assert migrate.current_revision(database_url) == HEAD


def test_migrate_command_prints_sql_without_touching_the_database(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "tollgate.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n')
    result = CliRunner().invoke(main, ["migrate", "--sql", "--config", str(config)])
    if database_url.startswith("sqlite"):
        assert result.exit_code == 2 and "run `tollgate migrate` for SQLite" in result.output
    else:
        assert result.exit_code == 0 and "CREATE TABLE accounts" in result.output
        assert "CREATE TRIGGER ledger_entries_no_update_or_delete" in result.output
    assert migrate.current_revision(database_url) is None


def test_migrate_command_reports_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    config = tmp_path / "tollgate.toml"
    socket_dir = tmp_path / "no-server"
    config.write_text(f'[database]\nurl = "postgresql+psycopg://u:s3cret-pw@/db?host={socket_dir}"\n')
    result = CliRunner().invoke(main, ["migrate", "--config", str(config)])
    assert result.exit_code == 1
    assert "migrate failed: OperationalError" in result.output and "s3cret-pw" not in result.output


async def test_a_core_with_migrate_on_start_off_refuses_nothing_but_does_not_migrate(database_url: str) -> None:
    async with await Database.open(database_url, migrate=False):
        pass
    assert migrate.current_revision(database_url) is None


def test_pool_settings_reach_the_postgresql_engine(postgres: PostgresServer) -> None:
    settings = parse_settings(
        {"database": {"url": postgres.url("postgres"), "pool_size": 3, "max_overflow": 2, "pool_timeout_seconds": 1.5}},
        {},
    )
    engine = make_engine(
        settings.database_url,
        settings.database.pool_size,
        max_overflow=settings.database.max_overflow,
        pool_timeout=settings.database.pool_timeout_seconds,
    )
    try:
        assert (engine.pool.size(), engine.pool.timeout()) == (3, 1.5)  # type: ignore[attr-defined]
        # 3 + 2 connections open; a sixth waits pool_timeout and fails instead of queueing forever.
        connections = [engine.connect() for _ in range(5)]
        with pytest.raises(Exception, match="QueuePool limit"):
            engine.connect()
        for connection in connections:
            connection.close()
    finally:
        engine.dispose()


# --- the orphan-sweep leader ------------------------------------------------------------------


async def test_only_one_core_leads_on_postgresql_and_the_lead_passes_on(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    async with await Database.open(url) as db:
        first, second = LeaderLock(db.engine), LeaderLock(db.engine)
        try:
            assert await first.try_lead() and not await second.try_lead()
            assert await first.try_lead() and not await second.try_lead()  # sticky
            await first.close()  # a stopping core hands over at once
            assert await second.try_lead()
            # A leader whose session the server ends (a dead or partitioned core) loses the lead.
            third = LeaderLock(db.engine)
            with db.engine.connect() as connection, connection.begin():
                connection.execute(text(_TERMINATE_LOCK_HOLDERS))
            assert await _eventually(third)  # once the server has ended that session
            assert not await second.try_lead()
            await third.close()
            assert await second.try_lead()  # reconnects and takes it back
        finally:
            for lock in (first, second):
                await lock.close()


async def test_every_core_leads_on_sqlite(tmp_path: Path) -> None:
    async with await Database.open(f"sqlite:///{tmp_path / 'one.db'}") as db:
        first, second = LeaderLock(db.engine), LeaderLock(db.engine)
        assert await first.try_lead() and await second.try_lead()


async def test_only_the_leading_reconciler_releases_orphans(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        store = Store(db)
        key = await funded_key(store, 10_000)
        dead = Ledger(db, instance_id="dead-core")
        await dead.hold(request_id="orphan", account_id=key.account_id, api_key_id=key.key_id, amount_micros=4_000)
        make_stale(db.engine, "dead-core")
        other_replica = LeaderLock(db.engine)
        assert await other_replica.try_lead()  # another core leads (on SQLite: every core does)
        reconciler = Reconciler(
            Ledger(db, instance_id="core-a"), interval_seconds=0.1, stale_after_seconds=1.0, leader=LeaderLock(db.engine)
        )
        try:
            if db.engine.dialect.name == "postgresql":
                assert await reconciler.run_once() == 0
                assert await _hold_status(db, "orphan") == HoldStatus.OPEN
                await other_replica.close()  # the leader stops: the next pass here takes over
            assert await reconciler.run_once() == 1
            assert await _hold_status(db, "orphan") == HoldStatus.RELEASED
        finally:
            await reconciler.stop()
            await other_replica.close()
        check_invariants(db.engine)


async def _hold_status(db: Database, request_id: str) -> HoldStatus:
    def read(session: Session) -> HoldStatus:
        record = get_hold(session, request_id)
        assert record is not None
        return record.status

    return await db.run(read)


def test_leader_lock_is_released_when_its_process_dies(postgres: PostgresServer) -> None:
    """The SIGKILL case: the server frees a dead session's advisory lock, so another core leads."""
    url = postgres.create_database()
    script = (
        "import asyncio, sys, time\n"
        "from sqlalchemy import create_engine\n"
        "from gateway_core.store.leader import LeaderLock\n"
        f"lock = LeaderLock(create_engine({url!r}))\n"
        "print(asyncio.run(lock.try_lead()), flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "True"
        engine = make_engine(url)
        lock = LeaderLock(engine)
        try:
            assert not asyncio.run(lock.try_lead())
            process.kill()
            process.wait(timeout=10)
            assert asyncio.run(_eventually(lock)), "the lock of a killed process was not freed"
        finally:
            asyncio.run(lock.close())
            engine.dispose()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


async def _eventually(lock: LeaderLock) -> bool:
    for _ in range(100):
        if await lock.try_lead():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_sweep_and_a_late_settlement_on_one_account_do_not_deadlock(postgres: PostgresServer) -> None:
    """A late settlement locks its hold, then the account; the sweep must not hold that account meanwhile.

    One transaction for several orphans of one account (h1 then h2) would hold the account's row
    from h1 while waiting for h2, which the settlement holds while waiting for the account.
    """
    url = postgres.create_database()
    async with await Database.open(url) as db:
        key = await funded_key(Store(db), 10_000)
        dead = Ledger(db, instance_id="dead-core")
        for request_id in ("h1", "h2"):
            await dead.hold(request_id=request_id, account_id=key.account_id, api_key_id=key.key_id, amount_micros=1_000)
        make_stale(db.engine, "dead-core")
        sweeper = Ledger(db, instance_id="core-a")
        with db.engine.connect() as settlement:
            transaction = settlement.begin()
            # The settlement's first step: its hold's row (as settle_hold's conditional close locks it).
            settlement.execute(text("UPDATE holds SET closed_at = NULL WHERE request_id = 'h2'"))
            sweep = asyncio.create_task(sweeper.release_orphans(stale_after_seconds=1.0))
            await _until_waiting_on_a_lock(db)
            # Its second step: the account. Blocks forever (deadlock) if the sweep still holds it.
            await asyncio.to_thread(
                settlement.execute,
                text("UPDATE accounts SET updated_at = updated_at WHERE id = :a"),
                {"a": key.account_id},
            )
            transaction.commit()
        assert await asyncio.wait_for(sweep, timeout=30) == 2
        check_invariants(db.engine)


async def _until_waiting_on_a_lock(db: Database) -> None:
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
    for _ in range(200):
        with db.engine.connect() as connection:
            if connection.execute(query).scalar_one() > 0:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the sweep never waited for the settlement's hold")
