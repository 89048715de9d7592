"""An open hold's INSERT: its closing columns start NULL from the SQL itself, so no None is bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from gateway_core.metering.ledger import Ledger
from gateway_core.store import Database, Store, holds
from gateway_core.store.lean import statements_for
from tests.ledger_support import funded_key, outcome


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with await Database.open(database_url) as db:
        yield Store(db)


def test_an_open_holds_insert_binds_no_none(store: Store) -> None:
    request = holds.HoldRequest("r", "acct", "key", 10, "instance", model="m", provider="p", upstream_model="u")
    prepared = statements_for(store.db.engine.dialect).prepared(holds._LEAN_INSERT_HOLD)  # noqa: SLF001
    bound = prepared.bind(holds.hold_row(request, datetime(2026, 1, 2, tzinfo=UTC)))
    values = bound.values() if isinstance(bound, dict) else bound
    assert None not in list(values)


async def test_open_holds_alone_and_together_read_back_open_and_unclosed(store: Store) -> None:
    key = await funded_key(store, 100_000)
    ledger = Ledger(store.db, instance_id="open-rows")
    ids = {"account_id": key.account_id, "api_key_id": key.key_id}
    alone = await ledger.hold(request_id="alone", amount_micros=100, model="m", **ids)
    together = await asyncio.gather(*(ledger.hold(request_id=f"t{n}", amount_micros=100, **ids) for n in range(5)))
    for request_id in ["alone", *(f"t{n}" for n in range(5))]:
        record = await store.get_hold(request_id)
        assert record is not None
        assert (record.status, record.amount_micros, record.charged_micros) == ("open", 100, 0)
        assert record.balance_after_micros is None and record.closed_at is None
        assert record.created_at.tzinfo is UTC
    settled = await ledger.settle(alone, outcome(40))
    assert settled.charged_micros == 40
    record = await store.get_hold("alone")
    assert record is not None and record.balance_after_micros == settled.balance_after_micros
    assert record.closed_at is not None and record.model == "m"
    await asyncio.gather(*(ledger.settle(hold, outcome(1)) for hold in together))
