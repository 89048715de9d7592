"""The money path in SQL: reserve a hold, settle it once, release it. Plain functions on a Session.

Only metering.Ledger calls these, each inside one write transaction. Every
change of money is a conditional UPDATE whose WHERE carries the rule (enough
available balance, within the key's spend limit, the hold still open), so
concurrent callers on any number of processes cannot both pass a check:
there is no read-then-write anywhere. Each balance or held change is written
together with the ledger entry that explains it.

This is the hot path of every request, so the statements are built once, at
import, with named parameters, compiled once per dialect and run on the raw
DBAPI connection (store/lean.py): no ORM unit of work, no per-call statement
machinery. The functions on a LeanConnection (reserve, settle, release) are
what the Ledger runs; the ones on a Session wrap them for other callers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, case, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from gateway_core.errors import GatewayError, Reason, invalid_request
from gateway_core.metering.outcome import Settlement, UsageOutcome, UsageStatus
from gateway_core.store.accounts import account_not_found
from gateway_core.store.api_keys import key_not_found
from gateway_core.store.clock import transaction_now
from gateway_core.store.lean import LeanConnection, lean_connection
from gateway_core.store.models import Account, ApiKey, Hold, HoldStatus, LedgerEntry, LedgerKind
from gateway_core.store.records import HoldRecord
from gateway_core.store.usage_records import insert_usage

ACCOUNT_CANNOT_COVER = "You exceeded your current quota: the account's balance cannot cover this request."
BUDGET_USED_UP = (
    "You exceeded your current quota: the account's monthly budget cannot cover this request. "
    "It resets on the 1st of next month (UTC)."
)
KEY_CANNOT_COVER = "You exceeded your current quota: this API key's spend limit cannot cover this request."
MAX_REQUEST_ID = 255
MAX_NAME = 200
# What an abandoned record says when the hold did not know its model or provider.
UNKNOWN = "unknown"


_ACCOUNTS: Table = Account.__table__  # type: ignore[attr-defined]
_KEYS: Table = ApiKey.__table__  # type: ignore[attr-defined]
_HOLDS: Table = Hold.__table__  # type: ignore[attr-defined]
_ENTRIES: Table = LedgerEntry.__table__  # type: ignore[attr-defined]

# Parameters are named b_*: SQLAlchemy reserves column names for SET/VALUES.
# Counted against the monthly budget in month b_period: spending of an older month is not.
_BUDGET_SPENT = case(
    (_ACCOUNTS.c.budget_period >= bindparam("b_period"), _ACCOUNTS.c.budget_spent_micros), else_=0
)
# The month only moves forward, even if a settle from a skewed clock arrives late.
_BUDGET_PERIOD = case(
    (_ACCOUNTS.c.budget_period >= bindparam("b_period"), _ACCOUNTS.c.budget_period), else_=bindparam("b_period")
)
# Holds b_amount if the account's available balance covers it and its monthly
# budget (0 = none) has room; the month rolls over in this same statement.
_RESERVE_ON_ACCOUNT = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("b_account_id"))
    .where(_ACCOUNTS.c.balance_micros - _ACCOUNTS.c.held_micros >= bindparam("b_amount"))
    .where(
        or_(
            _ACCOUNTS.c.monthly_budget_micros == 0,
            _BUDGET_SPENT + _ACCOUNTS.c.budget_held_micros + bindparam("b_amount") <= _ACCOUNTS.c.monthly_budget_micros,
        )
    )
    .values(
        held_micros=_ACCOUNTS.c.held_micros + bindparam("b_amount"),
        budget_spent_micros=_BUDGET_SPENT,
        budget_period=_BUDGET_PERIOD,
        budget_held_micros=_ACCOUNTS.c.budget_held_micros + bindparam("b_amount"),
        updated_at=bindparam("b_now"),
    )
    .returning(_ACCOUNTS.c.balance_micros)
)
# Holds b_amount against the key (of that account) if its spend limit allows; 0 means no limit.
_RESERVE_ON_KEY = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("b_key_id"), _KEYS.c.account_id == bindparam("b_account_id"))
    .where(
        or_(
            _KEYS.c.spend_limit_micros == 0,
            _KEYS.c.spent_micros + _KEYS.c.held_micros + bindparam("b_amount") <= _KEYS.c.spend_limit_micros,
        )
    )
    .values(held_micros=_KEYS.c.held_micros + bindparam("b_amount"))
)
# Every column of a hold, in HoldRecord's order: the hold INSERT binds them all (lean.py gives no defaults).
_HOLD_COLUMNS = tuple(_HOLDS.c.keys())
assert _HOLD_COLUMNS == tuple(field.name for field in fields(HoldRecord)), "holds columns and HoldRecord differ"
_STATUS_INDEX = _HOLD_COLUMNS.index("status")
_INSERT_HOLD = insert(_HOLDS)
# The one guard of exactly-once: only the caller whose UPDATE flips 'open' moves money.
_CLOSE = (
    update(_HOLDS)
    .where(_HOLDS.c.request_id == bindparam("b_request_id"), _HOLDS.c.status == HoldStatus.OPEN.value)
    .values(status=bindparam("b_status"), closed_at=bindparam("b_now"))
    .returning(*_HOLDS.c)
)
_RECORD_CHARGE = (
    update(_HOLDS)
    .where(_HOLDS.c.request_id == bindparam("b_request_id"))
    .values(charged_micros=bindparam("b_charged"), balance_after_micros=bindparam("b_balance_after"))
)
# The CHECK on accounts (0 <= held <= balance) backs this up inside the database.
_DEBIT_ACCOUNT = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("b_account_id"))
    .values(
        balance_micros=_ACCOUNTS.c.balance_micros - bindparam("b_charged"),
        held_micros=_ACCOUNTS.c.held_micros - bindparam("b_held"),
        budget_spent_micros=_BUDGET_SPENT + bindparam("b_charged"),
        budget_period=_BUDGET_PERIOD,
        # Holds taken before migration 0003 never added to budget_held_micros.
        budget_held_micros=case(
            (_ACCOUNTS.c.budget_held_micros >= bindparam("b_held"), _ACCOUNTS.c.budget_held_micros - bindparam("b_held")),
            else_=0,
        ),
        updated_at=bindparam("b_now"),
    )
    .returning(_ACCOUNTS.c.balance_micros)
)
_DEBIT_KEY = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("b_key_id"))
    .values(
        spent_micros=_KEYS.c.spent_micros + bindparam("b_charged"),
        held_micros=_KEYS.c.held_micros - bindparam("b_held"),
    )
)
_ENTRY_COLUMNS = (
    "account_id",
    "kind",
    "amount_micros",
    "held_delta_micros",
    "balance_after_micros",
    "request_id",
    "note",
    "created_at",
)


def _insert_entries(count: int) -> Any:
    """One INSERT of count ledger entries (a settlement writes SETTLE and RELEASE in one statement)."""
    # Typed like their columns: a multi-row VALUES does not type its bind parameters by itself.
    rows = [
        {name: bindparam(f"b_{name}_{index}", type_=_ENTRIES.c[name].type) for name in _ENTRY_COLUMNS}
        for index in range(count)
    ]
    return insert(_ENTRIES).values(rows)


_INSERT_ENTRIES = {1: _insert_entries(1), 2: _insert_entries(2)}
_SELECT_HOLD = select(_HOLDS).where(_HOLDS.c.request_id == bindparam("b_request_id"))
# Read only to word a refusal (the UPDATEs decided): is it the balance or the monthly budget?
_SELECT_BUDGET = select(
    _ACCOUNTS.c.monthly_budget_micros, _ACCOUNTS.c.budget_period, _ACCOUNTS.c.budget_spent_micros,
    _ACCOUNTS.c.budget_held_micros,
).where(_ACCOUNTS.c.id == bindparam("b_account_id"))
_SELECT_KEY_ACCOUNT = select(_KEYS.c.account_id).where(_KEYS.c.id == bindparam("b_key_id"))


@dataclass(frozen=True)
class HoldRequest:
    """What to reserve, for which request, on behalf of which core process."""

    request_id: str
    account_id: str
    api_key_id: str
    amount_micros: int
    instance_id: str
    model: str = ""
    provider: str = ""
    upstream_model: str = ""


def check_hold_request(request: HoldRequest) -> None:
    """Refuses a hold that could not be stored (or is a programming error: a negative amount)."""
    if not request.request_id or len(request.request_id) > MAX_REQUEST_ID:
        raise invalid_request(f"request_id must be 1 to {MAX_REQUEST_ID} characters", param="request_id")
    if request.amount_micros < 0:
        raise ValueError("a hold amount must not be negative")
    if max(len(request.model), len(request.provider), len(request.upstream_model)) > MAX_NAME:
        raise invalid_request(f"model and provider names are at most {MAX_NAME} characters", param="model")


def reserve(lean: LeanConnection, request: HoldRequest) -> HoldRecord:
    """Reserves amount_micros on the account and its key, or raises INSUFFICIENT_BALANCE.

    A request_id seen before is ALREADY_EXISTS. Any error leaves nothing
    changed: the caller's transaction (or savepoint) rolls back as a whole.
    """
    check_hold_request(request)
    now = transaction_now(lean)
    period = budget_period(now)
    ids = {"b_account_id": request.account_id, "b_amount": request.amount_micros}
    reserved = lean.first(_RESERVE_ON_ACCOUNT, {**ids, "b_now": now, "b_period": period})
    if reserved is None:
        raise _account_cannot_cover(lean, request, period)
    if lean.execute(_RESERVE_ON_KEY, {**ids, "b_key_id": request.api_key_id}) != 1:
        key = lean.first(_SELECT_KEY_ACCOUNT, {"b_key_id": request.api_key_id})
        if key is None or key[0] != request.account_id:
            raise key_not_found(request.api_key_id)
        raise GatewayError(Reason.INSUFFICIENT_BALANCE, KEY_CANNOT_COVER)
    record = HoldRecord(
        request_id=request.request_id,
        account_id=request.account_id,
        api_key_id=request.api_key_id,
        amount_micros=request.amount_micros,
        status=HoldStatus.OPEN,
        instance_id=request.instance_id,
        model=request.model,
        provider=request.provider,
        upstream_model=request.upstream_model,
        charged_micros=0,
        balance_after_micros=None,
        created_at=now,
        closed_at=None,
    )
    try:
        lean.execute(_INSERT_HOLD, _hold_row(record), column_keys=_HOLD_COLUMNS)
    except IntegrityError:
        # Account and key were just updated, so only the primary key can clash.
        raise GatewayError(
            Reason.ALREADY_EXISTS, "a request with this request_id was already admitted", param="request_id"
        ) from None
    if request.amount_micros > 0:  # a free request moves no money, so it needs no entry
        entry = _entry(record, LedgerKind.HOLD, amount=0, held_delta=request.amount_micros, balance_after=reserved[0])
        _append(lean, [entry])
    return record


def _hold_row(record: HoldRecord) -> dict[str, Any]:
    """The hold's row for the INSERT (dataclasses.asdict would deep-copy every value)."""
    row = {name: getattr(record, name) for name in _HOLD_COLUMNS}
    row["status"] = record.status.value
    return row


