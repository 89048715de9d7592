"""The store on a real SQLite file: migrations, accounts, keys, top-ups, paging."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Integer, MetaData, event, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from gateway_core.errors import GatewayError, Reason
from gateway_core.keys import hash_key, parse_key
from gateway_core.store import Database, LedgerKind, Store, migrate, open_store, paging
from gateway_core.store.engine import make_engine
from tests.store_support import PEPPER, sqlite_url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A store on a fresh database of each backend (SQLite file, PostgreSQL)."""
    db = await Database.open(database_url)
    yield Store(db)
    await db.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A store on a SQLite file, for what only SQLite has (pragmas, the file's bytes)."""
    db = await Database.open(sqlite_url(tmp_path))
    yield Store(db)
    await db.close()


async def ledger_sum(store: Store, account_id: str) -> int:
    entries, token = await store.list_ledger_entries(account_id, page_size=1000)
    assert token == ""
    return sum(e.amount_micros for e in entries)


def expect_error(exc: pytest.ExceptionInfo[GatewayError], reason: Reason, param: str | None = None) -> None:
    assert exc.value.reason == reason
    if param is not None:
        assert exc.value.param == param


# --- migrations and the database handle -------------------------------------------------


async def test_migrated_schema_matches_the_models(store: Store) -> None:
    with store.db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, SQLModel.metadata) == []
        assert context.get_current_revision() == "0005"


async def test_schema_comparison_would_notice_a_drift(store: Store) -> None:
    """Guards the test above against passing vacuously."""
    drifted = MetaData()
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["accounts"].c.balance_micros.type = Integer()
    drifted.tables["api_keys"].c.revoked_at.nullable = False
    with store.db.engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), drifted)
    assert {diff[0][0] if isinstance(diff, list) else diff[0] for diff in diffs} == {"modify_type", "modify_nullable"}


def test_migrations_ship_in_the_package_with_one_head() -> None:
    assert (migrate.MIGRATIONS_DIR / "env.py").is_file()
    assert (migrate.MIGRATIONS_DIR / "script.py.mako").is_file()
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert scripts.get_heads() == ["0005"]


def test_upgrade_by_url_is_idempotent(database_url: str) -> None:
    url = database_url
    migrate.upgrade(url)
    migrate.upgrade(url)


def test_offline_sql_for_postgresql_uses_bigint_money_and_timestamptz() -> None:
    sql = migrate.sql_script("postgresql+psycopg://user:pass@localhost/tollgate")
    assert "balance_micros BIGINT DEFAULT '0' NOT NULL" in sql
    assert "id BIGSERIAL NOT NULL" in sql
    assert "created_at TIMESTAMP WITH TIME ZONE NOT NULL" in sql
    assert "CONSTRAINT uq_ledger_entries_kind_request_id UNIQUE (kind, request_id)" in sql


