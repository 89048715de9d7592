"""Account rows: create, read, page, rename. Plain functions on a Session.

Balances are not changed here: only ledger functions move money.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_
from sqlmodel import Session, col, select

from gateway_core.errors import GatewayError, Reason, invalid_request
from gateway_core.keys import random_base62
from gateway_core.store.models import Account
from gateway_core.store.paging import cursor_time, decode_token, encode_token, page_size
from gateway_core.store.records import AccountRecord

ACCOUNT_ID_PREFIX = "acct_"
ACCOUNT_ID_RANDOM_LENGTH = 16
MAX_DISPLAY_NAME = 200


def new_account_id() -> str:
    """A fresh "acct_" id with about 95 random bits."""
    return ACCOUNT_ID_PREFIX + random_base62(ACCOUNT_ID_RANDOM_LENGTH)


def check_display_name(name: str, *, required: bool) -> str:
    """A display name without surrounding spaces; rejects empty (when required) or long names."""
    name = name.strip()
    if required and not name:
        raise invalid_request("display_name is required", param="display_name")
    if len(name) > MAX_DISPLAY_NAME:
        raise invalid_request(f"display_name is longer than {MAX_DISPLAY_NAME} characters", param="display_name")
    return name


def account_not_found(account_id: str) -> GatewayError:
    """The NOT_FOUND error for an unknown account id."""
    return GatewayError(Reason.NOT_FOUND, f"account {account_id!r} does not exist", param="account_id")


def load_account(session: Session, account_id: str) -> Account:
    """The account row, or NOT_FOUND."""
    row = session.get(Account, account_id)
    if row is None:
        raise account_not_found(account_id)
    return row


@dataclass(frozen=True)
class AccountLimitsUpdate:
    """Changes to an account's limits; None leaves a field as it is, 0 removes the limit."""

    rpm_limit: int | None = None
    tpm_limit: int | None = None
    concurrency_limit: int | None = None
    monthly_budget_micros: int | None = None
    # Empty: every model.
    allowed_models: tuple[str, ...] | None = None

    def changes(self) -> dict[str, Any]:
        """The fields to set, each checked: a limit is 0 (none) or positive."""
        result: dict[str, Any] = {name: value for name, value in asdict(self).items() if value is not None}
        for name, value in result.items():
            if name == "allowed_models":
                # Imported here: api_keys imports this module (the same rule applies to both lists).
                from gateway_core.store.api_keys import check_models

                result[name] = list(check_models(value))
            elif value < 0:
                raise invalid_request(f"{name} must be 0 (no limit) or positive", param=name)
        return result


def create_account(session: Session, display_name: str, limits: AccountLimitsUpdate | None = None) -> AccountRecord:
    """Inserts an account with a zero balance and the limits given."""
    now = datetime.now(UTC)
    row = Account(
        id=new_account_id(),
        display_name=check_display_name(display_name, required=True),
        balance_micros=0,
        held_micros=0,
        created_at=now,
        updated_at=now,
        **(limits.changes() if limits is not None else {}),
    )
    session.add(row)
    session.flush()
    return AccountRecord.from_row(row)


def get_account(session: Session, account_id: str) -> AccountRecord:
    """One account, or NOT_FOUND."""
    return AccountRecord.from_row(load_account(session, account_id))


def update_account(
    session: Session, account_id: str, display_name: str | None, limits: AccountLimitsUpdate | None = None
) -> AccountRecord:
    """Changes the fields given (not None); returns the account."""
    row = load_account(session, account_id)
    changes = limits.changes() if limits is not None else {}
    if display_name is not None:
        row.display_name = check_display_name(display_name, required=True)
    for name, value in changes.items():
        setattr(row, name, value)
    if display_name is not None or changes:
        row.updated_at = datetime.now(UTC)
        session.add(row)
        session.flush()
    return AccountRecord.from_row(row)


def count_accounts(session: Session) -> int:
    """How many accounts exist."""
    return int(session.exec(select(func.count()).select_from(Account)).one())


def list_accounts(session: Session, requested_size: int, token: str) -> tuple[list[AccountRecord], str]:
    """A page of accounts, oldest first, and the next page's token ("" at the end)."""
    size = page_size(requested_size)
    query = select(Account).order_by(col(Account.created_at), col(Account.id)).limit(size + 1)
    cursor = decode_token(token, (str, str))
    if cursor is not None:
        after_time, after_id = cursor_time(str(cursor[0])), str(cursor[1])
        query = query.where(
            or_(
                col(Account.created_at) > after_time,
                and_(col(Account.created_at) == after_time, col(Account.id) > after_id),
            )
        )
    rows = list(session.exec(query))
    page = [AccountRecord.from_row(row) for row in rows[:size]]
    more = len(rows) > size
    return page, encode_token(page[-1].created_at.isoformat(), page[-1].id) if more else ""
