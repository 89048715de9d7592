"""The money statements' executor: SQLAlchemy Core statements compiled once, run on the raw DBAPI connection.

Every request takes a hold and settles it: about ten short statements. Run
through SQLAlchemy's Connection each one pays for parameter construction,
result-set setup, events and type processing in Python, which measured ~85 %
of the whole transaction's CPU on SQLite (the statements themselves are a few
microseconds each). Here each statement is compiled ONCE per dialect from the
same Core statement the rest of the code uses (one source of truth for the
SQL), and a call is one ``cursor.execute`` with the bound values converted by
the very bind processors SQLAlchemy would apply (e.g. SQLite DATETIME text),
so rows written here read back identically through the ORM, and rows read
here come back as SQLAlchemy would return them (result processors).

A DBAPI error is re-raised as SQLAlchemy's exception for it (IntegrityError,
OperationalError, ...), as the Session path would, without the bound values.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class CompiledStatement:
    """One statement's SQL text for one dialect and how to bind and read it."""

    sql: str
    # Bind names in the order of the SQL's placeholders (positional styles), else None.
    positions: tuple[str, ...] | None
    # Picks the positional values out of the parameter dict (C speed), or None for named styles.
    pick: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None
    # Values of the binds the statement carries itself, already converted.
    constants: Mapping[str, Any]
    # Bind names whose values need converting (datetimes, booleans on some drivers).
    bind_processors: tuple[tuple[str, _Processor], ...]
    # Per returned column, its converter or None; empty when nothing is returned.
    result_processors: tuple[_Processor | None, ...]
    # Every bind the caller must give (with or without a converter).
    param_names: frozenset[str] = frozenset()


def compile_statement(
    statement: ClauseElement,
    dialect: Dialect,
    column_keys: Sequence[str] = (),
    shared: dict[tuple[type, str], _Processor] | None = None,
) -> CompiledStatement:
    """Compiles statement for dialect, with the type processors SQLAlchemy itself would use.

    column_keys names the parameters of an INSERT written without values()
    (each becomes a bind named like its column). Bind processors of equal
    types are taken from shared, so they share one memo (see _remember_last).
    """
    shared = {} if shared is None else shared
    compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) or None)
    assert isinstance(compiled, SQLCompiler)
    bind_processors: list[tuple[str, _Processor]] = []
    param_names: set[str] = set()
    # Values written into the statement itself (CASE's else 0, status = 'open'): bound as SQLAlchemy would.
    constants: dict[str, Any] = {}
    # Every column of an INSERT must be given: defaults SQLAlchemy would compute per call are not applied here.
    assert not compiled.insert_prefetch, f"give every column: {compiled.insert_prefetch}"
    for bind, name in compiled.bind_names.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if not bind.required:
            value = bind.effective_value
            constants[name] = value if processor is None else processor(value)
            continue
        param_names.add(name)
        if processor is not None:
            # Equal types (class and arguments) convert alike: one memoized processor for all of them.
            same_type = (type(bind.type), repr(bind.type))
            if same_type not in shared:
                shared[same_type] = _remember_last(_utc_text_fast_path(bind.type, processor))
            bind_processors.append((name, shared[same_type]))
    result_processors: list[_Processor | None] = []
    # A SELECT's columns, or an INSERT/UPDATE's RETURNING columns (none without RETURNING).
    for column in getattr(statement, "exported_columns", ()):
        result_processors.append(column.type.dialect_impl(dialect).result_processor(dialect, None))
    # Placeholders are the bind names as they are (these statements have no names needing escapes).
    assert not compiled.escaped_bind_names, compiled.escaped_bind_names
    positions = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup is not None else None
    sql = compiled.string
    if positions is not None and dialect.name == "sqlite" and len(set(positions)) < len(positions):
        sql, positions = _numbered(statement, dialect, column_keys, sql) or (sql, positions)
    return CompiledStatement(
        sql,
        positions,
        _picker(positions),
        constants,
        tuple(bind_processors),
        tuple(result_processors),
        frozenset(param_names),
    )


_NUMBERED = re.compile(r":(\d+)")