async def test_every_connection_gets_the_sqlite_pragmas(sqlite_store: Store) -> None:
    with sqlite_store.db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_replicas_opening_a_new_file_together_all_get_wal(tmp_path: Path) -> None:
    """Two connections switching a new file to WAL at once deadlock on its locks, and
    SQLite fails one at once ("database is locked") without calling the busy handler.
    One engine per thread, like replicas: an engine runs its first connect alone."""
    for round_number in range(40):
        url = sqlite_url(tmp_path, f"round{round_number}.db")
        start = threading.Barrier(6)
        modes: list[object] = []

        def connect() -> None:
            engine = make_engine(url, pool_size=1)
            try:
                start.wait()
                with engine.connect() as connection:
                    modes.append(connection.exec_driver_sql("PRAGMA journal_mode").scalar())
            finally:
                engine.dispose()

        threads = [threading.Thread(target=connect) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert modes == ["wal"] * 6, f"round {round_number}"


async def test_reopening_keeps_data(database_url: str) -> None:
    store = await open_store(database_url)
    account = await store.create_account("kept")
    await store.close()
    store = await open_store(database_url)
    assert (await store.get_account(account.id)).display_name == "kept"
    await store.close()


async def test_closed_database_refuses_work(tmp_path: Path) -> None:
    db = await Database.open(sqlite_url(tmp_path))
    await db.close()
    await db.close()
    with pytest.raises(RuntimeError):
        await Store(db).count_accounts()


async def test_in_memory_database_works() -> None:
    async with await Database.open("sqlite://") as db:
        store = Store(db)
        account = await store.create_account("memory")
        assert (await store.get_account(account.id)).id == account.id


async def test_concurrent_writes_share_a_commit_and_fail_alone(tmp_path: Path) -> None:
    db = await Database.open(sqlite_url(tmp_path))
    store = Store(db)
    accounts = [await store.create_account(f"group {i}") for i in range(3)]
    commits = 0

    def count_commit(_connection: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(db.engine, "commit", count_commit)

    def rename(session: object, account_id: str, name: str, fail: bool) -> str:
        session.execute(  # type: ignore[attr-defined]
            text("UPDATE accounts SET display_name = :name WHERE id = :id"), {"name": name, "id": account_id}
        )
        if fail:
            raise GatewayError(Reason.INVALID_REQUEST, "refused after writing")
        return name

    calls = [
        db.run(lambda s, a=a, i=i: rename(s, a.id, f"renamed {i}", fail=i == 1), write=True)
        for i, a in enumerate(accounts)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert commits == 1  # all three were queued before the writer ran: one transaction, one fsync
    assert results[0] == "renamed 0" and results[2] == "renamed 2"
    assert isinstance(results[1], GatewayError)
    names = [(await store.get_account(a.id)).display_name for a in accounts]
    assert names == ["renamed 0", "group 1", "renamed 2"]  # the failed write rolled back alone
    await db.close()


async def test_balance_can_never_go_negative_or_be_over_held(store: Store) -> None:
    account = await store.create_account("checked")
    with store.db.engine.begin() as connection, pytest.raises(IntegrityError):
        connection.execute(text("UPDATE accounts SET balance_micros = -1 WHERE id = :id"), {"id": account.id})
    with store.db.engine.begin() as connection, pytest.raises(IntegrityError):
        connection.execute(text("UPDATE accounts SET held_micros = 1 WHERE id = :id"), {"id": account.id})


async def test_a_hold_is_one_conditional_update(store: Store) -> None:
    """The shape the money work relies on: the WHERE refuses what the balance cannot cover."""
    account = await store.create_account("holds")
    await store.top_up(account.id, 100, "hold-test")
    hold = text(
        "UPDATE accounts SET held_micros = held_micros + :h WHERE id = :id AND balance_micros - held_micros >= :h"
    )
    with store.db.engine.begin() as connection:
        assert connection.execute(hold, {"h": 60, "id": account.id}).rowcount == 1
        assert connection.execute(hold, {"h": 60, "id": account.id}).rowcount == 0
    assert (await store.get_account(account.id)).available_micros == 40


async def test_datetimes_come_back_aware_utc(store: Store) -> None:
    account = await store.create_account("times")
    fetched = await store.get_account(account.id)
    assert fetched.created_at.tzinfo is UTC
    assert abs(datetime.now(UTC) - fetched.created_at) < timedelta(minutes=1)


# --- accounts -----------------------------------------------------------------------------


async def test_account_lifecycle(store: Store) -> None:
    assert await store.count_accounts() == 0
    account = await store.create_account("  Research  ")
    assert account.id.startswith("acct_") and len(account.id) == 21
    assert (account.display_name, account.balance_micros, account.held_micros) == ("Research", 0, 0)
    renamed = await store.update_account(account.id, display_name="Lab")
    assert renamed.display_name == "Lab"
    assert (await store.update_account(account.id)).display_name == "Lab"
    assert await store.count_accounts() == 1


async def test_account_errors(store: Store) -> None:
    with pytest.raises(GatewayError) as exc:
        await store.get_account("acct_missing")
    expect_error(exc, Reason.NOT_FOUND, "account_id")
    with pytest.raises(GatewayError) as exc:
        await store.create_account("   ")
    expect_error(exc, Reason.INVALID_REQUEST, "display_name")
    with pytest.raises(GatewayError) as exc:
        await store.create_account("x" * 201)
    expect_error(exc, Reason.INVALID_REQUEST, "display_name")


async def test_accounts_page_oldest_first_without_gaps(store: Store) -> None:
    created = [(await store.create_account(f"a{i}")).id for i in range(7)]
    seen: list[str] = []
    token = ""
    sizes = []
    while True:
        page, token = await store.list_accounts(page_size=3, page_token=token)
        sizes.append(len(page))
        seen += [a.id for a in page]
        if not token:
            break
    assert sizes == [3, 3, 1]
    assert seen == created


async def test_paging_arguments_are_checked(store: Store) -> None:
    with pytest.raises(GatewayError) as exc:
        await store.list_accounts(page_size=-1)
    expect_error(exc, Reason.INVALID_REQUEST, "page_size")
    for bad in ["not-a-token", paging.encode_token(1), paging.encode_token("x", "y"), "!!!"]:
        with pytest.raises(GatewayError) as exc:
            await store.list_accounts(page_token=bad)
        expect_error(exc, Reason.INVALID_REQUEST, "page_token")
    assert paging.page_size(0) == 50
    assert paging.page_size(5000) == 1000


# --- top-ups and the ledger -------------------------------------------------------------


async def test_top_up_credits_and_writes_one_ledger_entry(store: Store) -> None:
    account = await store.create_account("payer")
    after, entry = await store.top_up(account.id, 2_500_000, "inv-1", note="invoice 1")
    assert after.balance_micros == 2_500_000
    assert (entry.kind, entry.amount_micros, entry.balance_after_micros) == (LedgerKind.TOP_UP, 2_500_000, 2_500_000)
    assert (entry.request_id, entry.note, entry.account_id) == ("inv-1", "invoice 1", account.id)
    assert await ledger_sum(store, account.id) == 2_500_000


async def test_top_up_retry_returns_the_original_entry_without_a_second_credit(store: Store) -> None:
    account = await store.create_account("payer")
    _, first = await store.top_up(account.id, 1_000, "same")
    after, again = await store.top_up(account.id, 1_000, "same")
    assert again == first
    assert after.balance_micros == 1_000
    assert await ledger_sum(store, account.id) == 1_000


async def test_top_up_request_id_reused_differently_is_refused(store: Store) -> None:
    account = await store.create_account("payer")
    other = await store.create_account("other")
    await store.top_up(account.id, 1_000, "once")
    for account_id, amount in [(account.id, 2_000), (other.id, 1_000)]:
        with pytest.raises(GatewayError) as exc:
            await store.top_up(account_id, amount, "once")
        expect_error(exc, Reason.INVALID_REQUEST, "request_id")
    assert (await store.get_account(account.id)).balance_micros == 1_000
    assert (await store.get_account(other.id)).balance_micros == 0


@pytest.mark.parametrize(
    ("amount", "request_id", "note", "param"),
    [
        (0, "r", "", "amount_micros"),
        (-5, "r", "", "amount_micros"),
        (10**16, "r", "", "amount_micros"),
        (1, "", "", "request_id"),
        (1, "r" * 256, "", "request_id"),
        (1, "r", "n" * 1001, "note"),
    ],
)
async def test_top_up_arguments_are_checked(store: Store, amount: int, request_id: str, note: str, param: str) -> None:
    account = await store.create_account("payer")
    with pytest.raises(GatewayError) as exc:
        await store.top_up(account.id, amount, request_id, note)
    expect_error(exc, Reason.INVALID_REQUEST, param)


async def test_top_up_of_unknown_account_is_not_found(store: Store) -> None:
    with pytest.raises(GatewayError) as exc:
        await store.top_up("acct_missing", 1, "r")
    expect_error(exc, Reason.NOT_FOUND, "account_id")


def test_concurrent_duplicate_top_ups_from_many_threads_credit_once(database_url: str) -> None:
    """Several processes' worth of handles racing one request_id: exactly one credit."""
    url = database_url

    async def setup() -> str:
        async with await Database.open(url) as db:
            return (await Store(db).create_account("raced")).id

    account_id = asyncio.run(setup())
    start = threading.Barrier(6)
    entries: list[int] = []
    errors: list[BaseException] = []

    async def race() -> None:
        async with await Database.open(url, migrate=False) as db:
            start.wait()
            results = await asyncio.gather(*(Store(db).top_up(account_id, 7_000, "dup") for _ in range(4)))
            entries.extend(entry.id for _, entry in results)

    def worker() -> None:
        try:
            asyncio.run(race())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(entries) == 24 and len(set(entries)) == 1

    async def check() -> None:
        async with await Database.open(url) as db:
            store = Store(db)
            assert (await store.get_account(account_id)).balance_micros == 7_000
            assert await ledger_sum(store, account_id) == 7_000

    asyncio.run(check())


async def test_concurrent_distinct_top_ups_all_count(store: Store) -> None:
    account = await store.create_account("busy")
    amounts = [1_000 * (i + 1) for i in range(40)]
    await asyncio.gather(*(store.top_up(account.id, a, f"r{i}") for i, a in enumerate(amounts)))
    balance = (await store.get_account(account.id)).balance_micros
    assert balance == sum(amounts) == await ledger_sum(store, account.id)
    entries, _ = await store.list_ledger_entries(account.id, page_size=1000)
    # Each entry's balance_after is the running balance in id order.
    running = 0
    for entry in reversed(entries):
        running += entry.amount_micros
        assert entry.balance_after_micros == running


async def test_ledger_pages_newest_first(store: Store) -> None:
    account = await store.create_account("pages")
    for i in range(5):
        await store.top_up(account.id, 10 + i, f"p{i}")
    first, token = await store.list_ledger_entries(account.id, page_size=2)
    second, token2 = await store.list_ledger_entries(account.id, page_size=2, page_token=token)
    last, token3 = await store.list_ledger_entries(account.id, page_size=2, page_token=token2)
    ids = [e.id for e in first + second + last]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5
    assert [e.amount_micros for e in first] == [14, 13]
    assert token3 == ""
    with pytest.raises(GatewayError) as exc:
        await store.list_ledger_entries("acct_missing")
    expect_error(exc, Reason.NOT_FOUND, "account_id")


# --- API keys -------------------------------------------------------------------------------


async def test_create_api_key_stores_only_a_hash(sqlite_store: Store, tmp_path: Path) -> None:
    store = sqlite_store
    account = await store.create_account("keys")
    expire = datetime.now(UTC) + timedelta(days=30)
    key, secret = await store.create_api_key(
        account.id,
        pepper=PEPPER,
        display_name="laptop",
        allowed_models=["b", "a", "b"],
        rpm_limit=60,
        tpm_limit=1000,
        spend_limit_micros=5_000_000,
        expire_time=expire,
    )
    assert parse_key(secret) == key.id
    assert key.allowed_models == ("b", "a")
    assert (key.rpm_limit, key.tpm_limit, key.spend_limit_micros, key.spent_micros) == (60, 1000, 5_000_000, 0)
    assert key.expire_time == expire and key.state(datetime.now(UTC)) == "active"
    assert key.redacted == f"sk-tg-{key.id}_...{secret[-4:]}"
    credential = await store.get_api_key_for_auth(key.id)
    assert credential is not None and credential.key == key
    assert credential.key_hash == hash_key(secret, PEPPER)
    await store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("tollgate.db"))
    assert secret.encode() not in raw and secret[19:-6].encode() not in raw


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"rpm_limit": -1}, "rpm_limit"),
        ({"tpm_limit": -1}, "tpm_limit"),
        ({"spend_limit_micros": -1}, "spend_limit_micros"),
        ({"allowed_models": ["ok", " "]}, "allowed_models"),
        ({"expire_time": datetime.now(UTC) - timedelta(seconds=1)}, "expire_time"),
        ({"expire_time": datetime(2999, 1, 1)}, "expire_time"),
    ],
)
async def test_create_api_key_checks_its_arguments(store: Store, kwargs: dict[str, object], param: str) -> None:
    account = await store.create_account("keys")
    with pytest.raises(GatewayError) as exc:
        await store.create_api_key(account.id, pepper=PEPPER, **kwargs)  # type: ignore[arg-type]
    expect_error(exc, Reason.INVALID_REQUEST, param)


