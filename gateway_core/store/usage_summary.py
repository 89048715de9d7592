"""Usage totals per UTC day and model, for operators. Plain functions on a Session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, ColumnElement, Table, cast, func
from sqlalchemy import select as select_columns
from sqlmodel import Session

from gateway_core.store.models import UsageRecord
from gateway_core.store.usage_records import _window


@dataclass(frozen=True)
class DailyUsage:
    """Totals of one model's usage records admitted on one UTC day."""

    day: str  # YYYY-MM-DD
    model: str
    request_count: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


def _utc_day(session: Session, column: ColumnElement[datetime]) -> ColumnElement[str]:
    """The UTC calendar day of a UTCDateTime column as YYYY-MM-DD, in each backend's SQL."""
    dialect = session.connection().dialect.name
    if dialect == "sqlite":  # stored as naive UTC text, "YYYY-MM-DD HH:MM:SS..."
        return func.substr(column, 1, 10)
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    raise NotImplementedError(f"no day grouping for the {dialect} dialect")


def summarize_daily_usage(
    session: Session, account_id: str | None, start_time: datetime | None = None, end_time: datetime | None = None
) -> list[DailyUsage]:
    """Totals per (UTC day, model) of usage admitted in [start_time, end_time); one account or all.

    Oldest day first, then by model.
    """
    usage: Table = UsageRecord.__table__  # type: ignore[attr-defined]
    day = _utc_day(session, usage.c.created_at).label("day")
    terms = _window(start_time, end_time)
    if account_id:
        terms.append(usage.c.account_id == account_id)
    query = (
        select_columns(
            day,
            usage.c.model,
            func.count(),
            _total(usage.c.prompt_tokens),
            _total(usage.c.completion_tokens),
            _total(usage.c.cost_micros),
        )
        .where(*terms)
        .group_by(day, usage.c.model)
        .order_by(day, usage.c.model)
    )
    return [
        DailyUsage(str(d), str(model), int(count), int(prompt), int(completion), int(cost))
        for d, model, count, prompt, completion, cost in session.connection().execute(query)
    ]


def _total(column: ColumnElement[int]) -> ColumnElement[int]:
    # PostgreSQL's SUM(bigint) is NUMERIC (a Decimal in Python): cast back to an integer.
    return cast(func.sum(column), BigInteger)
