"""Holds and settlements of one SQLite group commit, run together: the same rows, fewer and cheaper steps.

store/holds.py takes a hold in four statements and settles it in six. Here
a group commit's N holds take one UPDATE per account and one per key with
the summed amounts, then the driver's executemany of the holds and of their
ledger entries (one prepared statement stepped N times, without N trips
through the statement cache and LeanConnection); its N settlements take one
SELECT of the open holds, one executemany closing them, one debit per
account and per key with the summed amounts, and executemany of the ledger
entries and usage records. (Multi-row INSERT ... VALUES measured slower per
row than executemany on SQLite 3.40.)

Why the sums decide exactly what the writes one by one would: amounts are
never negative, so if an account's available balance (and its monthly
budget, and the key's spend limit) covers the sum, it covers every prefix of
it, which is all the conditional UPDATEs one after another would have
checked. If a sum does not fit, nothing here decides who is refused: the
caller (store/grouped.py) rolls this attempt back and runs every write alone.
A settlement's charge is min(max(cost, 0), hold) as in holds.settle; each
account's debit is the sum of the charges its closes recorded, applied only
if it leaves exactly the running balance those closes wrote into the holds
and ledger entries (as holds._DEBIT_RECORDED does for one).

SQLite only, on its one writer connection inside BEGIN IMMEDIATE: nothing
else moves a balance between the SELECT and the debits. PostgreSQL runs each
write alone (``__call__``), as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import String, bindparam, select, update
from sqlalchemy.exc import IntegrityError

from gateway_core.metering.outcome import Hold as AdmittedHold
from gateway_core.metering.outcome import Settlement, UsageOutcome
from gateway_core.store import holds
from gateway_core.store.clock import transaction_now
from gateway_core.store.grouped import GroupedWrite, Outcome
from gateway_core.store.lean import LeanConnection, LeanStatement
from gateway_core.store.usage_records import _LEAN_INSERT_USAGE, usage_row

# Request ids per SELECT of open holds: up to this many, padded to a power of two, so there are
# only a few statement texts (the driver's statement cache keeps them prepared).
_MOST_IDS = 64

_ACCOUNTS, _HOLDS = holds._ACCOUNTS, holds._HOLDS  # noqa: SLF001
_OPEN, _SETTLED = holds._OPEN, holds._SETTLED  # noqa: SLF001


class ReserveWrite(GroupedWrite):
    """holds.reserve of one request, as a write a group commit can run together with others."""

    __slots__ = ("request",)
    run_order = 1

    def __init__(self, request: holds.HoldRequest) -> None:
        self.request = request

    def __call__(self, lean: LeanConnection) -> AdmittedHold:
        return holds.reserve(lean, self.request)

    @classmethod
    def run_together(cls, lean: LeanConnection, writes: Sequence[Any]) -> list[Outcome | None] | None:
        return reserve_together(lean, [write.request for write in writes])


class SettleWrite(GroupedWrite):
    """holds.settle of one request, as a write a group commit can run together with others."""

    __slots__ = ("request_id", "outcome")
    run_order = 0

    def __init__(self, request_id: str, outcome: UsageOutcome) -> None:
        self.request_id = request_id
        self.outcome = outcome

    def __call__(self, lean: LeanConnection) -> Settlement:
        return holds.settle(lean, self.request_id, self.outcome)

    @classmethod
    def run_together(cls, lean: LeanConnection, writes: Sequence[Any]) -> list[Outcome | None] | None:
        return settle_together(lean, [(write.request_id, write.outcome) for write in writes])


def reserve_together(lean: LeanConnection, requests: Sequence[holds.HoldRequest]) -> list[Outcome | None] | None:
    """Reserves every request's hold, or returns None (having changed what the caller must roll back).

    None when one is refused or clashes: the sum does not fit an account or
    a key, a key is not of its account, or a request_id was used before.
    """
    if len({request.request_id for request in requests}) != len(requests):
        return None
    for request in requests:
        holds.check_hold_request(request)
    now = transaction_now(lean)
    period = holds.budget_period(now)
    by_account: dict[str, int] = {}
    by_key: dict[tuple[str, str], int] = {}
    hold_rows: list[tuple[Any, ...]] = []
    entry_rows: list[tuple[Any, ...]] = []
    for request in requests:
        account_id, key_id, amount = request.account_id, request.api_key_id, request.amount_micros
        by_account[account_id] = by_account.get(account_id, 0) + amount
        by_key[key_id, account_id] = by_key.get((key_id, account_id), 0) + amount
        hold_rows.append(holds.hold_row(request, now))
        if amount > 0:  # a free request moves no money, so it needs no entry
            entry_rows.append(holds.hold_entry(request, now))
    for account_id, total in by_account.items():
        if lean.count(holds._LEAN_RESERVE_ON_ACCOUNT, (account_id, total, now, period)) != 1:  # noqa: SLF001
            return None
    for (key_id, account_id), total in by_key.items():
        if lean.count(holds._LEAN_RESERVE_ON_KEY, (account_id, total, key_id)) != 1:  # noqa: SLF001
            return None
    try:
        lean.count_each(holds._LEAN_INSERT_HOLD, hold_rows)  # noqa: SLF001
    except IntegrityError:
        return None
    if entry_rows:
        lean.count_each(holds._LEAN_INSERT_HOLD_ENTRY, entry_rows)  # noqa: SLF001
    return [
        (True, AdmittedHold(request.request_id, request.account_id, request.api_key_id, request.amount_micros))
        for request in requests
    ]


def settle_together(lean: LeanConnection, items: Sequence[tuple[str, UsageOutcome]]) -> list[Outcome | None] | None:
    """Settles every open hold among items; None for the others (replays, unknown ids: run alone).

    Returns None if the settlements cannot go through together (a request_id
    twice, or a debit that would not leave the balance the closes recorded).
    """
    request_ids = [request_id for request_id, _ in items]
    if len(set(request_ids)) != len(request_ids):
        return None
    now = transaction_now(lean)
    open_holds: dict[str, tuple[Any, ...]] = {}
    for size, chunk in _chunks(request_ids):
        for row in lean.all(_select_holds(size), chunk):
            if row[9] == _OPEN:
                open_holds[row[0]] = row
    results: list[Outcome | None] = [None] * len(items)
    if not open_holds:
        return results
    balances: dict[str, int] = {}  # each account's running balance through the settlements, in order
    by_account: dict[str, list[int]] = {}  # charged, held
    by_key: dict[str, list[int]] = {}
    closes: list[tuple[Any, ...]] = []
    entries: list[tuple[Any, ...]] = []
    usages: list[tuple[Any, ...]] = []
    for position, (request_id, outcome) in enumerate(items):
        row = open_holds.get(request_id)
        if row is None:
            continue
        _, account_id, key_id, held, _, _, _, _, balance_before, _ = row
        hold = row[1:8]  # as holds._CLOSE returns it (what usage_row takes)
        charged = min(max(outcome.cost_micros, 0), held)
        balance_after = balances.get(account_id, balance_before) - charged
        balances[account_id] = balance_after
        account = by_account.setdefault(account_id, [0, 0])
        account[0] += charged
        account[1] += held
        key = by_key.setdefault(key_id, [0, 0])
        key[0] += charged
        key[1] += held
        closes.append((request_id, charged, balance_after, now))
        entries.extend(holds.closing_entries(account_id, request_id, charged, held, balance_after, now))
        clamped = outcome.clamped or charged != outcome.cost_micros
        usages.append(usage_row(request_id, hold, outcome, charged, clamped))
        results[position] = (True, Settlement(request_id, charged, held - charged, balance_after, replayed=False))
    if lean.count_each(_LEAN_CLOSE_SETTLED, closes) != len(closes):  # open a moment ago, in this transaction
        return None
    period = holds.budget_period(now)
    for account_id, (charged, held) in by_account.items():
        debit = (account_id, charged, held, period, now, balances[account_id])
        if lean.count(holds._LEAN_DEBIT_RECORDED, debit) != 1:  # noqa: SLF001 - see the module's docstring
            return None
    for key_id, (charged, held) in by_key.items():
        lean.count(holds._LEAN_DEBIT_KEY, (key_id, charged, held))  # noqa: SLF001
    if entries:
        lean.count_each(holds._LEAN_INSERT_ENTRIES[1], entries)  # noqa: SLF001
    lean.count_each(_LEAN_INSERT_USAGE, usages)
    return results


def _chunks(values: Sequence[Any]) -> list[tuple[int, Sequence[Any]]]:
    """values in runs of at most _MOST_IDS, each padded to a power of two with its last value: (length, run).

    Padding keeps to a few statement texts and one SELECT per run; an id
    twice in an IN list finds its row once.
    """
    found: list[tuple[int, Sequence[Any]]] = []
    for start in range(0, len(values), _MOST_IDS):
        run = list(values[start : start + _MOST_IDS])
        size = 1 << (len(run) - 1).bit_length()
        found.append((size, run + run[-1:] * (size - len(run))))
    return found


@cache
def _select_holds(size: int) -> LeanStatement:
    """The holds of size request ids: request_id, holds._CLOSED_HOLD's columns, the account's balance, status."""
    balance = select(_ACCOUNTS.c.balance_micros).where(_ACCOUNTS.c.id == _HOLDS.c.account_id).scalar_subquery()
    ids = [bindparam(f"b_request_id_{index}", type_=String()) for index in range(size)]
    statement = select(
        _HOLDS.c.request_id, *holds._CLOSED_HOLD, balance, _HOLDS.c.status  # noqa: SLF001
    ).where(_HOLDS.c.request_id.in_(ids))
    # No "status = 'open'" term: SQLite would then read the IN list through the partial index of open
    # holds (every hold in flight, ~30 us per id with 2,000 open) instead of the primary key (~3 us).
    return LeanStatement(statement, tuple(f"b_request_id_{index}" for index in range(size)))


# Closes one open hold as settled with the charge and balance after computed by settle_together.
_LEAN_CLOSE_SETTLED = LeanStatement(
    update(_HOLDS)
    .where(_HOLDS.c.request_id == bindparam("b_request_id"), _HOLDS.c.status == _OPEN)
    .values(
        status=_SETTLED,
        closed_at=bindparam("b_now"),
        charged_micros=bindparam("b_charged"),
        balance_after_micros=bindparam("b_balance_after"),
    ),
    ("b_request_id", "b_charged", "b_balance_after", "b_now"),
)
