"""The Ledger on real SQLite files and a real PostgreSQL: holds, settlement, herds across threads and processes, immutability, leases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from gateway_core.errors import GatewayError, Reason
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.outcome import Hold, Settlement, UsageStatus
from gateway_core.metering.reconciler import Reconciler
from gateway_core.store import Database, HoldStatus, Store, migrate
from gateway_core.store.clock import db_now
from gateway_core.store.models import Instance, LedgerEntry
from tests.ledger_support import FundedKey, check_invariants, child, entry_kinds, funded_key, make_stale, outcome

HOLD = 1_000


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    db = await Database.open(database_url)
    yield Store(db)
    await db.close()


@pytest.fixture
def ledger(store: Store) -> Ledger:
    return Ledger(store.db, instance_id="core-test")


async def hold_on(ledger: Ledger, key: FundedKey, request_id: str, amount: int, **names: str) -> Hold:
    return await ledger.hold(
        request_id=request_id, account_id=key.account_id, api_key_id=key.key_id, amount_micros=amount, **names
    )


def kill_if_running(process: subprocess.Popen[str]) -> None:
    """Ends a child that a failing test left running (its pipes are closed by Popen's exit)."""
    if process.poll() is None:
        process.kill()


def run_in_threads(work: Callable[[int], Coroutine[object, object, None]], count: int) -> None:
    """Runs asyncio.run(work(i)) on count threads, each with its own event loop; asserts none failed."""
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            asyncio.run(work(i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []


# --- hold ---------------------------------------------------------------------------------


async def test_hold_reserves_on_account_and_key_and_ledgers_it(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 5_000)
    hold = await hold_on(ledger, key, "r1", 1_500, model="mock-chat", provider="mock", upstream_model="chat")
    assert hold == Hold("r1", key.account_id, key.key_id, 1_500)
    account = await store.get_account(key.account_id)
    assert (account.balance_micros, account.held_micros, account.available_micros) == (5_000, 1_500, 3_500)
    assert (await store.get_api_key(key.key_id)).held_micros == 1_500
    entries, _ = await store.list_ledger_entries(key.account_id)
    assert [(e.kind, e.amount_micros, e.held_delta_micros, e.balance_after_micros) for e in entries[:1]] == [
        ("hold", 0, 1_500, 5_000)
    ]
    record = await store.get_hold("r1")
    assert record is not None and record.status == HoldStatus.OPEN and record.instance_id == "core-test"
    assert (record.model, record.provider, record.upstream_model) == ("mock-chat", "mock", "chat")
    assert await store.get_usage_record("r1") is None and await store.get_settlement("r1") is None
    check_invariants(store.db.engine)


async def test_hold_refuses_what_the_balance_cannot_cover_and_changes_nothing(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 999)
    with pytest.raises(GatewayError) as exc:
        await hold_on(ledger, key, "r1", 1_000)
    assert exc.value.reason == Reason.INSUFFICIENT_BALANCE
    assert exc.value.message == "You exceeded your current quota: the account's balance cannot cover this request."
    assert (await store.get_account(key.account_id)).held_micros == 0
    assert await store.get_hold("r1") is None
    await hold_on(ledger, key, "r1", 999)  # the refused id was not used up
    check_invariants(store.db.engine)


async def test_key_spend_limit_refusal_rolls_back_the_account_hold(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 10_000, spend_limit_micros=1_500)
    first = await hold_on(ledger, key, "r1", 1_000)
    await ledger.settle(first, outcome(800))  # spent 800 of 1 500
    with pytest.raises(GatewayError) as exc:
        await hold_on(ledger, key, "r2", 701)
    assert exc.value.reason == Reason.INSUFFICIENT_BALANCE and "spend limit" in exc.value.message
    assert (await store.get_account(key.account_id)).held_micros == 0
    await hold_on(ledger, key, "r3", 700)
    assert (await store.get_api_key(key.key_id)).held_micros == 700
    check_invariants(store.db.engine)


async def test_a_used_request_id_is_already_exists_and_changes_nothing(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 5_000)
    await hold_on(ledger, key, "r1", 1_000)
    for amount in (0, 1_000):
        with pytest.raises(GatewayError) as exc:
            await hold_on(ledger, key, "r1", amount)
        assert exc.value.reason == Reason.ALREADY_EXISTS and exc.value.param == "request_id"
    assert (await store.get_account(key.account_id)).held_micros == 1_000
    check_invariants(store.db.engine)


async def test_unknown_account_or_a_key_of_another_account_is_not_found(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 5_000)
    other = await funded_key(store, 5_000)
    with pytest.raises(GatewayError) as exc:
        await ledger.hold(request_id="r1", account_id="acct_nope", api_key_id=key.key_id, amount_micros=1)
    assert exc.value.reason == Reason.NOT_FOUND
    with pytest.raises(GatewayError) as exc:
        await ledger.hold(request_id="r1", account_id=key.account_id, api_key_id=other.key_id, amount_micros=1)
    assert exc.value.reason == Reason.NOT_FOUND
    assert (await store.get_account(key.account_id)).held_micros == 0


async def test_bad_hold_arguments_are_refused_before_the_database(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        await ledger.hold(request_id="r", account_id="a", api_key_id="k", amount_micros=-1)
    with pytest.raises(GatewayError) as exc:
        await ledger.hold(request_id="", account_id="a", api_key_id="k", amount_micros=1)
    assert exc.value.param == "request_id"


async def test_a_free_request_is_admitted_and_gets_its_usage_record(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 0)
    hold = await hold_on(ledger, key, "free", 0)
    settlement = await ledger.settle(hold, outcome(0))
    assert settlement == Settlement("free", 0, 0, 0, replayed=False)
    record = await store.get_usage_record("free")
    assert record is not None and record.cost_micros == 0 and record.status == UsageStatus.OK
    assert await store.get_settlement("free") == Settlement("free", 0, 0, 0, replayed=True)
    assert (await store.list_ledger_entries(key.account_id))[0] == []  # nothing moved, nothing ledgered
    check_invariants(store.db.engine)


# --- settle -------------------------------------------------------------------------------


async def test_settle_charges_the_cost_releases_the_rest_and_records_usage(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 5_000)
    hold = await hold_on(ledger, key, "r1", 2_000)
    settlement = await ledger.settle(hold, outcome(750, model="mock-chat", prompt_tokens=7, completion_tokens=9))
    assert settlement == Settlement("r1", 750, 1_250, 4_250, replayed=False)
    account = await store.get_account(key.account_id)
    assert (account.balance_micros, account.held_micros) == (4_250, 0)
    api_key = await store.get_api_key(key.key_id)
    assert (api_key.spent_micros, api_key.held_micros) == (750, 0)
    assert entry_kinds(store.db.engine, "r1") == Counter({"hold": 1, "settle": 1, "release": 1})
    record = await store.get_usage_record("r1")
    assert record is not None
    hold_record = await store.get_hold("r1")
    assert hold_record is not None and record.created_at == hold_record.created_at  # dated at admission
    assert (record.model, record.provider, record.upstream_model) == ("mock-chat", "mock", "up-mock-chat")
    assert (record.prompt_tokens, record.completion_tokens, record.cost_micros, record.held_micros) == (7, 9, 750, 2000)
    assert (record.status, record.latency_ms, record.time_to_first_token_ms) == ("ok", 120, 15)
    assert not record.estimated and not record.clamped
    check_invariants(store.db.engine)


@pytest.mark.parametrize(("cost", "charged"), [(2_001, 2_000), (10**12, 2_000), (-5, 0), (2_000, 2_000)])
async def test_settle_clamps_the_cost_into_the_hold_and_flags_it(
    store: Store, ledger: Ledger, cost: int, charged: int
) -> None:
    key = await funded_key(store, 5_000)
    settlement = await ledger.settle(await hold_on(ledger, key, "r1", 2_000), outcome(cost))
    assert (settlement.charged_micros, settlement.released_micros) == (charged, 2_000 - charged)
    record = await store.get_usage_record("r1")
    assert record is not None and record.cost_micros == charged and record.clamped == (cost != charged)
    assert entry_kinds(store.db.engine, "r1")["release"] == (1 if charged < 2_000 else 0)
    check_invariants(store.db.engine)


async def test_negative_token_counts_are_stored_as_zero_and_flagged(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 5_000)
    await ledger.settle(await hold_on(ledger, key, "r1", 2_000), outcome(10, prompt_tokens=-3))
    record = await store.get_usage_record("r1")
    assert record is not None and record.prompt_tokens == 0 and record.clamped


async def test_settling_an_unknown_request_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(GatewayError) as exc:
        await ledger.settle(Hold("nope", "a", "k", 1), outcome(1))
    assert exc.value.reason == Reason.NOT_FOUND


def test_fifty_concurrent_settlements_of_one_hold_debit_once(database_url: str) -> None:
    """T4: 5 handles x 10 concurrent settle() calls with different costs, then 50 replays."""
    url = database_url

    async def setup() -> Hold:
        async with await Database.open(url) as db:
            key = await funded_key(Store(db), 10_000)
            return await hold_on(Ledger(db, instance_id="core-a"), key, "once", 4_000)

    hold = asyncio.run(setup())
    results: list[Settlement] = []
    race = threading.Barrier(5)

    async def settle_many(worker: int) -> None:
        async with await Database.open(url, migrate=False) as db:
            ledger = Ledger(db, instance_id=f"core-{worker}")
            race.wait()
            costs = [1_000 + worker * 10 + i for i in range(10)]
            results.extend(await asyncio.gather(*(ledger.settle(hold, outcome(c)) for c in costs)))

    run_in_threads(settle_many, 5)
    assert len(results) == 50 and sum(not r.replayed for r in results) == 1
    first = next(r for r in results if not r.replayed)
    assert {(r.charged_micros, r.released_micros, r.balance_after_micros) for r in results} == {
        (first.charged_micros, first.released_micros, first.balance_after_micros)
    }

    async def check() -> None:
        async with await Database.open(url, migrate=False) as db:
            ledger = Ledger(db, instance_id="core-check")
            replays = await asyncio.gather(*(ledger.settle(hold, outcome(1)) for _ in range(50)))
            assert {r.charged_micros for r in replays} == {first.charged_micros} and all(r.replayed for r in replays)
            account = await Store(db).get_account(hold.account_id)
            assert account.balance_micros == 10_000 - first.charged_micros and account.held_micros == 0
            assert entry_kinds(db.engine, "once") == Counter({"hold": 1, "settle": 1, "release": 1})
            check_invariants(db.engine)

    asyncio.run(check())


# --- the herd -----------------------------------------------------------------------------


def test_a_herd_from_threads_and_processes_admits_exactly_what_the_balance_covers(database_url: str) -> None:
    """T7: balance for 5 holds; 30 holds from 3 threads' loops plus 20 from 2 processes at once."""
    url = database_url

    async def setup() -> tuple[str, str]:
        async with await Database.open(url) as db:
            key = await funded_key(Store(db), 5 * HOLD)
            return key.account_id, key.key_id

    account_id, key_id = asyncio.run(setup())
    outcomes: Counter[str] = Counter()
    start = threading.Barrier(3)

    async def herd(worker: int) -> None:
        async with await Database.open(url, migrate=False) as db:
            ledger = Ledger(db, instance_id=f"thread-{worker}")
            start.wait()

            async def one(i: int) -> str:
                try:
                    await ledger.hold(
                        request_id=f"t{worker}-{i}", account_id=account_id, api_key_id=key_id, amount_micros=HOLD
                    )
                except GatewayError as err:
                    return err.reason.value
                return "ADMITTED"

            outcomes.update(await asyncio.gather(*(one(i) for i in range(10))))

    with contextlib.ExitStack() as stack:  # closes the pipes and reaps the children
        processes = [
            stack.enter_context(child("herd", url, account_id, key_id, str(HOLD), "10", f"proc{i}")) for i in range(2)
        ]
        for process in processes:
            stack.callback(kill_if_running, process)
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:  # the children go as the threads start
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        run_in_threads(herd, 3)
        for process in processes:
            out, _ = process.communicate(timeout=60)
            assert process.returncode == 0
            outcomes.update(json.loads(out))
    assert outcomes == Counter({"ADMITTED": 5, "INSUFFICIENT_BALANCE": 45})

    async def check() -> None:
        async with await Database.open(url, migrate=False) as db:
            account = await Store(db).get_account(account_id)
            assert (account.balance_micros, account.held_micros, account.available_micros) == (5 * HOLD, 5 * HOLD, 0)
            check_invariants(db.engine)

    asyncio.run(check())


async def test_a_herd_against_a_key_spend_limit_admits_exactly_the_limit(store: Store) -> None:
    key = await funded_key(store, 100 * HOLD, spend_limit_micros=3 * HOLD)
    ledgers = [Ledger(store.db, instance_id=f"core-{i}") for i in range(3)]
    results = await asyncio.gather(
        *(hold_on(ledgers[i % 3], key, f"r{i}", HOLD) for i in range(30)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Hold)]
    assert len(admitted) == 3
    refused = [r for r in results if not isinstance(r, Hold)]
    assert all(isinstance(r, GatewayError) and r.reason == Reason.INSUFFICIENT_BALANCE for r in refused)
    check_invariants(store.db.engine)


# --- the ledger is append-only -------------------------------------------------------------


async def test_ledger_entries_cannot_be_updated_or_deleted(store: Store, ledger: Ledger) -> None:
    """T2: through raw SQL and through the ORM; rows and their checksum stay as they were."""
    key = await funded_key(store, 5_000)
    await ledger.settle(await hold_on(ledger, key, "r1", 1_000), outcome(300))
    engine = store.db.engine

    def fingerprint() -> list[tuple[object, ...]]:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text("SELECT * FROM ledger_entries ORDER BY id"))]

    before = fingerprint()
    assert len(before) == 4
    for statement in (
        "UPDATE ledger_entries SET amount_micros = amount_micros + 1",
        "UPDATE ledger_entries SET note = 'x' WHERE kind = 'top_up'",
        "DELETE FROM ledger_entries",
        "DELETE FROM ledger_entries WHERE kind = 'settle'",
    ):
        with pytest.raises(IntegrityError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    with pytest.raises(IntegrityError, match="append-only"), Session(engine) as session, session.begin():
        session.delete(session.exec(select(LedgerEntry)).first())
    with pytest.raises(IntegrityError, match="append-only"), Session(engine) as session, session.begin():
        entry = session.exec(select(LedgerEntry)).first()
        assert entry is not None
        entry.amount_micros = 10**9
    assert fingerprint() == before


def test_postgresql_migration_guards_the_ledger_with_a_trigger_function() -> None:
    sql = migrate.sql_script("postgresql+psycopg://user:pass@localhost/tollgate")
    assert "CREATE FUNCTION ledger_entries_append_only() RETURNS trigger" in sql
    assert "BEFORE UPDATE OR DELETE ON ledger_entries" in sql and "BEFORE TRUNCATE ON ledger_entries" in sql
    assert "held_micros BIGINT DEFAULT '0' NOT NULL" in sql and "CHECK (held_micros >= 0)" in sql
    assert "CREATE INDEX ix_usage_records_account_id_created_at_request_id" in sql


# --- leases and orphans -------------------------------------------------------------------


async def test_heartbeat_uses_database_time(store: Store, ledger: Ledger) -> None:
    await ledger.ensure_instance()
    with Session(store.db.engine) as session:
        row = session.get(Instance, "core-test")
        now = db_now(session)
    assert row is not None and row.started_at <= row.heartbeat_at <= now


async def test_orphans_are_released_once_their_lease_is_stale_and_never_before(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 10_000)
    await ledger.ensure_instance()
    await hold_on(ledger, key, "mine", 1_000, model="mock-chat", provider="mock", upstream_model="chat")
    survivor = Ledger(store.db, instance_id="core-survivor")
    assert await survivor.release_orphans(stale_after_seconds=30) == 0  # alive
    assert await ledger.release_orphans(stale_after_seconds=0) == 0  # never its own
    make_stale(store.db.engine, ledger.instance_id, seconds=31)
    assert await survivor.release_orphans(stale_after_seconds=60) == 0  # not stale enough
    assert await survivor.release_orphans(stale_after_seconds=30) == 1
    assert await survivor.release_orphans(stale_after_seconds=30) == 0
    record = await store.get_usage_record("mine")
    assert record is not None and record.status == UsageStatus.ABANDONED and record.estimated
    assert (record.model, record.provider, record.upstream_model) == ("mock-chat", "mock", "chat")
    assert (record.prompt_tokens, record.completion_tokens, record.cost_micros, record.held_micros) == (0, 0, 0, 1_000)
    assert entry_kinds(store.db.engine, "mine") == Counter({"hold": 1, "release": 1})
    check_invariants(store.db.engine)


async def test_a_hold_whose_instance_never_registered_is_an_orphan(store: Store) -> None:
    key = await funded_key(store, 10_000)
    ghost = Ledger(store.db, instance_id="core-ghost")
    await hold_on(ghost, key, "r1", 1_000)  # registers its lease in the same transaction
    with store.db.engine.begin() as connection:
        connection.execute(text("DELETE FROM instances WHERE id = 'core-ghost'"))
    assert await Ledger(store.db, instance_id="core-other").release_orphans(stale_after_seconds=3600) == 1
    record = await store.get_usage_record("r1")
    assert record is not None and (record.model, record.provider) == ("unknown", "unknown")


async def test_a_late_settlement_after_release_gets_the_release_and_no_charge(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 10_000)
    hold = await hold_on(ledger, key, "late", 2_000)
    make_stale(store.db.engine, ledger.instance_id)
    assert await Ledger(store.db, instance_id="core-b").release_orphans(stale_after_seconds=30) == 1
    settlement = await ledger.settle(hold, outcome(1_500))
    assert settlement == Settlement("late", 0, 2_000, 10_000, replayed=True)
    assert (await store.get_account(key.account_id)).balance_micros == 10_000
    check_invariants(store.db.engine)


async def test_leases_dead_for_a_day_are_pruned_once_they_hold_nothing(store: Store) -> None:
    key = await funded_key(store, 10_000)
    old, recent = Ledger(store.db, instance_id="core-old"), Ledger(store.db, instance_id="core-recent")
    await hold_on(old, key, "r1", 1_000)
    await recent.ensure_instance()
    make_stale(store.db.engine, "core-old", seconds=2 * 86_400)
    make_stale(store.db.engine, "core-recent", seconds=3_600)
    assert await Ledger(store.db, instance_id="core-new").release_orphans(stale_after_seconds=30) == 1
    with Session(store.db.engine) as session:
        assert session.get(Instance, "core-old") is None  # released first, then pruned
        assert session.get(Instance, "core-recent") is not None  # dead, but not for long enough


def test_reconcilers_racing_in_several_threads_release_each_orphan_once(database_url: str) -> None:
    url = database_url

    async def setup() -> str:
        async with await Database.open(url) as db:
            key = await funded_key(Store(db), 1_000_000)
            dead = Ledger(db, instance_id="core-dead")
            for i in range(250):  # more than one batch
                await hold_on(dead, key, f"r{i}", 100)
            make_stale(db.engine, "core-dead")
            return key.account_id

    account_id = asyncio.run(setup())
    released: list[int] = []

    async def reconcile(worker: int) -> None:
        async with await Database.open(url, migrate=False) as db:
            released.append(await Ledger(db, instance_id=f"core-{worker}").release_orphans(stale_after_seconds=30))

    run_in_threads(reconcile, 4)
    assert sum(released) == 250

    async def check() -> None:
        async with await Database.open(url, migrate=False) as db:
            assert (await Store(db).get_account(account_id)).held_micros == 0
            check_invariants(db.engine)

    asyncio.run(check())


# --- the reconciler -----------------------------------------------------------------------


async def test_reconciler_releases_dead_holds_at_start_and_keeps_its_lease_fresh(store: Store, ledger: Ledger) -> None:
    key = await funded_key(store, 10_000)
    await hold_on(Ledger(store.db, instance_id="core-dead"), key, "orphan", 1_000)
    make_stale(store.db.engine, "core-dead")
    reconciler = Reconciler(ledger, interval_seconds=0.05, stale_after_seconds=30)
    await reconciler.start()
    try:
        assert (await store.get_hold("orphan")).status == HoldStatus.RELEASED  # type: ignore[union-attr]
        make_stale(store.db.engine, ledger.instance_id, seconds=60)
        for _ in range(100):  # the loop renews the lease
            await asyncio.sleep(0.02)
            with Session(store.db.engine) as session:
                row = session.get(Instance, ledger.instance_id)
                assert row is not None
                if db_now(session) - row.heartbeat_at < timedelta(seconds=5):
                    break
        else:
            pytest.fail("the reconciler did not renew its lease")
    finally:
        await reconciler.stop()
    assert not reconciler.running
    await reconciler.stop()  # idempotent


async def test_reconciler_survives_failures(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    real = ledger.release_orphans

    async def flaky(*, stale_after_seconds: float) -> int:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("database went away")
        return await real(stale_after_seconds=stale_after_seconds)

    ledger.release_orphans = flaky  # type: ignore[method-assign]
    reconciler = Reconciler(ledger, interval_seconds=0.01, stale_after_seconds=1)
    with caplog.at_level(logging.ERROR, logger="tollgate.reconciler"):
        await reconciler.start()
        try:
            for _ in range(200):
                if calls >= 4:
                    break
                await asyncio.sleep(0.01)
            assert reconciler.running and calls >= 4
        finally:
            await reconciler.stop()
    assert "releasing orphan holds failed" in caplog.text


def test_reconciler_settings_are_checked(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        Reconciler(ledger, interval_seconds=0)
    with pytest.raises(ValueError):
        Reconciler(ledger, interval_seconds=5, stale_after_seconds=9)
