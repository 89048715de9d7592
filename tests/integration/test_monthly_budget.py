"""The monthly budget on a real SQLite file and a real PostgreSQL (Read Committed): decided by the hold's conditional UPDATE, across
processes, rolled over by that same UPDATE when the UTC month changes, never backwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from gateway_core.errors import GatewayError, Reason
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.outcome import Hold
from gateway_core.store import Database, Store
from gateway_core.store.accounts import AccountLimitsUpdate
from gateway_core.store.holds import BUDGET_USED_UP, budget_period
from tests.ledger_support import FundedKey, check_invariants, child, funded_key, outcome

HOLD = 1_000
BUDGET = 10 * HOLD


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    db = await Database.open(database_url)
    yield Store(db)
    await db.close()


@pytest.fixture
async def ledger(store: Store) -> Ledger:
    ledger = Ledger(store.db, instance_id="core-budget")
    await ledger.ensure_instance()
    return ledger


async def budgeted(store: Store, budget: int = BUDGET) -> FundedKey:
    key = await funded_key(store, 1_000_000, name="budgeted")
    await store.update_account(key.account_id, limits=AccountLimitsUpdate(monthly_budget_micros=budget))
    return key


def set_columns(store: Store, account_id: str, **values: int) -> None:
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    with store.db.engine.begin() as connection:
        connection.execute(text(f"UPDATE accounts SET {assignments} WHERE id = :id"), {**values, "id": account_id})


async def hold(ledger: Ledger, key: FundedKey, request_id: str, amount: int = HOLD) -> Hold:
    return await ledger.hold(request_id=request_id, account_id=key.account_id, api_key_id=key.key_id, amount_micros=amount)


async def test_a_herd_admits_exactly_the_budget_and_says_why_the_rest_failed(store: Store, ledger: Ledger) -> None:
    key = await budgeted(store)

    async def one(i: int) -> str:
        try:
            await hold(ledger, key, f"h{i}")
        except GatewayError as error:
            assert error.message == BUDGET_USED_UP
            return error.reason.value
        return "ADMITTED"

    results = Counter(await asyncio.gather(*(one(i) for i in range(30))))
    assert results == Counter({"ADMITTED": 10, "INSUFFICIENT_BALANCE": 20})
    account = await store.get_account(key.account_id)
    assert (account.budget_held_micros, account.budget_spent_micros, account.held_micros) == (BUDGET, 0, BUDGET)
    check_invariants(store.db.engine)


async def test_two_processes_racing_never_pass_the_budget(database_url: str) -> None:
    url = database_url
    async with await Database.open(url) as db:
        key = await budgeted(Store(db))
    outcomes: Counter[str] = Counter()
    with contextlib.ExitStack() as stack:
        processes = [
            stack.enter_context(child("herd", url, key.account_id, key.key_id, str(HOLD), "15", f"p{i}"))
            for i in range(2)
        ]
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            out, _ = process.communicate(timeout=60)
            assert process.returncode == 0
            outcomes.update(json.loads(out))
    assert outcomes == Counter({"ADMITTED": 10, "INSUFFICIENT_BALANCE": 20})


async def test_settling_spends_the_charge_and_frees_the_rest_of_the_hold(store: Store, ledger: Ledger) -> None:
    key = await budgeted(store)
    holds = [await hold(ledger, key, f"h{i}") for i in range(10)]
    with pytest.raises(GatewayError):
        await hold(ledger, key, "over")
    for held in holds:
        await ledger.settle(held, outcome(HOLD // 2))
    account = await store.get_account(key.account_id)
    assert (account.budget_spent_micros, account.budget_held_micros) == (BUDGET // 2, 0)
    for i in range(5):  # exactly the half that was not charged is free again
        await hold(ledger, key, f"again{i}")
    with pytest.raises(GatewayError):
        await hold(ledger, key, "over-again")


async def test_a_new_month_starts_from_zero_in_the_hold_statement(store: Store, ledger: Ledger) -> None:
    key = await budgeted(store)
    first = await hold(ledger, key, "first", BUDGET)
    await ledger.settle(first, outcome(BUDGET))
    with pytest.raises(GatewayError) as caught:
        await hold(ledger, key, "refused")
    assert caught.value.reason == Reason.INSUFFICIENT_BALANCE and caught.value.message == BUDGET_USED_UP
    now_period = (await store.get_account(key.account_id)).budget_period
    previous = now_period - 1 if now_period % 100 > 1 else now_period - 89
    set_columns(store, key.account_id, budget_period=previous)  # as if the month had just turned
    await hold(ledger, key, "next-month", HOLD)
    account = await store.get_account(key.account_id)
    assert (account.budget_period, account.budget_spent_micros, account.budget_held_micros) == (now_period, 0, HOLD)


async def test_a_hold_from_last_month_settles_into_this_month(store: Store, ledger: Ledger) -> None:
    key = await budgeted(store)
    held = await hold(ledger, key, "late")
    period = (await store.get_account(key.account_id)).budget_period
    set_columns(store, key.account_id, budget_period=period - 1, budget_spent_micros=7_000)
    await ledger.settle(held, outcome(400))
    account = await store.get_account(key.account_id)
    assert (account.budget_period, account.budget_spent_micros, account.budget_held_micros) == (period, 400, 0)


async def test_the_period_never_moves_backwards(store: Store, ledger: Ledger) -> None:
    key = await budgeted(store)
    await hold(ledger, key, "seed")
    period = (await store.get_account(key.account_id)).budget_period
    # A replica whose database clock is behind must not reset a month that already began.
    set_columns(store, key.account_id, budget_period=period + 1, budget_spent_micros=BUDGET - 2 * HOLD)
    with pytest.raises(GatewayError):
        await hold(ledger, key, "would-reset", 2 * HOLD)
    assert (await store.get_account(key.account_id)).budget_period == period + 1


async def test_no_budget_means_no_budget_check(store: Store, ledger: Ledger) -> None:
    key = await budgeted(store, budget=0)
    for i in range(20):
        await hold(ledger, key, f"free{i}", 10 * HOLD)


def test_budget_period_is_the_utc_calendar_month() -> None:
    assert budget_period(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)) == 202612
    assert budget_period(datetime(2027, 1, 1, 0, 0, tzinfo=UTC)) == 202701
    # 1 January 01:00 in UTC+2 is still 31 December in UTC.
    assert budget_period(datetime(2027, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))) == 202612