def _numbered(
    statement: ClauseElement, dialect: Dialect, column_keys: Sequence[str], qmark_sql: str
) -> tuple[str, tuple[str, ...]] | None:
    """SQLite: statement with one numbered placeholder (?NNN) per distinct bind, and their names in order.

    With qmark placeholders a bind used twice (the budget period in three
    CASEs, the hold amount in SET and WHERE, a constant 0) is bound once per
    use; every bind is a driver call and SQLite copies every text value it is
    given. The money statements bind 97 values per hold+settle pair that way,
    73 numbered. The SQL comes from SQLAlchemy's own numeric paramstyle
    (':N', deduplicated), turned into SQLite's '?N'; None (keep the qmark
    form) unless the two texts are the same but for their placeholders.
    """
    twin = copy.copy(dialect)
    twin.paramstyle = "numeric"
    numbered = statement.compile(dialect=twin, column_keys=list(column_keys) or None)
    assert isinstance(numbered, SQLCompiler)
    if numbered.positiontup is None or _NUMBERED.sub("", numbered.string) != qmark_sql.replace("?", ""):
        return None
    return _NUMBERED.sub(r"?\1", numbered.string), tuple(numbered.positiontup)


# Aware UTC datetimes whose stored text a fast path must reproduce exactly (see _utc_text_fast_path).
_DATETIME_PROBES = (
    datetime(2026, 11, 26, 17, 48, 41, 123000, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),  # microsecond 0: the fraction is still written, as six zeros
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
)


def _utc_text_fast_path(sql_type: Any, processor: _Processor) -> _Processor:
    """processor, with aware UTC datetimes turned into text by one positional %-format if that is what it does.

    SQLite stores datetimes as text: UTCDateTime makes the value naive
    (astimezone, replace) and SQLAlchemy formats it with a %-format of nine
    named fields, ~20k instructions per value, twice per request (a
    transaction's 'now' is converted once, see _remember_last). The same
    fields read straight off the aware value into a positional %-format give
    the same text for a third of that (isoformat() costs more: its keyword
    parsing and sprintf). Used only where processor was checked to give
    exactly that text for probe values across the whole range; every other
    value (another zone, a naive datetime, None) still goes through processor.
    """
    if not isinstance(getattr(sql_type, "impl_instance", sql_type), DateTime):  # (a TypeDecorator's impl)
        return processor
    try:
        same = all(processor(probe) == _utc_text(probe) for probe in _DATETIME_PROBES)
    except Exception:  # noqa: BLE001 - a processor that cannot take these values keeps its own way
        same = False
    if not same:
        return processor

    def convert(value: Any) -> Any:
        if type(value) is datetime and value.tzinfo is UTC:
            return _utc_text(value)
        return processor(value)

    return convert


def _utc_text(value: datetime) -> str:
    """An aware UTC datetime's naive text, as SQLAlchemy stores a DATETIME on SQLite."""
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 - the fastest of the spellings measured
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
    )  # fmt: skip


def _remember_last(processor: _Processor) -> _Processor:
    """processor, reusing its last result for the very same value object.

    A transaction binds its one 'now' several times, in several statements
    (updated_at, created_at, each ledger entry); converting it once saves most
    of the datetime work.
    Only datetimes are remembered (immutable, so the same object always
    converts alike). The memo is one tuple, replaced whole, so threads sharing it see a
    consistent (value, result) pair; values are compared by identity, never
    by equality (an equal but different value is converted afresh).
    """
    last: list[tuple[object, Any]] = [(object(), None)]

    def convert(value: Any) -> Any:
        if type(value) is not datetime:  # only immutable datetimes are remembered
            return processor(value)
        seen, result = last[0]
        if seen is value:
            return result
        result = processor(value)
        last[0] = (value, result)
        return result

    return convert


def _picker(positions: tuple[str, ...] | None) -> Callable[[Mapping[str, Any]], tuple[Any, ...]] | None:
    if positions is None:
        return None
    if not positions:
        return lambda values: ()
    if len(positions) == 1:
        (only,) = positions
        return lambda values: (values[only],)
    return operator.itemgetter(*positions)


