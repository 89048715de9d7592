"""Top-ups and reading the ledger. Plain functions on a Session.

A balance changes only in the same transaction as the ledger entry that
explains it, so the sum of an account's entries always equals its balance.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text, update
from sqlmodel import Session, col, select

from gateway_core.errors import invalid_request
from gateway_core.store.accounts import account_not_found, load_account
from gateway_core.store.models import NOT_A_REQUEST_ENTRY, Account, LedgerEntry, LedgerKind
from gateway_core.store.paging import decode_token, encode_token, page_size
from gateway_core.store.records import AccountRecord, LedgerEntryRecord

# One billion USD: far above any real top-up, far below int64 overflow.
MAX_TOP_UP_MICROS = 10**15
MAX_REQUEST_ID = 255
MAX_NOTE = 1000


def check_top_up(amount_micros: int, request_id: str, note: str) -> None:
    """Refuses a top-up that is not positive, too large, unidentified or over-annotated."""
    if amount_micros <= 0:
        raise invalid_request("amount_micros must be positive", param="amount_micros")
    if amount_micros > MAX_TOP_UP_MICROS:
        raise invalid_request(f"amount_micros must be at most {MAX_TOP_UP_MICROS}", param="amount_micros")
    if not request_id or len(request_id) > MAX_REQUEST_ID:
        # Required: without an id a retried top-up would credit twice.
        raise invalid_request(
            f"request_id is required (at most {MAX_REQUEST_ID} characters), so a retry credits once",
            param="request_id",
        )
    if len(note) > MAX_NOTE:
        raise invalid_request(f"note is longer than {MAX_NOTE} characters", param="note")


def find_top_up(session: Session, request_id: str) -> LedgerEntry | None:
    """The top-up entry already written for request_id, if any."""
    query = select(LedgerEntry).where(
        col(LedgerEntry.kind) == LedgerKind.TOP_UP.value,
        col(LedgerEntry.request_id) == request_id,
        text(NOT_A_REQUEST_ENTRY),  # verbatim, so the partial unique index serves it (models.py)
    )
    return session.exec(query).first()


def top_up(
    session: Session, account_id: str, amount_micros: int, request_id: str, note: str
) -> tuple[AccountRecord, LedgerEntryRecord]:
    """Credits an account once per request_id; a retry returns the original entry.

    Reusing a request_id for another account or amount is an INVALID_REQUEST.
    Concurrent duplicates are stopped by the unique (kind, request_id) index:
    the loser's transaction fails with IntegrityError and the caller retries,
    which then finds the winner's entry.
    """
    check_top_up(amount_micros, request_id, note)
    existing = find_top_up(session, request_id)
    if existing is not None:
        if existing.account_id != account_id or existing.amount_micros != amount_micros:
            raise invalid_request(
                "request_id was already used for a different top-up (account or amount differ)",
                param="request_id",
            )
        return AccountRecord.from_row(load_account(session, account_id)), LedgerEntryRecord.from_row(existing)
    now = datetime.now(UTC)
    balance_after = session.exec(
        update(Account)
        .where(col(Account.id) == account_id)
        .values(balance_micros=col(Account.balance_micros) + amount_micros, updated_at=now)
        .returning(col(Account.balance_micros))
    ).scalar_one_or_none()
    if balance_after is None:
        raise account_not_found(account_id)
    entry = LedgerEntry(
        account_id=account_id,
        kind=LedgerKind.TOP_UP.value,
        amount_micros=amount_micros,
        balance_after_micros=balance_after,
        request_id=request_id,
        note=note,
        created_at=now,
    )
    session.add(entry)
    session.flush()
    account = session.get(Account, account_id, populate_existing=True)
    assert account is not None
    return AccountRecord.from_row(account), LedgerEntryRecord.from_row(entry)


def list_ledger_entries(
    session: Session, account_id: str, requested_size: int, token: str
) -> tuple[list[LedgerEntryRecord], str]:
    """A page of an account's entries, newest first, and the next page's token."""
    size = page_size(requested_size)
    load_account(session, account_id)
    query = (
        select(LedgerEntry)
        .where(col(LedgerEntry.account_id) == account_id)
        .order_by(col(LedgerEntry.id).desc())
        .limit(size + 1)
    )
    cursor = decode_token(token, (int,))
    if cursor is not None:
        query = query.where(col(LedgerEntry.id) < cursor[0])
    rows = list(session.exec(query))
    page = [LedgerEntryRecord.from_row(row) for row in rows[:size]]
    return page, encode_token(page[-1].id) if len(rows) > size else ""
