"""Migration 0005: the holds' status CHECK and the ledger's partial unique index without IN lists.

SQLite builds a temporary b-tree for every statement that evaluates an IN list
of three or more constants; these tests pin that the money path's statements
build none, and that upgrading (and downgrading) a populated database keeps
every row and every guard.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError

from gateway_core.metering.ledger import Ledger
from gateway_core.store import Database, Store, migrate
from tests.integration.test_money_indexes import engine_of, money_rows, populate, serve_after_upgrade
from tests.ledger_support import check_invariants, funded_key, make_stale, outcome

NEW_STATUS_CHECK = "CHECK (status = 'open' OR status = 'settled' OR status = 'released')"
OLD_STATUS_CHECK = "CHECK (status IN ('open', 'settled', 'released'))"


def assert_guards_hold(engine: Engine) -> None:
    """The status CHECK refuses an unknown status, on insert and on update; a top-up's request id is unique."""
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql("UPDATE holds SET status = 'lost' WHERE request_id = 'open-live'")
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO holds (request_id, account_id, api_key_id, amount_micros, status, instance_id, model,"
            " provider, upstream_model, charged_micros, balance_after_micros, created_at, closed_at)"
            " SELECT 'copy', account_id, api_key_id, amount_micros, 'Open', instance_id, model, provider,"
            " upstream_model, charged_micros, balance_after_micros, created_at, closed_at FROM holds"
            " WHERE request_id = 'open-live'"
        )
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO ledger_entries (account_id, kind, amount_micros, held_delta_micros, balance_after_micros,"
            " request_id, note, created_at) SELECT account_id, kind, amount_micros, held_delta_micros,"
            " balance_after_micros, request_id, note, created_at FROM ledger_entries"
            " WHERE request_id = 'second-top-up'"
        )
    # Every status the money path writes is still accepted (rolled back: the rows stay as they were).
    with engine.connect() as connection, connection.begin() as transaction:
        for status in ("settled", "released", "open"):
            changed = connection.exec_driver_sql(f"UPDATE holds SET status = '{status}' WHERE request_id = 'open-live'")
            assert changed.rowcount == 1
        transaction.rollback()


def sqlite_definitions(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return {
            str(name): str(sql)
            for name, sql in connection.exec_driver_sql("SELECT name, sql FROM sqlite_schema WHERE sql IS NOT NULL")
        }


async def test_upgrading_a_populated_database_keeps_every_row_and_guard(database_url: str) -> None:
    migrate.upgrade(database_url, "0004")
    await populate(database_url)
    with engine_of(database_url) as engine:
        with engine.connect() as connection:
            before = money_rows(connection)
        check_invariants(engine)
        # A connection open across the upgrade (another process's, say) must see the new schema too.
        with engine.connect() as old_connection:
            old_connection.exec_driver_sql("SELECT count(*) FROM holds").all()  # its schema is loaded
            old_connection.rollback()  # idle, as a pooled connection waits

            migrate.upgrade(database_url)

            assert migrate.current_revision(database_url) == "0005"
            with pytest.raises(IntegrityError):
                old_connection.exec_driver_sql("UPDATE holds SET status = 'lost' WHERE request_id = 'open-live'")
            old_connection.rollback()
        with engine.connect() as connection:
            assert money_rows(connection) == before
        check_invariants(engine)
        assert_guards_hold(engine)
        if engine.dialect.name == "sqlite":
            definitions = sqlite_definitions(engine)
            assert NEW_STATUS_CHECK in definitions["holds"] and " IN (" not in definitions["holds"]
            assert definitions["uq_ledger_entries_kind_request_id"].endswith(
                "WHERE kind <> 'hold' AND kind <> 'settle' AND kind <> 'release'"
            )
            with engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA integrity_check").all() == [("ok",)]

    await serve_after_upgrade(database_url, before)


async def test_downgrade_restores_the_in_lists(database_url: str) -> None:
    migrate.upgrade(database_url, "0004")
    await populate(database_url)
    migrate.upgrade(database_url)
    with engine_of(database_url) as engine:
        with engine.connect() as connection:
            before = money_rows(connection)
        with engine.begin() as connection:
            config = migrate.alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0004")
        assert migrate.current_revision(database_url) == "0004"
        with engine.connect() as connection:
            assert money_rows(connection) == before
        assert_guards_hold(engine)
        if engine.dialect.name == "sqlite":
            definitions = sqlite_definitions(engine)
            assert OLD_STATUS_CHECK in definitions["holds"] and NEW_STATUS_CHECK not in definitions["holds"]
            assert definitions["uq_ledger_entries_kind_request_id"].endswith(
                "WHERE kind NOT IN ('hold', 'settle', 'release')"
            )
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == "0005"


async def test_the_writers_money_statements_build_no_temporary_btree(tmp_path: Any) -> None:
    """Every statement the SQLite writer thread runs for holds, settlements and releases, alone and
    grouped: none opens an ephemeral table (an IN list's b-tree, a RETURNING's buffer). Once per group
    or sweep rather than per request, two may: a group's lookup of its holds by their request ids
    (an IN list of keys), and the orphan sweep's paged lookup (ORDER BY)."""
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    writer_sql: set[str] = set()

    def trace(sql: str) -> None:
        if threading.current_thread().name.startswith("tollgate-db-writer"):
            writer_sql.add(sql)

    async with await Database.open(url) as db:
        event.listen(db.engine, "checkout", lambda dbapi, _record, _proxy: dbapi.set_trace_callback(trace))
        store = Store(db)
        funded = await funded_key(store, 10_000_000)
        writer_sql.clear()  # the account's set-up (a top-up's RETURNING) is not the request path
        ids = {"account_id": funded.account_id, "api_key_id": funded.key_id}
        ledger, dead = Ledger(db, instance_id="live"), Ledger(db, instance_id="dead")
        # Alone, then enough at once that the writer runs them together (store/holds_together.py).
        await ledger.settle(await ledger.hold(request_id="alone", amount_micros=1_000, **ids), outcome(300))
        held = await asyncio.gather(*(ledger.hold(request_id=f"g{n}", amount_micros=1_000, **ids) for n in range(8)))
        await asyncio.gather(*(ledger.settle(hold, outcome(100 * n)) for n, hold in enumerate(held)))
        await dead.hold(request_id="orphan", amount_micros=500, **ids)
        make_stale(db.engine, "dead")
        assert await ledger.release_orphans(stale_after_seconds=60) == 1
    with engine_of(url) as engine:
        check_invariants(engine)
        statements = {
            sql for sql in writer_sql
            if sql.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "SELECT") and "ORDER BY" not in sql
            and "request_id IN (" not in sql
        }  # fmt: skip
        assert any(sql.startswith("UPDATE holds") for sql in statements), writer_sql
        assert any(sql.startswith("INSERT INTO usage_records") for sql in statements), writer_sql
        with engine.connect() as connection:
            for sql in statements:
                opcodes = [str(row[1]) for row in connection.exec_driver_sql(f"EXPLAIN {sql}")]
                assert "OpenEphemeral" not in opcodes, sql