def create_hold(session: Session, request: HoldRequest) -> HoldRecord:
    """reserve() inside a Session's transaction."""
    return reserve(lean_connection(session), request)


def budget_period(now: datetime) -> int:
    """The UTC calendar month of now as YYYYMM: the monthly budget's period."""
    utc = now.astimezone(UTC)
    return utc.year * 100 + utc.month


def _account_cannot_cover(lean: LeanConnection, request: HoldRequest, period: int) -> GatewayError:
    """Why the reservation failed, read after the fact only to word the error (the UPDATE decided)."""
    row = lean.first(_SELECT_BUDGET, {"b_account_id": request.account_id})
    if row is None:  # NOT_FOUND rather than a misleading quota error
        return account_not_found(request.account_id)
    monthly_budget, spent_period, spent, budget_held = (int(value) for value in row)
    spent = spent if spent_period >= period else 0
    over_budget = monthly_budget > 0 and spent + budget_held + request.amount_micros > monthly_budget
    return GatewayError(Reason.INSUFFICIENT_BALANCE, BUDGET_USED_UP if over_budget else ACCOUNT_CANNOT_COVER)


def settle(lean: LeanConnection, request_id: str, outcome: UsageOutcome) -> Settlement:
    """Charges what the request cost (at most the hold), releases the rest, writes its usage record.

    Exactly once per request_id: a hold that is no longer open returns the
    settlement (or release) that closed it, with replayed=True.
    """
    hold = _close(lean, request_id, HoldStatus.SETTLED)
    if hold is None:
        return read_settlement(lean, request_id)
    charged = min(max(outcome.cost_micros, 0), hold.amount_micros)
    balance_after = _move_money(lean, hold, charged)
    clamped = outcome.clamped or charged != outcome.cost_micros
    insert_usage(lean, hold, outcome, charged_micros=charged, clamped=clamped)
    return Settlement(request_id, charged, hold.amount_micros - charged, balance_after, replayed=False)


