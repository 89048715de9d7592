"""The lean path's datetime binding on SQLite: one isoformat() for aware UTC values, text identical to SQLAlchemy's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Column, MetaData, String, Table, insert
from sqlalchemy.dialects import postgresql, sqlite

from gateway_core.store import clock
from gateway_core.store.lean import compile_statement
from gateway_core.store.types import UTCDateTime

_TABLE = Table("t", MetaData(), Column("at", UTCDateTime()), Column("name", String(10)))
_DIALECT = sqlite.dialect()
# What SQLAlchemy itself binds a UTCDateTime with on SQLite (the ORM's path).
_SQLALCHEMY = UTCDateTime().dialect_impl(_DIALECT).bind_processor(_DIALECT)


def lean_processor(dialect: Any = _DIALECT) -> Any:
    compiled = compile_statement(insert(_TABLE), dialect, ("at", "name"))
    return dict(compiled.bind_processors)["at"]


def either(convert: Any, value: Any) -> tuple[str, Any]:
    try:
        return "value", convert(value)
    except Exception as error:  # noqa: BLE001 - compared: both must fail alike
        return "error", type(error)


@given(st.datetimes(timezones=st.just(UTC)))
def test_aware_utc_datetimes_bind_as_sqlalchemy_would(value: datetime) -> None:
    assert lean_processor()(value) == _SQLALCHEMY(value)


@given(
    st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),
        timezones=st.sampled_from([timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8)), timezone.utc]),
    )
)  # fmt: skip
def test_other_zones_and_utc_as_a_fixed_offset_still_bind_as_sqlalchemy_would(value: datetime) -> None:
    assert lean_processor()(value) == _SQLALCHEMY(value)


def test_naive_datetimes_and_none_take_sqlalchemys_way() -> None:
    convert = lean_processor()
    assert either(convert, datetime(2026, 1, 2, 3, 4, 5)) == either(_SQLALCHEMY, datetime(2026, 1, 2, 3, 4, 5))
    assert either(convert, datetime(2026, 1, 2, 3, 4, 5))[0] == "error"  # naive datetimes are refused
    assert convert(None) is None


def test_the_fast_text_is_the_stored_format_with_every_digit() -> None:
    convert = lean_processor()
    assert convert(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01 00:00:00.000000"
    assert convert(datetime(7, 3, 4, 5, 6, 7, 8, tzinfo=UTC)) == "0007-03-04 05:06:07.000008"


class CountedUTCDateTime(UTCDateTime):
    """UTCDateTime that counts its conversions."""

    cache_ok = True
    calls = 0

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        CountedUTCDateTime.calls += 1
        return super().process_bind_param(value, dialect)


def test_aware_utc_values_skip_the_type_decorator_and_the_percent_format() -> None:
    table = Table("c", MetaData(), Column("at", CountedUTCDateTime()))
    convert = dict(compile_statement(insert(table), _DIALECT, ("at",)).bind_processors)["at"]
    CountedUTCDateTime.calls = 0
    assert convert(datetime(2026, 5, 6, 7, 8, 9, 10, tzinfo=UTC)) == "2026-05-06 07:08:09.000010"
    assert CountedUTCDateTime.calls == 0
    assert convert(datetime(2026, 5, 6, 7, 8, 9, 10, tzinfo=timezone(timedelta(hours=1)))) == "2026-05-06 06:08:09.000010"
    assert CountedUTCDateTime.calls == 1


def test_postgresql_binds_datetimes_as_they_are() -> None:
    dialect = postgresql.dialect()
    compiled = compile_statement(insert(_TABLE), dialect, ("at", "name"))
    value = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    processors = dict(compiled.bind_processors)
    assert processors.get("at", lambda same: same)(value) == value


def test_sqlite_now_is_this_clock_truncated_to_the_millisecond() -> None:
    before = datetime.now(UTC)
    now = clock.sqlite_now()
    after = datetime.now(UTC)
    assert now.tzinfo is UTC and now.microsecond % 1000 == 0
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= now <= after


@pytest.mark.parametrize("ns", [0, 999_999, 1_000_000, 1_764_175_721_123_999_999, 1_764_175_721_999_000_000])
def test_sqlite_now_truncates_like_now_and_replace(ns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock.time, "time_ns", lambda: ns)
    exact = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    assert clock.sqlite_now() == exact.replace(microsecond=exact.microsecond // 1000 * 1000)