class LeanStatement:
    """A Core statement of the money path with its parameters in a fixed order.

    The hot callers bind a tuple in this order instead of a dict: per dialect
    the statement is prepared once (Prepared) into SQL text plus one generated
    function that maps that tuple straight to what the driver takes, with
    constants and type conversions already in place, so a call costs no dict
    merge and no loop over bind processors. The SQL is still compiled from the
    Core statement (one source of truth).
    """

    __slots__ = ("statement", "params", "column_keys", "as_stored")

    def __init__(
        self,
        statement: ClauseElement,
        params: Sequence[str],
        column_keys: Sequence[str] = (),
        *,
        as_stored: Sequence[str] = (),
    ) -> None:
        self.statement = statement
        self.params = tuple(params)
        self.column_keys = tuple(column_keys)
        # Params given exactly as the driver returned them from a column of the same type
        # (e.g. a RETURNING column under type_coerce(..., NullType())): bound without conversion,
        # so the value stored is the value read, byte for byte.
        self.as_stored = frozenset(as_stored)


class Prepared:
    """One LeanStatement for one dialect: its SQL, its binder and (if any column needs it) its row converter."""

    __slots__ = ("sql", "bind", "convert")

    def __init__(
        self,
        sql: str,
        bind: Callable[[Sequence[Any]], Any],
        convert: Callable[[Sequence[Any]], tuple[Any, ...]] | None,
    ) -> None:
        self.sql = sql
        self.bind = bind
        self.convert = convert


def prepare(lean_statement: LeanStatement, compiled: CompiledStatement) -> Prepared:
    """Generates the binder (and row converter) of lean_statement from its compiled form.

    The functions are generated as source and compiled (as namedtuple and
    dataclasses do), so a call is one tuple (or dict) display: no per-call
    loop. Every bind of the SQL must be a constant or one of params.
    """
    index = {name: position for position, name in enumerate(lean_statement.params)}
    processors = dict(compiled.bind_processors)
    namespace: dict[str, Any] = {}

    def value_of(name: str) -> str:
        if name in compiled.constants:
            namespace[f"k_{name}"] = compiled.constants[name]
            return f"k_{name}"
        if name not in index:
            raise ValueError(f"bind {name!r} of the statement is not among its params {lean_statement.params}")
        if name in processors and name not in lean_statement.as_stored:
            namespace[f"p_{name}"] = processors[name]
            return f"p_{name}(a[{index[name]}])"
        return f"a[{index[name]}]"

    unused = (set(lean_statement.params) | lean_statement.as_stored) - compiled.param_names
    if unused:
        raise ValueError(f"params {sorted(unused)} are not binds of the statement")
    if compiled.positions is not None:
        items = [value_of(name) for name in compiled.positions]
        body = "(" + "".join(f"{item}, " for item in items) + ")"
    else:  # named placeholders (PostgreSQL's drivers): a dict of every bind
        names = [*compiled.constants, *sorted(compiled.param_names)]
        body = "{" + "".join(f"{name!r}: {value_of(name)}, " for name in names) + "}"
    exec(f"def bind(a):\n    return {body}\n", namespace)  # noqa: S102 - source built above from bind names only
    convert = None
    if any(compiled.result_processors):
        columns = []
        for position, processor in enumerate(compiled.result_processors):
            if processor is None:
                columns.append(f"r[{position}]")
            else:
                namespace[f"r_{position}"] = processor
                columns.append(f"r_{position}(r[{position}])")
        exec(f"def convert(r):\n    return ({''.join(column + ', ' for column in columns)})\n", namespace)  # noqa: S102
        convert = namespace["convert"]
    return Prepared(compiled.sql, namespace["bind"], convert)