def settle_hold(session: Session, request_id: str, outcome: UsageOutcome) -> Settlement:
    """settle() inside a Session's transaction."""
    return settle(lean_connection(session), request_id, outcome)


def release(lean: LeanConnection, request_id: str) -> bool:
    """Releases an open hold whose process died: no charge, an 'abandoned' usage record.

    False if the hold was no longer open (settled or released by someone else).
    """
    hold = _close(lean, request_id, HoldStatus.RELEASED)
    if hold is None:
        return False
    _move_money(lean, hold, 0)
    abandoned = UsageOutcome(
        model=hold.model or UNKNOWN,
        provider=hold.provider or UNKNOWN,
        upstream_model=hold.upstream_model or UNKNOWN,
        prompt_tokens=0,
        completion_tokens=0,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_micros=0,
        status=UsageStatus.ABANDONED,
        latency_ms=0,
        time_to_first_token_ms=None,
        estimated=True,
    )
    insert_usage(lean, hold, abandoned, charged_micros=0, clamped=False)
    return True


def release_hold(session: Session, request_id: str) -> bool:
    """release() inside a Session's transaction."""
    return release(lean_connection(session), request_id)


def read_settlement(lean: LeanConnection, request_id: str) -> Settlement:
    """How a closed hold ended, as a replayed Settlement; NOT_FOUND for an unknown request."""
    row = lean.first(_SELECT_HOLD, {"b_request_id": request_id})
    if row is None:
        raise GatewayError(Reason.NOT_FOUND, "no hold exists for this request_id", param="request_id")
    hold = _record(row)
    if hold.status == HoldStatus.OPEN or hold.balance_after_micros is None:
        # Only reachable if the conditional close failed for another reason.
        raise RuntimeError(f"hold {request_id!r} is still open")
    return Settlement(request_id, hold.charged_micros, hold.released_micros, hold.balance_after_micros, replayed=True)