async def test_create_api_key_needs_an_existing_account(store: Store) -> None:
    with pytest.raises(GatewayError) as exc:
        await store.create_api_key("acct_missing", pepper=PEPPER)
    expect_error(exc, Reason.NOT_FOUND, "account_id")


async def test_update_and_revoke_api_key(store: Store) -> None:
    account = await store.create_account("keys")
    key, _ = await store.create_api_key(account.id, pepper=PEPPER, expire_time=datetime.now(UTC) + timedelta(days=1))
    updated = await store.update_api_key(
        key.id, display_name="renamed", allowed_models=[], rpm_limit=5, clear_expire_time=True
    )
    assert (updated.display_name, updated.allowed_models, updated.rpm_limit, updated.expire_time) == (
        "renamed",
        (),
        5,
        None,
    )
    assert updated.tpm_limit == key.tpm_limit
    with pytest.raises(GatewayError) as exc:
        await store.update_api_key(key.id, expire_time=datetime.now(UTC) + timedelta(days=1), clear_expire_time=True)
    expect_error(exc, Reason.INVALID_REQUEST, "expire_time")
    revoked = await store.revoke_api_key(key.id)
    assert revoked.revoked_at is not None and revoked.state(datetime.now(UTC)) == "revoked"
    assert (await store.revoke_api_key(key.id)).revoked_at == revoked.revoked_at
    for call in (store.get_api_key, store.revoke_api_key, store.update_api_key):
        with pytest.raises(GatewayError) as exc:
            await call("missing")
        expect_error(exc, Reason.NOT_FOUND, "api_key_id")
    assert await store.get_api_key_for_auth("missing") is None


