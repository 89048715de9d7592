"""New SQLite databases get 2 KiB pages; an existing database keeps the page size it was made with."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway_core.metering.ledger import Ledger
from gateway_core.store import Database, Store
from gateway_core.store.engine import SQLITE_PAGE_SIZE, make_engine
from tests.ledger_support import check_invariants, funded_key, outcome


def page_size(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("PRAGMA page_size").fetchone()[0])
    finally:
        connection.close()


async def serve_pairs(url: str, prefix: str) -> None:
    async with await Database.open(url) as db:
        key = await funded_key(Store(db), 1_000_000)
        ledger = Ledger(db, instance_id=prefix)
        ids = {"account_id": key.account_id, "api_key_id": key.key_id}
        held = await asyncio.gather(*(ledger.hold(request_id=f"{prefix}-{n}", amount_micros=1_000, **ids) for n in range(6)))
        await asyncio.gather(*(ledger.settle(hold, outcome(10 * n)) for n, hold in enumerate(held)))
        alone = await ledger.hold(request_id=f"{prefix}-alone", amount_micros=1_000, **ids)
        await ledger.settle(alone, outcome(999))


async def test_a_new_database_gets_the_configured_page_size(tmp_path: Path) -> None:
    assert SQLITE_PAGE_SIZE == 2048
    path = tmp_path / "new.db"
    await serve_pairs(f"sqlite:///{path}", "new")
    assert page_size(path) == SQLITE_PAGE_SIZE
    engine = make_engine(f"sqlite:///{path}", pool_size=1)
    try:
        check_invariants(engine)
    finally:
        engine.dispose()


async def test_an_existing_database_keeps_its_page_size_and_serves(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    made = sqlite3.connect(path)
    made.execute("PRAGMA page_size=4096")
    made.execute("PRAGMA journal_mode=WAL")
    made.close()
    await serve_pairs(f"sqlite:///{path}", "old")
    assert page_size(path) == 4096
    engine = make_engine(f"sqlite:///{path}", pool_size=1)
    try:
        check_invariants(engine)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").all() == [("ok",)]
    finally:
        engine.dispose()
