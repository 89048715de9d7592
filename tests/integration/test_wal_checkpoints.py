"""WAL checkpoints on their own thread (store/checkpointer.py): off the writer's commits, WAL bounded, crash-safe."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

from gateway_core.metering.ledger import Ledger
from gateway_core.store import Database, Store
from gateway_core.store.checkpointer import BACKSTOP_PAGES, WalCheckpointer
from tests.ledger_support import check_invariants, child, entry_kinds, funded_key, outcome

PAGE = 4096


def test_it_checkpoints_after_every_n_writes_and_when_writes_pause(tmp_path: Path) -> None:
    path = str(tmp_path / "plain.db")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # only the checkpointer copies pages back
    writer.execute("CREATE TABLE t (x BLOB)")
    checkpointer = WalCheckpointer(path, every_writes=10, idle_seconds=0.2)
    try:
        for _ in range(9):
            writer.execute("INSERT INTO t VALUES (randomblob(3000))")
            checkpointer.wrote(1)
        time.sleep(0.05)
        assert checkpointer.passes == 0  # below every_writes, and writes have not paused long enough
        writer.execute("INSERT INTO t VALUES (randomblob(3000))")
        checkpointer.wrote(1)
        _wait_for(lambda: checkpointer.passes == 1)
        assert os.path.getsize(path) >= 10 * 3000  # the rows reached the database file
        writer.execute("INSERT INTO t VALUES (randomblob(3000))")
        checkpointer.wrote(1)  # one write, then a pause: the idle pass copies it too
        _wait_for(lambda: checkpointer.passes == 2)
        time.sleep(0.5)
        assert checkpointer.passes == 2  # nothing written since: no more passes
    finally:
        checkpointer.stop()
        checkpointer.stop()  # idempotent
        writer.close()


async def test_the_wal_stays_bounded_under_sustained_load_without_the_writer_checkpointing(tmp_path: Path) -> None:
    """The thread does the checkpoints; the writer's own automatic one is only a backstop that bounds the WAL.

    Under writes without a pause a background checkpoint never quite catches up
    (frames keep coming while it copies), so SQLite cannot start the WAL over
    from the top: the backstop, inside the commit that crosses it, copies the
    little that is left and lets the next commit restart the WAL.
    """
    async with await Database.open(f"sqlite:///{tmp_path}/load.db") as db:
        store = Store(db)
        key = await funded_key(store, 10**9)
        ledger = Ledger(db, instance_id="load")
        await ledger.ensure_instance()
        wal = tmp_path / "load.db-wal"
        largest = 0

        async def requests(worker: int) -> None:
            nonlocal largest
            for index in range(150):
                hold = await ledger.hold(
                    request_id=f"w{worker}-{index}", account_id=key.account_id, api_key_id=key.key_id, amount_micros=9
                )
                await ledger.settle(hold, outcome(index % 10))
                largest = max(largest, wal.stat().st_size)

        await asyncio.gather(*(requests(worker) for worker in range(8)))  # 1,200 requests, ~20k WAL pages
        writer_connection = db._writer_pooled.driver_connection
        assert writer_connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (BACKSTOP_PAGES,)
        checkpointer = db._checkpointer
        assert checkpointer is not None and checkpointer.passes >= 10
        # At most the backstop plus one group's commit (128 writes of ~10 pages) past it.
        assert largest <= (BACKSTOP_PAGES + 128 * 12) * (PAGE + 24), f"the WAL grew to {largest} bytes"
        check_invariants(db.engine)
        await asyncio.to_thread(db._drop_writer_connection, invalidate=False)
        with db.engine.connect() as connection:  # back in the pool with SQLite's own checkpoints on
            assert connection.connection.driver_connection is writer_connection
            assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    assert checkpointer.passes > 0 and not checkpointer._thread.is_alive()  # close() ended the thread


async def test_a_core_killed_while_checkpointing_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/churn.db"
    async with await Database.open(url) as db:
        key = await funded_key(Store(db), 10**9, name="churn")
    acknowledged: list[dict[str, object]] = []
    with child("churn", url, key.account_id, key.key_id) as churn:
        try:
            assert churn.stdout is not None
            while len(acknowledged) < 300:  # a checkpoint runs after every write: the kill lands mid-way of many
                acknowledged.append(json.loads(await asyncio.to_thread(churn.stdout.readline)))
            churn.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(churn.wait, 30) == -signal.SIGKILL
        finally:
            if churn.poll() is None:
                churn.kill()
    assert int(str(acknowledged[-1]["checkpoints"])) > 50
    async with await Database.open(url) as db:
        snapshot = check_invariants(db.engine)
        for settled in acknowledged:
            request_id = str(settled["request_id"])
            assert snapshot.holds[request_id] == "settled"
            usage = await Store(db).get_usage_record(request_id)
            assert usage is not None and usage.cost_micros == settled["charged"]
        assert entry_kinds(db.engine, str(acknowledged[-1]["request_id"]))["settle"] <= 1


def _wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
