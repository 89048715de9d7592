"""Migration 0004's partial indexes: upgrading a populated database, and the queries that must use them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from gateway_core.metering.ledger import Ledger
from gateway_core.store import Database, Store, migrate
from gateway_core.store.engine import make_engine
from gateway_core.store.instances import orphan_request_ids, prune_dead_instances
from gateway_core.store.ledger_entries import find_top_up
from tests.ledger_support import check_invariants, entry_kinds, funded_key, make_stale, outcome

PREVIOUS_HEAD = "0003"


@contextmanager
def engine_of(url: str) -> Iterator[Engine]:
    engine = make_engine(url, pool_size=1)
    try:
        yield engine
    finally:
        engine.dispose()


def money_rows(connection: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row that carries money or its history, in a stable order."""
    queries = {
        "accounts": "SELECT id, balance_micros, held_micros, budget_spent_micros FROM accounts ORDER BY id",
        "api_keys": "SELECT id, spent_micros, held_micros FROM api_keys ORDER BY id",
        "ledger_entries": "SELECT id, account_id, kind, amount_micros, held_delta_micros, balance_after_micros,"
        " request_id, note FROM ledger_entries ORDER BY id",
        "holds": "SELECT request_id, status, amount_micros, charged_micros, balance_after_micros FROM holds"
        " ORDER BY request_id",
        "usage_records": "SELECT request_id, cost_micros, status FROM usage_records ORDER BY request_id",
    }
    return {name: [tuple(row) for row in connection.exec_driver_sql(sql)] for name, sql in queries.items()}


async def populate(url: str) -> None:
    """Money in every state a live database has: settled, released, open, and an orphan of a dead core."""
    async with await Database.open(url, migrate=False) as db:
        store = Store(db)
        funded = await funded_key(store, 1_000_000)
        await store.top_up(funded.account_id, 5_000, "second-top-up", note="more")
        ids = {"account_id": funded.account_id, "api_key_id": funded.key_id}
        live, dead = Ledger(db, instance_id="live"), Ledger(db, instance_id="dead")
        for index, cost in enumerate((0, 700, 1_000)):  # release only, settle + release, settle only
            await live.settle(await live.hold(request_id=f"settled-{index}", amount_micros=1_000, **ids), outcome(cost))
        await live.hold(request_id="open-live", amount_micros=2_000, **ids)
        await dead.hold(request_id="open-dead", amount_micros=3_000, **ids, model="m", provider="mock")
        make_stale(db.engine, "dead")


async def serve_after_upgrade(url: str, before: dict[str, list[tuple[Any, ...]]]) -> Any:
    """The upgraded database serves: a retried top-up credits once, the orphan goes, a new hold settles.

    before is money_rows() of the populated database; returns check_invariants' snapshot afterwards.
    """
    async with await Database.open(url) as db:
        store = Store(db)
        account_id, key_id = before["accounts"][0][0], before["api_keys"][0][0]
        balance = (await store.get_account(account_id)).balance_micros
        await store.top_up(account_id, 5_000, "second-top-up", note="more")
        assert (await store.get_account(account_id)).balance_micros == balance
        live = Ledger(db, instance_id="live")
        assert await live.release_orphans(stale_after_seconds=60) == 1
        hold = await live.hold(request_id="after", account_id=account_id, api_key_id=key_id, amount_micros=10)
        await live.settle(hold, outcome(4))
    with engine_of(url) as engine:
        snapshot = check_invariants(engine)
    assert snapshot.holds["open-dead"] == "released"
    assert snapshot.holds["after"] == "settled"
    return snapshot


