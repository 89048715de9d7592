"""Usage records: written once when a hold closes, then paged and totalled. Plain functions on a Session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Table, and_, cast, func, insert, or_
from sqlalchemy import select as select_columns
from sqlmodel import Session, col, select

from gateway_core.errors import invalid_request
from gateway_core.metering.outcome import UsageOutcome
from gateway_core.store.lean import LeanConnection, LeanStatement
from gateway_core.store.models import UsageRecord
from gateway_core.store.paging import cursor_time, decode_token, encode_token, page_size
from gateway_core.store.records import ModelUsage, Usage


# Built once: this runs on every request's settlement (see store/holds.py and store/lean.py).
USAGE_TABLE: Table = UsageRecord.__table__  # type: ignore[attr-defined]
_INSERT_USAGE = insert(USAGE_TABLE)
# Every column is bound (lean.py applies no defaults), in this order.
USAGE_COLUMNS = tuple(USAGE_TABLE.c.keys())
assert USAGE_COLUMNS == (
    "request_id", "account_id", "api_key_id", "model", "provider", "upstream_model", "prompt_tokens",
    "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_micros", "held_micros", "status",
    "latency_ms", "time_to_first_token_ms", "estimated", "clamped", "created_at",
), "usage_records columns changed: update insert_usage"  # fmt: skip
# created_at comes as stored in the hold's row (holds.py, _CLOSE): written back unconverted.
_LEAN_INSERT_USAGE = LeanStatement(_INSERT_USAGE, USAGE_COLUMNS, column_keys=USAGE_COLUMNS, as_stored=("created_at",))


def insert_usage(
    lean: LeanConnection,
    request_id: str,
    hold: Sequence[Any],
    outcome: UsageOutcome,
    *,
    charged_micros: int,
    clamped: bool,
) -> None:
    """Writes the one usage record of a closing hold; a second one fails on the primary key.

    hold is the closed hold's row as store/holds.py's _CLOSE returns it (_SELECT_CLOSED on SQLite):
    (account_id, api_key_id, amount_micros, model, provider, upstream_model,
    created_at as stored). The record is dated at admission (the hold's database time).
    Negative token counts (untrusted upstream numbers) are stored as 0 and flagged clamped.
    """
    lean.count(_LEAN_INSERT_USAGE, usage_row(request_id, hold, outcome, charged_micros, clamped))


def usage_row(
    request_id: str, hold: Sequence[Any], outcome: UsageOutcome, charged_micros: int, clamped: bool
) -> tuple[Any, ...]:
    """The usage record of a closing hold (see insert_usage), as values in USAGE_COLUMNS order."""
    account_id, api_key_id, held_micros, _, _, _, created_at = hold
    prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
    cached, reasoning = outcome.cached_tokens, outcome.reasoning_tokens
    ttft = outcome.time_to_first_token_ms
    negative = prompt < 0 or completion < 0 or cached < 0 or reasoning < 0
    return (
        request_id, account_id, api_key_id, outcome.model, outcome.provider, outcome.upstream_model,
        max(prompt, 0), max(completion, 0), max(cached, 0), max(reasoning, 0), charged_micros, held_micros,
        outcome.status.value, max(outcome.latency_ms, 0), None if ttft is None else max(ttft, 0),
        outcome.estimated, clamped or negative, created_at,
    )  # fmt: skip


def get_usage(session: Session, request_id: str) -> Usage | None:
    """The usage record of request_id, if its hold has closed."""
    row = session.get(UsageRecord, request_id)
    return None if row is None else Usage.from_row(row)


def _window(start_time: datetime | None, end_time: datetime | None) -> list[Any]:
    """WHERE terms for [start_time, end_time); either bound may be open."""
    for name, value in (("start_time", start_time), ("end_time", end_time)):
        if value is not None and value.tzinfo is None:
            raise invalid_request(f"{name} needs a time zone", param=name)
    if start_time is not None and end_time is not None and end_time < start_time:
        raise invalid_request("end_time must not be before start_time", param="end_time")
    terms: list[Any] = []
    if start_time is not None:
        terms.append(col(UsageRecord.created_at) >= start_time)
    if end_time is not None:
        terms.append(col(UsageRecord.created_at) < end_time)
    return terms


def list_usage(
    session: Session,
    account_id: str,
    requested_size: int,
    token: str,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> tuple[list[Usage], str]:
    """A page of an account's usage records in [start_time, end_time), newest first, and the next token."""
    size = page_size(requested_size)
    created, request_id = col(UsageRecord.created_at), col(UsageRecord.request_id)
    query = (
        select(UsageRecord)
        .where(col(UsageRecord.account_id) == account_id, *_window(start_time, end_time))
        .order_by(created.desc(), request_id.desc())
        .limit(size + 1)
    )
    cursor = decode_token(token, (str, str))
    if cursor is not None:
        before_time, before_id = cursor_time(str(cursor[0])), str(cursor[1])
        query = query.where(or_(created < before_time, and_(created == before_time, request_id < before_id)))
    rows = list(session.exec(query))
    page = [Usage.from_row(row) for row in rows[:size]]
    more = len(rows) > size
    return page, encode_token(page[-1].created_at.isoformat(), page[-1].request_id) if more else ""


def summarize_usage(
    session: Session, account_id: str, start_time: datetime | None = None, end_time: datetime | None = None
) -> list[ModelUsage]:
    """Per-model totals of an account's usage records in [start_time, end_time), sorted by model."""
    usage: Table = UsageRecord.__table__  # type: ignore[attr-defined]
    query = (
        select_columns(
            usage.c.model,
            func.count(),
            _total(usage.c.prompt_tokens),
            _total(usage.c.completion_tokens),
            _total(usage.c.cost_micros),
        )
        .where(usage.c.account_id == account_id, *_window(start_time, end_time))
        .group_by(usage.c.model)
        .order_by(usage.c.model)
    )
    return [
        ModelUsage(str(model), int(count), int(prompt), int(completion), int(cost))
        for model, count, prompt, completion, cost in session.connection().execute(query)
    ]


def _total(column: ColumnElement[int]) -> ColumnElement[int]:
    # PostgreSQL's SUM(bigint) is NUMERIC (a Decimal in Python): cast back to an integer.
    return cast(func.sum(column), BigInteger)
