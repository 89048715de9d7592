"""Partial indexes on the money path: open holds only; ledger uniqueness outside the request path's kinds.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Hand-written to match models.py. Every request inserts a hold and two or three
ledger entries and closes the hold; each index entry written lands on a page
that the transaction then writes to the WAL (and a checkpoint copies later):

- ix_holds_status_instance_id (status, instance_id) moved every hold from the
  'open' to the 'settled' part of the index at its close: two pages, in an index
  growing with every request. ix_holds_open_instance_id (instance_id) WHERE
  status = 'open' holds the requests in flight only, which is all the orphan
  sweep asks for.
- uq_ledger_entries_kind_request_id was a UNIQUE constraint over every entry:
  random request ids put each of a request's entries on a random page of an
  index as large as the ledger (about 4 pages per request). For hold, settle
  and release entries the holds table already guarantees at most one per
  request (see models.LedgerEntry), so the index is now partial and keeps
  guarding top-ups and any other kind.

SQLite cannot drop a table's UNIQUE constraint in place, so ledger_entries is
copied (batch mode), and its append-only triggers, dropped with the old table,
are created again. On PostgreSQL the constraint is dropped and the partial
unique index created; its triggers belong to the table and stay.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The predicates exactly as models.py spells them (queries repeat them verbatim to use the indexes).
_OPEN_HOLD = "status = 'open'"
_NOT_A_REQUEST_ENTRY = "kind NOT IN ('hold', 'settle', 'release')"
_LEDGER_UNIQUE = "uq_ledger_entries_kind_request_id"

# As migration 0002 created them: DROP TABLE removes a table's triggers with it.
_SQLITE_GUARDS = (
    """
    CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
    BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END
    """,
    """
    CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
    BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END
    """,
)


def _sqlite() -> bool:
    # get_context() works offline too (sql_script), where there is no bind.
    return op.get_context().dialect.name == "sqlite"


def _partial(predicate: str) -> dict[str, object]:
    return {"sqlite_where": sa.text(predicate), "postgresql_where": sa.text(predicate)}


def upgrade() -> None:
    op.drop_index("ix_holds_status_instance_id", table_name="holds")
    op.create_index("ix_holds_open_instance_id", "holds", ["instance_id"], **_partial(_OPEN_HOLD))
    if _sqlite():
        _drop_ledger_triggers()
        with op.batch_alter_table("ledger_entries", recreate="always") as batch:
            batch.drop_constraint(_LEDGER_UNIQUE, type_="unique")
    else:
        op.drop_constraint(_LEDGER_UNIQUE, "ledger_entries", type_="unique")
    op.create_index(_LEDGER_UNIQUE, "ledger_entries", ["kind", "request_id"], unique=True, **_partial(_NOT_A_REQUEST_ENTRY))
    if _sqlite():
        for statement in _SQLITE_GUARDS:
            op.execute(statement)


def downgrade() -> None:
    op.drop_index(_LEDGER_UNIQUE, table_name="ledger_entries")
    if _sqlite():
        _drop_ledger_triggers()
        with op.batch_alter_table("ledger_entries", recreate="always") as batch:
            batch.create_unique_constraint(_LEDGER_UNIQUE, ["kind", "request_id"])
        for statement in _SQLITE_GUARDS:
            op.execute(statement)
    else:
        op.create_unique_constraint(_LEDGER_UNIQUE, "ledger_entries", ["kind", "request_id"])
    op.drop_index("ix_holds_open_instance_id", table_name="holds")
    op.create_index("ix_holds_status_instance_id", "holds", ["status", "instance_id"])


def _drop_ledger_triggers() -> None:
    # Before the copy: the old table goes with its triggers anyway, and the copy must not be refused by them.
    op.execute("DROP TRIGGER ledger_entries_no_update")
    op.execute("DROP TRIGGER ledger_entries_no_delete")