async def test_api_keys_page_per_account(store: Store) -> None:
    first, second = await store.create_account("one"), await store.create_account("two")
    mine = [(await store.create_api_key(first.id, pepper=PEPPER))[0].id for _ in range(3)]
    await store.create_api_key(second.id, pepper=PEPPER)
    page, token = await store.list_api_keys(first.id, page_size=2)
    rest, end = await store.list_api_keys(first.id, page_size=2, page_token=token)
    assert [k.id for k in page + rest] == mine and end == ""
    everything, _ = await store.list_api_keys(None)
    assert len(everything) == 4
    with pytest.raises(GatewayError) as exc:
        await store.list_api_keys("acct_missing")
    expect_error(exc, Reason.NOT_FOUND, "account_id")


async def test_create_first_account_happens_once(store: Store) -> None:
    created = await store.create_first_account(
        "demo", pepper=PEPPER, credit_micros=5_000_000, request_id="demo-initial-credit", key_name="demo key"
    )
    assert created is not None
    account, key, secret = created
    assert account.balance_micros == 5_000_000 and key.display_name == "demo key" and parse_key(secret) == key.id
    again = await store.create_first_account(
        "demo", pepper=PEPPER, credit_micros=5_000_000, request_id="demo-initial-credit", key_name="demo key"
    )
    assert again is None and await store.count_accounts() == 1
