"""Usage records: written once when a hold closes, then paged and totalled. Plain functions on a Session."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Table, and_, cast, func, insert, or_
from sqlalchemy import select as select_columns
from sqlmodel import Session, col, select

from gateway_core.errors import invalid_request
from gateway_core.metering.outcome import UsageOutcome
from gateway_core.store.lean import LeanConnection
from gateway_core.store.models import UsageRecord
from gateway_core.store.paging import cursor_time, decode_token, encode_token, page_size
from gateway_core.store.records import HoldRecord, ModelUsage, Usage


# Built once: this runs on every request's settlement (see store/holds.py and store/lean.py).
_USAGE: Table = UsageRecord.__table__  # type: ignore[attr-defined]
_INSERT_USAGE = insert(_USAGE)
# Every column is bound (lean.py applies no defaults).
_USAGE_COLUMNS = tuple(_USAGE.c.keys())


def insert_usage(
    lean: LeanConnection, hold: HoldRecord, outcome: UsageOutcome, *, charged_micros: int, clamped: bool
) -> None:
    """Writes the one usage record of a closing hold; a second one fails on the primary key.

    The record is dated at admission (the hold's database time). Negative
    token counts (untrusted upstream numbers) are stored as 0 and flagged clamped.
    """
    tokens = (outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens, outcome.reasoning_tokens)
    prompt, completion, cached, reasoning = (max(count, 0) for count in tokens)
    ttft = outcome.time_to_first_token_ms
    lean.execute(
        _INSERT_USAGE,
        {
            "request_id": hold.request_id,
            "account_id": hold.account_id,
            "api_key_id": hold.api_key_id,
            "model": outcome.model,
            "provider": outcome.provider,
            "upstream_model": outcome.upstream_model,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cached_tokens": cached,
            "reasoning_tokens": reasoning,
            "cost_micros": charged_micros,
            "held_micros": hold.amount_micros,
            "status": outcome.status.value,
            "latency_ms": max(outcome.latency_ms, 0),
            "time_to_first_token_ms": None if ttft is None else max(ttft, 0),
            "estimated": outcome.estimated,
            "clamped": clamped or min(tokens) < 0,
            "created_at": hold.created_at,
        },
        column_keys=_USAGE_COLUMNS,
    )


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