class StatementCache:
    """Compiled statements of one dialect, built on first use; safe to share between threads."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._compiled: dict[tuple[int, tuple[str, ...]], CompiledStatement] = {}
        self._prepared: dict[LeanStatement, Prepared] = {}
        self._processors: dict[tuple[type, str], _Processor] = {}
        # Keeps each compiled statement's source alive, so its id() is never reused.
        self._sources: list[ClauseElement] = []
        self._lock = threading.Lock()

    def get(self, statement: ClauseElement, column_keys: tuple[str, ...] = ()) -> CompiledStatement:
        """The compiled form of statement (a module-level constant: cached by identity)."""
        key = (id(statement), column_keys)
        found = self._compiled.get(key)
        if found is None:
            with self._lock:
                found = self._compiled.get(key)
                if found is None:
                    found = compile_statement(statement, self.dialect, column_keys, self._processors)
                    self._sources.append(statement)
                    self._compiled[key] = found
        return found

    def prepared(self, lean_statement: LeanStatement) -> Prepared:
        """The Prepared form of lean_statement (a module-level constant: cached by identity)."""
        found = self._prepared.get(lean_statement)
        if found is None:
            compiled = self.get(lean_statement.statement, lean_statement.column_keys)
            with self._lock:
                found = self._prepared.get(lean_statement)
                if found is None:
                    found = self._prepared[lean_statement] = prepare(lean_statement, compiled)
        return found


# What unawaited() returns where the driver has no pipeline: nullcontext is reusable and re-entrant.
_AS_USUAL = contextlib.nullcontext()

_CACHES: weakref.WeakKeyDictionary[Dialect, StatementCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def statements_for(dialect: Dialect) -> StatementCache:
    """The one StatementCache of dialect (an engine's dialect lives as long as the engine)."""
    cache = _CACHES.get(dialect)
    if cache is None:
        with _CACHES_LOCK:
            cache = _CACHES.get(dialect)
            if cache is None:
                cache = _CACHES[dialect] = StatementCache(dialect)
    return cache


class LeanConnection:
    """Runs compiled statements on one DBAPI connection inside a transaction someone else manages.

    One per transaction and thread; not thread-safe. ``disconnected`` is set
    when an error meant the connection is gone, so its owner invalidates it.
    """

    def __init__(self, dbapi_connection: Any, statements: StatementCache) -> None:
        self._dbapi_connection = dbapi_connection
        self.driver_connection = dbapi_connection
        self._cursor = dbapi_connection.cursor()
        self._statements = statements
        self._prepared = statements._prepared  # read without the lock: entries are only ever added whole
        self.dialect = statements.dialect
        self._dbapi_error = statements.dialect.loaded_dbapi.Error
        self.disconnected = False
        # SQLite: the current transaction's time, taken by its first store.clock.transaction_now()
        # and shared by every write of the transaction (a group commit's too), so it is read and
        # converted once. Whoever begins a transaction on a LeanConnection that outlives it (the
        # writer thread's) sets it back to None.
        self.transaction_time: datetime | None = None

    def one(self, statement: LeanStatement, args: Sequence[Any]) -> tuple[Any, ...] | None:
        """Runs a statement returning at most one row (RETURNING or SELECT by key); that row, converted, or None."""
        prepared = self._prepared.get(statement) or self._statements.prepared(statement)
        try:
            row = self._cursor.execute(prepared.sql, prepared.bind(args)).fetchone()
        except self._dbapi_error as error:
            raise self._wrapped(prepared.sql, error) from error
        if row is None or prepared.convert is None:
            return row  # type: ignore[no-any-return]
        return prepared.convert(row)

    def all(self, statement: LeanStatement, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Runs a statement returning rows (a SELECT of many keys); every row, converted."""
        prepared = self._prepared.get(statement) or self._statements.prepared(statement)
        try:
            rows = self._cursor.execute(prepared.sql, prepared.bind(args)).fetchall()
        except self._dbapi_error as error:
            raise self._wrapped(prepared.sql, error) from error
        convert = prepared.convert
        return rows if convert is None else [convert(row) for row in rows]  # type: ignore[no-any-return]

    def count_each(self, statement: LeanStatement, rows: Sequence[Sequence[Any]]) -> int:
        """Runs a statement that returns no rows once per row of args (the driver's executemany); rows changed."""
        prepared = self._prepared.get(statement) or self._statements.prepared(statement)
        bind = prepared.bind
        try:
            return int(self._cursor.executemany(prepared.sql, [bind(args) for args in rows]).rowcount)
        except self._dbapi_error as error:
            raise self._wrapped(prepared.sql, error) from error

    def unawaited(self) -> contextlib.AbstractContextManager[None]:
        """Statements run inside are sent without waiting for each one's result, where the driver can.

        On PostgreSQL (psycopg's pipeline mode) that is one round trip for
        all of them instead of one each; SQLite runs them as usual. Only for
        statements whose results (rows, rowcounts) are not read: an error of
        any of them is raised, as SQLAlchemy's exception, when the block ends.
        """
        pipeline = getattr(self._dbapi_connection, "pipeline", None)
        if pipeline is None:
            return _AS_USUAL  # (SQLite) shared, rather than a generator built per settlement
        return self._pipelined(pipeline)

    @contextlib.contextmanager
    def _pipelined(self, pipeline: Callable[[], contextlib.AbstractContextManager[Any]]) -> Iterator[None]:
        try:
            with pipeline():
                yield
        except self._dbapi_error as error:
            raise self._wrapped("pipeline", error) from error

    def count(self, statement: LeanStatement, args: Sequence[Any]) -> int:
        """Runs a statement that returns no rows; the number of rows it changed."""
        prepared = self._prepared.get(statement) or self._statements.prepared(statement)
        try:
            return int(self._cursor.execute(prepared.sql, prepared.bind(args)).rowcount)
        except self._dbapi_error as error:
            raise self._wrapped(prepared.sql, error) from error

    def execute(
        self, statement: ClauseElement, params: Mapping[str, Any], *, column_keys: tuple[str, ...] = ()
    ) -> int:
        """Runs a statement that returns no rows; the number of rows it changed."""
        compiled = self._statements.get(statement, column_keys)
        return int(self._run(compiled, params).rowcount)

    def rows(
        self, statement: ClauseElement, params: Mapping[str, Any], *, column_keys: tuple[str, ...] = ()
    ) -> list[tuple[Any, ...]]:
        """Runs a statement that returns rows (SELECT or RETURNING); all of them, converted."""
        compiled = self._statements.get(statement, column_keys)
        raw = self._run(compiled, params).fetchall()
        processors = compiled.result_processors
        if not any(processors):
            return [tuple(row) for row in raw]
        return [
            tuple(value if processor is None else processor(value) for processor, value in zip(processors, row))
            for row in raw
        ]

    def first(
        self, statement: ClauseElement, params: Mapping[str, Any], *, column_keys: tuple[str, ...] = ()
    ) -> tuple[Any, ...] | None:
        """The first row a statement returns, or None."""
        found = self.rows(statement, params, column_keys=column_keys)
        return found[0] if found else None

    def _run(self, compiled: CompiledStatement, params: Mapping[str, Any]) -> Any:
        values = {**compiled.constants, **params} if compiled.constants else dict(params)
        for name, processor in compiled.bind_processors:
            if name in values:
                values[name] = processor(values[name])
        bound: Any = values if compiled.pick is None else compiled.pick(values)
        try:
            return self._cursor.execute(compiled.sql, bound)
        except self.dialect.loaded_dbapi.Error as error:
            raise self._wrapped(compiled.sql, error) from error

    def run_sql(self, sql: str) -> list[Any]:
        """Runs a fixed statement without parameters (BEGIN, SAVEPOINT, PRAGMA ...); its rows."""
        try:
            self._cursor.execute(sql)
            return list(self._cursor.fetchall()) if self._cursor.description else []
        except self.dialect.loaded_dbapi.Error as error:
            raise self._wrapped(sql, error) from error

    def commit(self) -> None:
        """Commits the connection's transaction (drivers that begin one implicitly)."""
        try:
            self._dbapi_connection.commit()
        except self.dialect.loaded_dbapi.Error as error:
            raise self._wrapped("COMMIT", error) from error

    def rollback(self) -> None:
        """Rolls back the connection's transaction, if one is open (a no-op otherwise)."""
        try:
            self._dbapi_connection.rollback()
        except self.dialect.loaded_dbapi.Error as error:
            raise self._wrapped("ROLLBACK", error) from error

    def _wrapped(self, sql: str, error: Exception) -> exc.DBAPIError:
        self.disconnected = self.dialect.is_disconnect(error, self._dbapi_connection, self._cursor)
        return exc.DBAPIError.instance(
            sql,
            None,
            error,
            self.dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=self.disconnected,
            dialect=self.dialect,
        )

    def close(self) -> None:
        """Closes the cursor (the connection stays with its owner)."""
        self._cursor.close()


def lean_connection(session: Session) -> LeanConnection:
    """A LeanConnection inside session's transaction (begun here if it has not been yet)."""
    connection = session.connection()
    return LeanConnection(connection.connection.driver_connection, statements_for(connection.dialect))