async def test_upgrading_a_populated_database_keeps_every_row_and_guard(database_url: str) -> None:
    migrate.upgrade(database_url, PREVIOUS_HEAD)
    await populate(database_url)
    with engine_of(database_url) as engine:
        with engine.connect() as connection:
            before = money_rows(connection)
        check_invariants(engine)

        migrate.upgrade(database_url, "0004")

        assert migrate.current_revision(database_url) == "0004"
        with engine.connect() as connection:
            assert money_rows(connection) == before
        check_invariants(engine)
        # The ledger is still append-only (SQLite's triggers went with the copied table and came back).
        for statement in ("UPDATE ledger_entries SET note = 'x'", "DELETE FROM ledger_entries"):
            with pytest.raises(IntegrityError), engine.begin() as connection:
                connection.exec_driver_sql(statement)
        # A top-up's request id is still unique in the database itself, not only in top_up()'s lookup.
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO ledger_entries (account_id, kind, amount_micros, held_delta_micros, balance_after_micros,"
                " request_id, note, created_at) SELECT account_id, kind, amount_micros, held_delta_micros,"
                " balance_after_micros, request_id, note, created_at FROM ledger_entries"
                " WHERE request_id = 'second-top-up'"
            )

    snapshot = await serve_after_upgrade(database_url, before)
    assert snapshot.holds["open-live"] == "open"
    with engine_of(database_url) as engine:
        assert entry_kinds(engine, "open-dead") == {"hold": 1, "release": 1}
        assert entry_kinds(engine, "after") == {"hold": 1, "settle": 1, "release": 1}


async def test_downgrade_restores_the_full_indexes(database_url: str) -> None:
    migrate.upgrade(database_url, PREVIOUS_HEAD)
    await populate(database_url)
    migrate.upgrade(database_url)
    with engine_of(database_url) as engine:
        with engine.connect() as connection:
            before = money_rows(connection)
        with engine.begin() as connection:
            config = migrate.alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, PREVIOUS_HEAD)
        with engine.connect() as connection:
            assert money_rows(connection) == before
        # The full constraint is back: a second SETTLE entry of one request is refused again.
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO ledger_entries (account_id, kind, amount_micros, held_delta_micros, balance_after_micros,"
                " request_id, note, created_at) SELECT account_id, kind, amount_micros, held_delta_micros,"
                " balance_after_micros, request_id, note, created_at FROM ledger_entries"
                " WHERE request_id = 'settled-1' AND kind = 'settle'"
            )
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM ledger_entries")
    migrate.upgrade(database_url, "0004")
    assert migrate.current_revision(database_url) == "0004"


def test_only_open_holds_and_non_request_entries_are_indexed(tmp_path: Any) -> None:
    """What the migration is for: closing a hold and writing its entries touch no ever-growing index."""
    url = f"sqlite:///{tmp_path / 'indexes.db'}"
    migrate.upgrade(url, "0004")  # 0005 spells the ledger's predicate without IN (test_money_predicates.py)
    with engine_of(url) as engine, engine.connect() as connection:
        definitions = {
            str(name): str(sql)
            for name, sql in connection.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
        autoindexes = {
            name for (name,) in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('holds', 'ledger_entries')"
            )
        }
    assert definitions["ix_holds_open_instance_id"].endswith("WHERE status = 'open'")
    assert definitions["uq_ledger_entries_kind_request_id"].endswith("WHERE kind NOT IN ('hold', 'settle', 'release')")
    assert "ix_holds_status_instance_id" not in autoindexes
    # Left: the holds' primary key and the two indexes above, and the ledger's per-account listing.
    assert autoindexes == {
        "sqlite_autoindex_holds_1",
        "ix_holds_open_instance_id",
        "uq_ledger_entries_kind_request_id",
        "ix_ledger_entries_account_id_id",
    }


async def test_the_sweep_and_top_up_lookups_use_the_partial_indexes(tmp_path: Any) -> None:
    """A partial index serves only queries that repeat its predicate: a plain `status = ?` would scan every hold."""
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    migrate.upgrade(url)
    await populate(url)
    with engine_of(url) as engine, Session(engine) as session:
        plans: list[str] = []

        def explain(_conn: Any, cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
            rows = cursor.connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans.extend(str(row[3]) for row in rows)

        event.listen(engine, "before_cursor_execute", explain)
        assert orphan_request_ids(session, "live", 60, 10) == ["open-dead"]
        assert any("USING INDEX ix_holds_open_instance_id" in plan for plan in plans), plans
        plans.clear()
        prune_dead_instances(session)
        assert any("USING INDEX ix_holds_open_instance_id" in plan for plan in plans), plans
        plans.clear()
        assert find_top_up(session, "second-top-up") is not None
        assert any("USING INDEX uq_ledger_entries_kind_request_id" in plan for plan in plans), plans
        assert not any(plan.startswith("SCAN ledger_entries") for plan in plans), plans
        session.rollback()
