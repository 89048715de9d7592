"""Crash recovery: a core process SIGKILLed with money held; a survivor releases it once, loses nothing else.

The victim (tests/ledger_support.py, "victim") runs as a real process on the
shared database (a SQLite file, or PostgreSQL): it tops up, settles one request, holds another, reports
what was acknowledged, and is killed with SIGKILL mid-request.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

from sqlalchemy import text

from gateway_core.metering.ledger import Ledger
from gateway_core.metering.outcome import UsageStatus
from gateway_core.metering.reconciler import Reconciler
from gateway_core.store import Database, HoldStatus, Store
from tests.ledger_support import check_invariants, child, entry_kinds, funded_key

STALE_AFTER_SECONDS = 0.5


async def test_orphan_hold_of_a_killed_core_is_released_once_and_acknowledged_money_survives(database_url: str) -> None:
    url = database_url
    async with await Database.open(url) as db:
        store = Store(db)
        key = await funded_key(store, 0, name="crash")
        with child("victim", url, key.account_id, key.key_id) as victim:  # closes the pipes, reaps it
            try:
                assert victim.stdout is not None
                acknowledged = json.loads(await asyncio.to_thread(victim.stdout.readline))
                victim.send_signal(signal.SIGKILL)
                assert await asyncio.to_thread(victim.wait, 30) == -signal.SIGKILL
            finally:
                if victim.poll() is None:
                    victim.kill()
        assert acknowledged == {"charged": 1_200, "balance_after": 8_800}

        # The dead core's hold is still open, and a reconciler leaves it while the lease looks fresh.
        open_hold = await store.get_hold("victim-open")
        assert open_hold is not None and open_hold.status == HoldStatus.OPEN
        survivor = Ledger(db, instance_id="survivor")
        assert await survivor.release_orphans(stale_after_seconds=60) == 0

        reconciler = Reconciler(survivor, interval_seconds=0.1, stale_after_seconds=STALE_AFTER_SECONDS)
        await reconciler.start()
        try:
            deadline = time.monotonic() + 10
            while (await store.get_usage_record("victim-open")) is None:
                assert time.monotonic() < deadline, "the orphan hold was not released"
                await asyncio.sleep(0.05)
        finally:
            await reconciler.stop()

        record = await store.get_usage_record("victim-open")
        assert record is not None and record.status == UsageStatus.ABANDONED and record.estimated
        assert (record.model, record.provider, record.cost_micros, record.held_micros) == ("mock-chat", "mock", 0, 4000)
        released = await store.get_hold("victim-open")
        assert released is not None and released.status == HoldStatus.RELEASED
        # A second pass (or another replica) finds nothing more to do.
        assert await Ledger(db, instance_id="another").release_orphans(stale_after_seconds=0) == 0

        # Everything acknowledged before the kill is there, exactly once.
        assert entry_kinds(db.engine, "victim-top-up") == {"top_up": 1}
        assert entry_kinds(db.engine, "victim-settled") == {"hold": 1, "settle": 1, "release": 1}
        assert entry_kinds(db.engine, "victim-open") == {"hold": 1, "release": 1}
        account = await store.get_account(key.account_id)
        assert (account.balance_micros, account.held_micros) == (8_800, 0)  # INV-NOHOLD after quiesce
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT COUNT(*) FROM usage_records")).scalar_one() == 2
        check_invariants(db.engine)