def stored_settlement(session: Session, request_id: str) -> Settlement:
    """read_settlement() inside a Session's transaction."""
    return read_settlement(lean_connection(session), request_id)


def get_hold(session: Session, request_id: str) -> HoldRecord | None:
    """The hold for request_id, if one was ever admitted."""
    row = lean_connection(session).first(_SELECT_HOLD, {"b_request_id": request_id})
    return None if row is None else _record(row)


def _record(row: tuple[Any, ...]) -> HoldRecord:
    values = list(row)  # the columns are in HoldRecord's field order (checked at import)
    values[_STATUS_INDEX] = HoldStatus(values[_STATUS_INDEX])
    return HoldRecord(*values)


def _close(lean: LeanConnection, request_id: str, status: HoldStatus) -> HoldRecord | None:
    now = transaction_now(lean)
    row = lean.first(_CLOSE, {"b_request_id": request_id, "b_status": status.value, "b_now": now})
    if row is None:
        return None
    # closed_at is the now just bound (read back equal): keeping the very object lets the
    # statements after this reuse its conversion (lean.py, _remember_last).
    return replace(_record(row), closed_at=now)


def _move_money(lean: LeanConnection, hold: HoldRecord, charged: int) -> int:
    """Debits charged, un-holds the whole hold on account and key, ledgers both; the balance after."""
    held = hold.amount_micros
    assert hold.closed_at is not None, "money moves only when a hold closes"
    money = {"b_charged": charged, "b_held": held, "b_period": budget_period(hold.closed_at)}
    debited = lean.first(_DEBIT_ACCOUNT, {**money, "b_account_id": hold.account_id, "b_now": hold.closed_at})
    if debited is None:  # the hold's foreign key makes this unreachable; never move money half-way
        raise RuntimeError(f"account {hold.account_id!r} of hold {hold.request_id!r} is missing")
    balance_after = int(debited[0])
    lean.execute(_DEBIT_KEY, {**money, "b_key_id": hold.api_key_id})
    entries = []
    if charged > 0:
        entries.append(_entry(hold, LedgerKind.SETTLE, amount=-charged, held_delta=-charged, balance_after=balance_after))
    if held - charged > 0:
        entries.append(_entry(hold, LedgerKind.RELEASE, amount=0, held_delta=charged - held, balance_after=balance_after))
    if entries:
        _append(lean, entries)
    lean.execute(_RECORD_CHARGE, {"b_request_id": hold.request_id, "b_charged": charged, "b_balance_after": balance_after})
    return balance_after


def _entry(
    hold: HoldRecord, kind: LedgerKind, *, amount: int, held_delta: int, balance_after: int
) -> tuple[Any, ...]:
    """One ledger entry for the hold (in _ENTRY_COLUMNS order), stamped with the time of the transaction."""
    created = hold.closed_at or hold.created_at
    return (hold.account_id, kind.value, amount, held_delta, int(balance_after), hold.request_id, "", created)


def _append(lean: LeanConnection, entries: list[tuple[Any, ...]]) -> None:
    """Writes the entries in one INSERT."""
    params = {
        f"b_{name}_{index}": value
        for index, entry in enumerate(entries)
        for name, value in zip(_ENTRY_COLUMNS, entry, strict=True)
    }
    lean.execute(_INSERT_ENTRIES[len(entries)], params)
