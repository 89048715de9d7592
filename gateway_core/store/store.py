"""Store: the async operations the rest of the core calls on the database.

Each method is one short transaction run on the Database's thread pool and
returns frozen records. Validation errors and unknown ids raise GatewayError
(INVALID_REQUEST with the parameter at fault, NOT_FOUND).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import partial

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from gateway_core.metering.outcome import Settlement
from gateway_core.store import accounts, api_keys, holds, ledger_entries, usage_records, usage_summary
from gateway_core.store.accounts import AccountLimitsUpdate
from gateway_core.store.api_keys import ApiKeySettings, ApiKeyUpdate
from gateway_core.store.db import Database
from gateway_core.store.usage_summary import DailyUsage
from gateway_core.store.records import (
    AccountRecord,
    ApiKeyCredential,
    ApiKeyRecord,
    HoldRecord,
    LedgerEntryRecord,
    ModelUsage,
    Usage,
)

AccountPage = tuple[list[AccountRecord], str]


class Store:
    """Accounts, API keys, the ledger and usage, over one Database. Safe to share between tasks.

    Money moves only through top_up here and metering.Ledger (holds and
    settlements); the hold and usage methods below only read.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        """The database this store runs on."""
        return self._db

    async def close(self) -> None:
        """Closes the underlying database (pooled connections and worker threads)."""
        await self._db.close()

    async def create_account(self, display_name: str, *, limits: AccountLimitsUpdate | None = None) -> AccountRecord:
        """A new account with a zero balance (and the limits given)."""
        call = partial(accounts.create_account, display_name=display_name, limits=limits)
        return await self._db.run(call, write=True)

    async def get_account(self, account_id: str) -> AccountRecord:
        """One account; NOT_FOUND if there is none with this id."""
        return await self._db.run(partial(accounts.get_account, account_id=account_id))

    async def list_accounts(self, page_size: int = 0, page_token: str = "") -> AccountPage:
        """A page of accounts, oldest first, and the next page's token ("" on the last)."""
        return await self._db.run(partial(accounts.list_accounts, requested_size=page_size, token=page_token))

    async def update_account(
        self, account_id: str, *, display_name: str | None = None, limits: AccountLimitsUpdate | None = None
    ) -> AccountRecord:
        """Changes the given fields of an account."""
        call = partial(accounts.update_account, account_id=account_id, display_name=display_name, limits=limits)
        return await self._db.run(call, write=True)

    async def count_accounts(self) -> int:
        """How many accounts exist."""
        return await self._db.run(accounts.count_accounts)

    async def top_up(
        self, account_id: str, amount_micros: int, request_id: str, note: str = ""
    ) -> tuple[AccountRecord, LedgerEntryRecord]:
        """Credits an account once per request_id; returns the account and the (original) entry."""
        call = partial(
            ledger_entries.top_up,
            account_id=account_id,
            amount_micros=amount_micros,
            request_id=request_id,
            note=note,
        )
        try:
            return await self._db.run(call, write=True)
        except IntegrityError:
            # A concurrent duplicate won the unique index; this run finds its entry.
            return await self._db.run(call, write=True)

    async def list_ledger_entries(
        self, account_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[LedgerEntryRecord], str]:
        """A page of an account's ledger, newest first, and the next page's token."""
        call = partial(
            ledger_entries.list_ledger_entries, account_id=account_id, requested_size=page_size, token=page_token
        )
        return await self._db.run(call)

    async def list_usage_records(
        self,
        account_id: str,
        page_size: int = 0,
        page_token: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> tuple[list[Usage], str]:
        """A page of an account's usage records in [start_time, end_time), newest first, and the next token."""
        call = partial(
            usage_records.list_usage,
            account_id=account_id,
            requested_size=page_size,
            token=page_token,
            start_time=start_time,
            end_time=end_time,
        )
        return await self._db.run(call)

    async def summarize_usage(
        self, account_id: str, start_time: datetime | None = None, end_time: datetime | None = None
    ) -> list[ModelUsage]:
        """Per-model totals of an account's usage in [start_time, end_time), sorted by model."""
        call = partial(usage_records.summarize_usage, account_id=account_id, start_time=start_time, end_time=end_time)
        return await self._db.run(call)

    async def summarize_daily_usage(
        self, account_id: str | None, start_time: datetime | None = None, end_time: datetime | None = None
    ) -> list[DailyUsage]:
        """Totals per UTC day and model of usage in [start_time, end_time); one account, or all for None."""
        call = partial(usage_summary.summarize_daily_usage, account_id=account_id, start_time=start_time, end_time=end_time)
        return await self._db.run(call)

    async def get_usage_record(self, request_id: str) -> Usage | None:
        """The usage record of request_id, or None while its hold is open (or never was)."""
        return await self._db.run(partial(usage_records.get_usage, request_id=request_id))

    async def get_hold(self, request_id: str) -> HoldRecord | None:
        """The hold of request_id, open or closed, or None."""
        return await self._db.run(partial(holds.get_hold, request_id=request_id))

    async def get_settlement(self, request_id: str) -> Settlement | None:
        """How request_id's hold was closed (replayed=True), or None while open or unknown."""
        record = await self.get_hold(request_id)
        if record is None or record.balance_after_micros is None:
            return None
        return Settlement(
            request_id, record.charged_micros, record.released_micros, record.balance_after_micros, replayed=True
        )

    async def create_api_key(
        self,
        account_id: str,
        *,
        pepper: str,
        display_name: str = "",
        allowed_models: Sequence[str] = (),
        rpm_limit: int = 0,
        tpm_limit: int = 0,
        spend_limit_micros: int = 0,
        expire_time: datetime | None = None,
        concurrency_limit: int = 0,
    ) -> tuple[ApiKeyRecord, str]:
        """A new key for an existing account, and its secret: the only time it is seen."""
        settings = ApiKeySettings(
            display_name=display_name,
            allowed_models=tuple(allowed_models),
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            spend_limit_micros=spend_limit_micros,
            expire_time=expire_time,
            concurrency_limit=concurrency_limit,
        )
        call = partial(api_keys.create_api_key, account_id=account_id, settings=settings, pepper=pepper)
        return await self._db.run(call, write=True)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord:
        """One key; NOT_FOUND if there is none with this id."""
        return await self._db.run(partial(api_keys.get_api_key, key_id=key_id))

    async def get_api_key_for_auth(self, key_id: str) -> ApiKeyCredential | None:
        """The key and its stored hash, or None; one primary-key lookup."""
        return await self._db.run(partial(api_keys.get_api_key_for_auth, key_id=key_id))

    async def list_api_keys(
        self, account_id: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ApiKeyRecord], str]:
        """A page of keys (of one account, if given), oldest first, and the next token."""
        call = partial(api_keys.list_api_keys, account_id=account_id, requested_size=page_size, token=page_token)
        return await self._db.run(call)

    async def update_api_key(
        self,
        key_id: str,
        *,
        display_name: str | None = None,
        allowed_models: Sequence[str] | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        spend_limit_micros: int | None = None,
        expire_time: datetime | None = None,
        clear_expire_time: bool = False,
        concurrency_limit: int | None = None,
    ) -> ApiKeyRecord:
        """Changes the given fields of a key (None leaves a field as it is)."""
        change = ApiKeyUpdate(
            display_name=display_name,
            allowed_models=None if allowed_models is None else tuple(allowed_models),
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            spend_limit_micros=spend_limit_micros,
            expire_time=expire_time,
            clear_expire_time=clear_expire_time,
            concurrency_limit=concurrency_limit,
        )
        return await self._db.run(partial(api_keys.update_api_key, key_id=key_id, update=change), write=True)

    async def revoke_api_key(self, key_id: str) -> ApiKeyRecord:
        """Revokes a key for good; idempotent."""
        return await self._db.run(partial(api_keys.revoke_api_key, key_id=key_id), write=True)

    async def create_first_account(
        self, display_name: str, *, pepper: str, credit_micros: int, request_id: str, key_name: str
    ) -> tuple[AccountRecord, ApiKeyRecord, str] | None:
        """Creates a credited account with one key, only while no account exists.

        All or nothing in one transaction. None when accounts already exist, or
        when another process did the same at the same moment (the shared
        request_id then collides and this attempt rolls back).
        """
        call = partial(
            _create_first_account,
            display_name=display_name,
            pepper=pepper,
            credit_micros=credit_micros,
            request_id=request_id,
            key_name=key_name,
        )
        try:
            return await self._db.run(call, write=True)
        except IntegrityError:
            return None


def _create_first_account(
    session: Session, display_name: str, pepper: str, credit_micros: int, request_id: str, key_name: str
) -> tuple[AccountRecord, ApiKeyRecord, str] | None:
    if accounts.count_accounts(session) > 0:
        return None
    account = accounts.create_account(session, display_name)
    account, _ = ledger_entries.top_up(session, account.id, credit_micros, request_id, note="initial credit")
    key, secret = api_keys.create_api_key(session, account.id, ApiKeySettings(display_name=key_name), pepper)
    return account, key, secret


async def open_store(
    url: str,
    *,
    workers: int = 4,
    migrate: bool = True,
    max_overflow: int | None = None,
    pool_timeout_seconds: float = 30.0,
) -> Store:
    """Opens the database at url, migrating it to the newest schema (unless migrate is False), as a Store."""
    db = await Database.open(
        url, workers=workers, migrate=migrate, max_overflow=max_overflow, pool_timeout_seconds=pool_timeout_seconds
    )
    return Store(db)
