"""The money path's CHECK and partial-index predicates written without IN lists.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Hand-written to match models.py. SQLite evaluates ``x IN (a, b, c)`` with three
or more constants by building a temporary b-tree of the constants, every time a
statement runs (sqlite3FindInIndex: only lists of up to two are compared one by
one). ck_holds_status ``status IN ('open', 'settled', 'released')`` is evaluated
by every hold INSERT and every closing UPDATE, and the predicate of
uq_ledger_entries_kind_request_id ``kind NOT IN ('hold', 'settle', 'release')``
by every ledger INSERT: four temporary b-trees per request, each opened,
filled, probed and freed (callgrind of the writer thread: ~70k of ~840k
instructions per hold+settle pair). The same conditions as ORs and ANDs of
comparisons cost nothing of the kind. Every row satisfies the new CHECK (it is
the same condition), and the index covers the same rows.

The CHECK on SQLite: a table's CHECK can only change by copying the table, and
holds cannot be copied inside this migration's transaction with foreign keys on
(dropping the old table would break usage_records' references to it). The CHECK
text is instead replaced in sqlite_schema, as SQLite documents for changing a
CHECK that every row satisfies (lang_altertable.html, "other kinds of table
schema changes"): the stored rows do not change. writable_schema=RESET reloads
this connection's schema; the index re-created after it bumps the schema
version, so every other connection reloads its schema too. On PostgreSQL the
constraint is dropped and added again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HOLD_STATUS = "ck_holds_status"
_OLD_STATUS = "status IN ('open', 'settled', 'released')"
_NEW_STATUS = "status = 'open' OR status = 'settled' OR status = 'released'"
_LEDGER_UNIQUE = "uq_ledger_entries_kind_request_id"
_OLD_NOT_A_REQUEST_ENTRY = "kind NOT IN ('hold', 'settle', 'release')"
_NEW_NOT_A_REQUEST_ENTRY = "kind <> 'hold' AND kind <> 'settle' AND kind <> 'release'"


def _sqlite() -> bool:
    # get_context() works offline too (sql_script), where there is no bind.
    return op.get_context().dialect.name == "sqlite"


def upgrade() -> None:
    _replace_status_check(_OLD_STATUS, _NEW_STATUS)
    _replace_ledger_unique(_NEW_NOT_A_REQUEST_ENTRY)


def downgrade() -> None:
    _replace_status_check(_NEW_STATUS, _OLD_STATUS)
    _replace_ledger_unique(_OLD_NOT_A_REQUEST_ENTRY)


def _replace_status_check(old: str, new: str) -> None:
    if not _sqlite():
        op.drop_constraint(_HOLD_STATUS, "holds", type_="check")
        op.create_check_constraint(_HOLD_STATUS, "holds", new)
        return
    op.execute("PRAGMA writable_schema=ON")
    # The condition as migration 0002 (or this one) wrote it into holds' CREATE TABLE, exactly once.
    # (SQLite's migrations need a live connection anyway: 0002's batch copies reflect their tables.)
    replaced = op.get_bind().execute(
        sa.text(
            "UPDATE sqlite_schema SET sql = replace(sql, :old, :new)"
            " WHERE type = 'table' AND name = 'holds' AND instr(sql, :old) > 0"
        ).bindparams(old=old, new=new)
    )
    op.execute("PRAGMA writable_schema=RESET")
    if replaced.rowcount != 1:
        raise RuntimeError(f"holds' CREATE TABLE does not carry the CHECK {old!r} to replace")


def _replace_ledger_unique(predicate: str) -> None:
    # Re-creating the index also bumps SQLite's schema version (see the module docstring).
    op.drop_index(_LEDGER_UNIQUE, table_name="ledger_entries")
    op.create_index(
        _LEDGER_UNIQUE,
        "ledger_entries",
        ["kind", "request_id"],
        unique=True,
        sqlite_where=sa.text(predicate),
        postgresql_where=sa.text(predicate),
    )
