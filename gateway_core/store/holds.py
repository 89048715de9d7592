"""The money path in SQL: reserve a hold, settle it once, release it. Plain functions on a LeanConnection.

Only metering.Ledger calls these, each inside one write transaction. Every
change of money is a conditional UPDATE whose WHERE carries the rule (enough
available balance, within the key's spend limit, the hold still open), so
concurrent callers on any number of processes cannot both pass a check:
there is no read-then-write anywhere. Each balance or held change is written
together with the ledger entry that explains it.

This is the hot path of every request, so the statements are built once, at
import, with named parameters, and each is declared with its parameters in a
fixed order (LeanStatement): compiled once per dialect into SQL plus a
generated binder, and run on the raw DBAPI connection with a tuple of values
(store/lean.py): no ORM unit of work, no per-call statement machinery, no
dicts. The functions on a LeanConnection (reserve, settle, release) are what
the Ledger runs; release_hold and get_hold run them inside a Session (the
orphan sweep, tools).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Table, bindparam, case, func, insert, null, or_, select, type_coerce, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import NullType
from sqlmodel import Session

from gateway_core.errors import GatewayError, Reason, invalid_request
from gateway_core.metering.outcome import Hold as AdmittedHold
from gateway_core.metering.outcome import Settlement, UsageOutcome, UsageStatus
from gateway_core.store.accounts import account_not_found
from gateway_core.store.api_keys import key_not_found
from gateway_core.store.clock import transaction_now
from gateway_core.store.lean import LeanConnection, LeanStatement, lean_connection
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
# budget (0 = none) has room; the month rolls over in this same statement. Without RETURNING:
# on SQLite a RETURNING clause costs more than the rest of such an UPDATE (it is run through
# an ephemeral table), and the hold's ledger entry reads the balance itself (_INSERT_HOLD_ENTRY).
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
# An open hold's row: every column but the two a closing writes, which start NULL. The NULLs are
# written into the SQL rather than bound: the driver sends a bound None through its adapter
# lookup, which raises and clears two AttributeErrors (~3k instructions per value).
_CLOSING_COLUMNS = ("balance_after_micros", "closed_at")
_OPEN_HOLD_COLUMNS = tuple(name for name in _HOLD_COLUMNS if name not in _CLOSING_COLUMNS)
_INSERT_HOLD = insert(_HOLDS).values({name: null() for name in _CLOSING_COLUMNS})
# The one guard of exactly-once: only the caller whose UPDATE flips 'open' moves money.
_CLOSED_HOLD = (
    _HOLDS.c.account_id,
    _HOLDS.c.api_key_id,
    _HOLDS.c.amount_micros,
    _HOLDS.c.model,
    _HOLDS.c.provider,
    _HOLDS.c.upstream_model,
    # As stored (no conversion): it is only written again, into the usage record (insert_usage).
    type_coerce(_HOLDS.c.created_at, NullType()),
)
_CLOSE = (
    update(_HOLDS)
    .where(_HOLDS.c.request_id == bindparam("b_request_id"), _HOLDS.c.status == HoldStatus.OPEN.value)
    .values(status=bindparam("b_status"), closed_at=bindparam("b_now"))
    .returning(*_CLOSED_HOLD)
)
# SQLite: _CLOSE that also records the charge (min(max(cost, 0), amount)) and the balance after it,
# read from the account in the same statement: one statement per settlement fewer than _CLOSE and
# _RECORD_CHARGE. Sound because SQLite has one writer: inside this BEGIN IMMEDIATE transaction
# nothing else moves the balance before the debit, which applies only if it leaves exactly the
# recorded balance (_DEBIT_RECORDED). PostgreSQL keeps the two statements: under Read Committed
# another settlement of the account may commit between this read and the debit.
# No RETURNING (see _RESERVE_ON_ACCOUNT): the closed hold is read back by _SELECT_CLOSED, a lookup
# by primary key that costs less than RETURNING's ephemeral table.
_CHARGE = func.min(func.max(bindparam("b_cost", type_=BigInteger), 0), _HOLDS.c.amount_micros)
_BALANCE_BEFORE = select(_ACCOUNTS.c.balance_micros).where(_ACCOUNTS.c.id == _HOLDS.c.account_id).scalar_subquery()
_CLOSE_CHARGED = (
    update(_HOLDS)
    .where(_HOLDS.c.request_id == bindparam("b_request_id"), _HOLDS.c.status == HoldStatus.OPEN.value)
    .values(
        status=bindparam("b_status"),
        closed_at=bindparam("b_now"),
        charged_micros=_CHARGE,
        balance_after_micros=_BALANCE_BEFORE - _CHARGE,
    )
)
_SELECT_CLOSED = select(*_CLOSED_HOLD, _HOLDS.c.charged_micros, _HOLDS.c.balance_after_micros).where(
    _HOLDS.c.request_id == bindparam("b_request_id")
)
_RECORD_CHARGE = (
    update(_HOLDS)
    .where(_HOLDS.c.request_id == bindparam("b_request_id"))
    .values(charged_micros=bindparam("b_charged"), balance_after_micros=bindparam("b_balance_after"))
)
# The CHECK on accounts (0 <= held <= balance) backs this up inside the database.
_DEBIT = {
    "balance_micros": _ACCOUNTS.c.balance_micros - bindparam("b_charged"),
    "held_micros": _ACCOUNTS.c.held_micros - bindparam("b_held"),
    "budget_spent_micros": _BUDGET_SPENT + bindparam("b_charged"),
    "budget_period": _BUDGET_PERIOD,
    # Holds taken before migration 0003 never added to budget_held_micros.
    "budget_held_micros": case(
        (_ACCOUNTS.c.budget_held_micros >= bindparam("b_held"), _ACCOUNTS.c.budget_held_micros - bindparam("b_held")),
        else_=0,
    ),
    "updated_at": bindparam("b_now"),
}
_DEBIT_ACCOUNT = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("b_account_id"))
    .values(_DEBIT)
    .returning(_ACCOUNTS.c.balance_micros)
)
# SQLite (see _CLOSE_CHARGED): the debit, only if it leaves the balance the closing UPDATE recorded.
_DEBIT_RECORDED = (
    update(_ACCOUNTS)
    .where(
        _ACCOUNTS.c.id == bindparam("b_account_id"),
        _ACCOUNTS.c.balance_micros - bindparam("b_charged") == bindparam("b_balance_after"),
    )
    .values(_DEBIT)
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
# A hold's entry, with the balance read in the statement itself: the account's row was just
# updated (and, on PostgreSQL, locked) by _RESERVE_ON_ACCOUNT in this same transaction.
_INSERT_HOLD_ENTRY = insert(_ENTRIES).values(
    {name: bindparam(f"b_{name}", type_=_ENTRIES.c[name].type) for name in _ENTRY_COLUMNS}
    | {"balance_after_micros": select(_ACCOUNTS.c.balance_micros).where(_ACCOUNTS.c.id == bindparam("b_account_id"))
       .scalar_subquery()}
)
_SELECT_HOLD = select(_HOLDS).where(_HOLDS.c.request_id == bindparam("b_request_id"))
# Read only to word a refusal (the UPDATEs decided): is it the balance or the monthly budget?
_SELECT_BUDGET = select(
    _ACCOUNTS.c.monthly_budget_micros, _ACCOUNTS.c.budget_period, _ACCOUNTS.c.budget_spent_micros,
    _ACCOUNTS.c.budget_held_micros,
).where(_ACCOUNTS.c.id == bindparam("b_account_id"))
_SELECT_KEY_ACCOUNT = select(_KEYS.c.account_id).where(_KEYS.c.id == bindparam("b_key_id"))

# The statements above with their parameters in the order the functions below bind them (store/lean.py).
_LEAN_RESERVE_ON_ACCOUNT = LeanStatement(_RESERVE_ON_ACCOUNT, ("b_account_id", "b_amount", "b_now", "b_period"))
_LEAN_RESERVE_ON_KEY = LeanStatement(_RESERVE_ON_KEY, ("b_account_id", "b_amount", "b_key_id"))
_LEAN_INSERT_HOLD = LeanStatement(_INSERT_HOLD, _OPEN_HOLD_COLUMNS, column_keys=_OPEN_HOLD_COLUMNS)
_LEAN_CLOSE = LeanStatement(_CLOSE, ("b_request_id", "b_status", "b_now"))
_LEAN_CLOSE_CHARGED = LeanStatement(_CLOSE_CHARGED, ("b_request_id", "b_status", "b_now", "b_cost"))
_LEAN_SELECT_CLOSED = LeanStatement(_SELECT_CLOSED, ("b_request_id",))
_LEAN_DEBIT_RECORDED = LeanStatement(
    _DEBIT_RECORDED, ("b_account_id", "b_charged", "b_held", "b_period", "b_now", "b_balance_after")
)
_LEAN_INSERT_HOLD_ENTRY = LeanStatement(
    _INSERT_HOLD_ENTRY, tuple(f"b_{name}" for name in _ENTRY_COLUMNS if name != "balance_after_micros")
)
_LEAN_RECORD_CHARGE = LeanStatement(_RECORD_CHARGE, ("b_request_id", "b_charged", "b_balance_after"))
_LEAN_DEBIT_ACCOUNT = LeanStatement(_DEBIT_ACCOUNT, ("b_account_id", "b_charged", "b_held", "b_period", "b_now"))
_LEAN_DEBIT_KEY = LeanStatement(_DEBIT_KEY, ("b_key_id", "b_charged", "b_held"))
_LEAN_INSERT_ENTRIES = {
    count: LeanStatement(statement, tuple(f"b_{name}_{index}" for index in range(count) for name in _ENTRY_COLUMNS))
    for count, statement in _INSERT_ENTRIES.items()
}
_LEAN_SELECT_HOLD = LeanStatement(_SELECT_HOLD, ("b_request_id",))
_LEAN_SELECT_BUDGET = LeanStatement(_SELECT_BUDGET, ("b_account_id",))
_LEAN_SELECT_KEY_ACCOUNT = LeanStatement(_SELECT_KEY_ACCOUNT, ("b_key_id",))
_OPEN, _SETTLED, _RELEASED = HoldStatus.OPEN.value, HoldStatus.SETTLED.value, HoldStatus.RELEASED.value
_HOLD_KIND, _SETTLE_KIND, _RELEASE_KIND = LedgerKind.HOLD.value, LedgerKind.SETTLE.value, LedgerKind.RELEASE.value


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


def reserve(lean: LeanConnection, request: HoldRequest) -> AdmittedHold:
    """Reserves amount_micros on the account and its key, or raises INSUFFICIENT_BALANCE.

    A request_id seen before is ALREADY_EXISTS. Any error leaves nothing
    changed: the caller's transaction (or savepoint) rolls back as a whole.
    """
    check_hold_request(request)
    now = transaction_now(lean)
    period = budget_period(now)
    account_id, amount, request_id = request.account_id, request.amount_micros, request.request_id
    if lean.count(_LEAN_RESERVE_ON_ACCOUNT, (account_id, amount, now, period)) != 1:
        raise _account_cannot_cover(lean, request, period)
    if lean.count(_LEAN_RESERVE_ON_KEY, (account_id, amount, request.api_key_id)) != 1:
        key = lean.one(_LEAN_SELECT_KEY_ACCOUNT, (request.api_key_id,))
        if key is None or key[0] != account_id:
            raise key_not_found(request.api_key_id)
        raise GatewayError(Reason.INSUFFICIENT_BALANCE, KEY_CANNOT_COVER)
    try:
        lean.count(_LEAN_INSERT_HOLD, hold_row(request, now))
    except IntegrityError:
        # Account and key were just updated, so only the primary key can clash.
        raise GatewayError(
            Reason.ALREADY_EXISTS, "a request with this request_id was already admitted", param="request_id"
        ) from None
    if amount > 0:  # a free request moves no money, so it needs no entry
        lean.count(_LEAN_INSERT_HOLD_ENTRY, hold_entry(request, now))
    # What the Ledger hands out, built here on the writer thread rather than from a full HoldRecord on the loop.
    return AdmittedHold(request_id, account_id, request.api_key_id, amount)


def hold_row(request: HoldRequest, now: datetime) -> tuple[Any, ...]:
    """The open hold of a request, in _OPEN_HOLD_COLUMNS order (HoldRecord's without the closing columns)."""
    return (
        request.request_id, request.account_id, request.api_key_id, request.amount_micros, _OPEN,
        request.instance_id, request.model, request.provider, request.upstream_model, 0, now,
    )  # fmt: skip


def hold_entry(request: HoldRequest, now: datetime) -> tuple[Any, ...]:
    """The ledger entry of a hold that moves money (_LEAN_INSERT_HOLD_ENTRY's parameters)."""
    return (request.account_id, _HOLD_KIND, 0, request.amount_micros, request.request_id, "", now)


def closing_entries(
    account_id: str, request_id: str, charged: int, held: int, balance_after: int, now: datetime
) -> tuple[tuple[Any, ...], ...]:
    """The ledger entries of a closing hold, in _ENTRY_COLUMNS order: the charge, then the rest
    un-held; either left out when it moves nothing (charged <= held always)."""
    settle_entry = (account_id, _SETTLE_KIND, -charged, -charged, balance_after, request_id, "", now)
    release_entry = (account_id, _RELEASE_KIND, 0, charged - held, balance_after, request_id, "", now)
    if charged > 0:
        return (settle_entry, release_entry) if held > charged else (settle_entry,)
    return (release_entry,) if held > 0 else ()


def budget_period(now: datetime) -> int:
    """The UTC calendar month of now as YYYYMM: the monthly budget's period."""
    utc = now if now.tzinfo is UTC else now.astimezone(UTC)
    return utc.year * 100 + utc.month


def _account_cannot_cover(lean: LeanConnection, request: HoldRequest, period: int) -> GatewayError:
    """Why the reservation failed, read after the fact only to word the error (the UPDATE decided)."""
    row = lean.one(_LEAN_SELECT_BUDGET, (request.account_id,))
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
    now = transaction_now(lean)
    closed = _close(lean, request_id, _SETTLED, now, outcome.cost_micros)
    if closed is None:
        return read_settlement(lean, request_id)
    hold, charged, recorded = closed
    amount = hold[2]
    clamped = outcome.clamped or charged != outcome.cost_micros
    balance_after = _move_money(lean, request_id, hold, charged, now, outcome, clamped, recorded)
    return Settlement(request_id, charged, amount - charged, balance_after, replayed=False)


def _close(
    lean: LeanConnection, request_id: str, status: str, now: datetime, cost: int
) -> tuple[tuple[Any, ...], int, int | None] | None:
    """Closes the open hold of request_id: its _CLOSE row, what it charges, and (SQLite) the balance after.

    None if the hold was not open. On SQLite the charge is already recorded on
    the hold (_CLOSE_CHARGED), read back with the balance after it
    (_SELECT_CLOSED) for _move_money's debit to match; elsewhere it is None and
    _move_money records both.
    """
    if lean.dialect.name == "sqlite":
        if lean.count(_LEAN_CLOSE_CHARGED, (request_id, status, now, cost)) != 1:
            return None
        row = lean.one(_LEAN_SELECT_CLOSED, (request_id,))
        assert row is not None  # closed just now, in this transaction
        return row[:7], row[7], row[8]
    hold = lean.one(_LEAN_CLOSE, (request_id, status, now))
    return None if hold is None else (hold, min(max(cost, 0), hold[2]), None)


def release(lean: LeanConnection, request_id: str) -> bool:
    """Releases an open hold whose process died: no charge, an 'abandoned' usage record.

    False if the hold was no longer open (settled or released by someone else).
    """
    now = transaction_now(lean)
    closed = _close(lean, request_id, _RELEASED, now, 0)
    if closed is None:
        return False
    hold, _, recorded = closed
    _, _, _, model, provider, upstream_model, _ = hold
    abandoned = UsageOutcome(
        model=model or UNKNOWN,
        provider=provider or UNKNOWN,
        upstream_model=upstream_model or UNKNOWN,
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
    _move_money(lean, request_id, hold, 0, now, abandoned, False, recorded)
    return True


def release_hold(session: Session, request_id: str) -> bool:
    """release() inside a Session's transaction (the orphan sweep's batches)."""
    return release(lean_connection(session), request_id)


def read_settlement(lean: LeanConnection, request_id: str) -> Settlement:
    """How a closed hold ended, as a replayed Settlement; NOT_FOUND for an unknown request."""
    row = lean.one(_LEAN_SELECT_HOLD, (request_id,))
    if row is None:
        raise GatewayError(Reason.NOT_FOUND, "no hold exists for this request_id", param="request_id")
    hold = _record(row)
    if hold.status == HoldStatus.OPEN or hold.balance_after_micros is None:
        # Only reachable if the conditional close failed for another reason.
        raise RuntimeError(f"hold {request_id!r} is still open")
    return Settlement(request_id, hold.charged_micros, hold.released_micros, hold.balance_after_micros, replayed=True)


def get_hold(session: Session, request_id: str) -> HoldRecord | None:
    """The hold for request_id, if one was ever admitted."""
    row = lean_connection(session).one(_LEAN_SELECT_HOLD, (request_id,))
    return None if row is None else _record(row)


def _record(row: tuple[Any, ...]) -> HoldRecord:
    values = list(row)  # the columns are in HoldRecord's field order (checked at import)
    values[_STATUS_INDEX] = HoldStatus(values[_STATUS_INDEX])
    return HoldRecord(*values)


def _move_money(
    lean: LeanConnection,
    request_id: str,
    hold: tuple[Any, ...],
    charged: int,
    now: datetime,
    outcome: UsageOutcome,
    clamped: bool,
    recorded_balance: int | None,
) -> int:
    """Debits charged and un-holds the whole hold (a _CLOSE row) on account and key, ledgers both,
    records the charge on the hold (unless _CLOSE_CHARGED did: then recorded_balance is the balance
    after it) and writes the usage record; the balance after."""
    account_id, key_id, held = hold[0], hold[1], hold[2]
    period = budget_period(now)
    if recorded_balance is None:
        debited = lean.one(_LEAN_DEBIT_ACCOUNT, (account_id, charged, held, period, now))
        if debited is None:  # the hold's foreign key makes this unreachable; never move money half-way
            raise RuntimeError(f"account {account_id!r} of hold {request_id!r} is missing")
        balance_after = int(debited[0])
    else:
        debit = (account_id, charged, held, period, now, recorded_balance)
        if lean.count(_LEAN_DEBIT_RECORDED, debit) != 1:  # see _CLOSE_CHARGED: unreachable
            raise RuntimeError(
                f"hold {request_id!r} recorded balance {recorded_balance}, which the debit of account"
                f" {account_id!r} would not leave"
            )
        balance_after = recorded_balance
    # Stamped with the time of the transaction.
    entries = closing_entries(account_id, request_id, charged, held, balance_after, now)
    with lean.unawaited():  # nothing below is read back: one round trip on PostgreSQL
        lean.count(_LEAN_DEBIT_KEY, (key_id, charged, held))
        if len(entries) == 2:
            lean.count(_LEAN_INSERT_ENTRIES[2], entries[0] + entries[1])
        elif entries:
            lean.count(_LEAN_INSERT_ENTRIES[1], entries[0])
        if recorded_balance is None:
            lean.count(_LEAN_RECORD_CHARGE, (request_id, charged, balance_after))
        insert_usage(lean, request_id, hold, outcome, charged_micros=charged, clamped=clamped)
    return balance_after
