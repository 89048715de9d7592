"""Usage totals per UTC day and model (AdminService SummarizeUsage) on SQLite and PostgreSQL:
each backend has its own day arithmetic, so both are checked against the same records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from gateway_core.metering.ledger import Ledger
from gateway_core.store import Database, Store
from gateway_core.store.models import UsageRecord
from gateway_core.store.usage_summary import DailyUsage
from tests.ledger_support import funded_key, outcome


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    db = await Database.open(database_url)
    yield Store(db)
    await db.close()


async def used(store: Store, ledger: Ledger, account_id: str, key_id: str, request_id: str, model: str,
               cost: int, at: datetime) -> None:
    """One settled request of model costing cost, recorded as admitted at `at`."""
    hold = await ledger.hold(request_id=request_id, account_id=account_id, api_key_id=key_id, amount_micros=10_000)
    await ledger.settle(hold, outcome(cost, model=model, prompt_tokens=3, completion_tokens=4))
    table = UsageRecord.__table__  # type: ignore[attr-defined]
    with store.db.engine.begin() as connection:
        connection.execute(update(table).where(table.c.request_id == request_id).values(created_at=at))


async def test_totals_group_by_utc_day_and_model_and_respect_the_window(store: Store) -> None:
    ledger = Ledger(store.db, instance_id="core-summary")
    await ledger.ensure_instance()
    key = await funded_key(store, 1_000_000)
    other = await funded_key(store, 1_000_000, name="other")
    late = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    # 00:30 on March 2nd in UTC is still March 1st in New York: the day must be the UTC one.
    early = datetime(2026, 3, 2, 0, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=-5)))
    await used(store, ledger, key.account_id, key.key_id, "r1", "alpha", 100, late)
    await used(store, ledger, key.account_id, key.key_id, "r2", "alpha", 50, late - timedelta(hours=5))
    await used(store, ledger, key.account_id, key.key_id, "r3", "beta", 7, late)
    await used(store, ledger, key.account_id, key.key_id, "r4", "alpha", 1, early)
    await used(store, ledger, other.account_id, other.key_id, "r5", "alpha", 1000, late)

    mine = await store.summarize_daily_usage(key.account_id)
    assert mine == [
        DailyUsage("2026-03-01", "alpha", 2, 6, 8, 150),
        DailyUsage("2026-03-01", "beta", 1, 3, 4, 7),
        DailyUsage("2026-03-02", "alpha", 1, 3, 4, 1),
    ]
    everyone = await store.summarize_daily_usage(None)
    assert everyone[0] == DailyUsage("2026-03-01", "alpha", 3, 9, 12, 1150)
    window = await store.summarize_daily_usage(
        key.account_id, start_time=datetime(2026, 3, 2, tzinfo=UTC), end_time=datetime(2026, 3, 3, tzinfo=UTC)
    )
    assert window == [DailyUsage("2026-03-02", "alpha", 1, 3, 4, 1)]
    assert await store.summarize_daily_usage(key.account_id, start_time=datetime(2027, 1, 1, tzinfo=UTC)) == []
