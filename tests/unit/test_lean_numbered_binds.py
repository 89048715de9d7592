"""SQLite lean statements bind each distinct value once (?NNN placeholders), with the same results as qmark."""

from __future__ import annotations

import sqlite3

from sqlalchemy import bindparam, create_engine, literal_column, select
from sqlalchemy.dialects import postgresql

from gateway_core.store import holds
from gateway_core.store.lean import compile_statement

_SQLITE = create_engine("sqlite://").dialect


def test_a_bind_used_several_times_is_numbered_once() -> None:
    compiled = compile_statement(holds._RESERVE_ON_ACCOUNT, _SQLITE)  # noqa: SLF001
    assert compiled.positions is not None and len(compiled.positions) == len(set(compiled.positions)) == 6
    assert "?3" in compiled.sql and compiled.sql.count("?3") == 4  # the budget period, in three CASEs and a WHERE
    assert "? " not in compiled.sql and not compiled.sql.rstrip().endswith("?")  # no plain qmark left


def test_numbered_and_qmark_forms_select_the_same_values() -> None:
    statement = select(bindparam("a") + bindparam("b"), bindparam("a") * 2, bindparam("b"))
    compiled = compile_statement(statement, _SQLITE)
    assert compiled.positions == ("a", "b", "param_1")  # the constant 2 is a bind too
    assert compiled.pick is not None
    values = {**compiled.constants, "a": 5, "b": 7}
    row = sqlite3.connect(":memory:").execute(compiled.sql, compiled.pick(values)).fetchone()
    assert row == (12, 10, 7)


def test_sql_whose_text_holds_a_question_mark_keeps_its_qmarks() -> None:
    statement = select(literal_column("'why?'"), bindparam("a"), bindparam("a"))
    compiled = compile_statement(statement, _SQLITE)
    assert compiled.positions == ("a", "a")  # not numbered: the check saw the literal's '?'
    assert compiled.pick is not None
    row = sqlite3.connect(":memory:").execute(compiled.sql, compiled.pick({"a": 3})).fetchone()
    assert row == ("why?", 3, 3)


def test_statements_without_repeats_and_other_dialects_are_left_as_compiled() -> None:
    plain = compile_statement(holds._SELECT_HOLD, _SQLITE)  # noqa: SLF001
    assert "?1" not in plain.sql and plain.positions == ("b_request_id",)
    named = compile_statement(holds._RESERVE_ON_ACCOUNT, postgresql.dialect())  # noqa: SLF001
    assert named.positions is None and "%(b_period)s" in named.sql
