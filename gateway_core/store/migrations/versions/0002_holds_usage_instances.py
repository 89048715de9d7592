"""Holds, usage records, core instances; held amounts on keys; an append-only ledger.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Hand-written to match models.py (plain SQLAlchemy types only, like 0001).
The ledger's append-only guard is a trigger pair on SQLite and a trigger
function on PostgreSQL; both raise an integrity error, so the driver reports
an UPDATE or DELETE of a ledger row as IntegrityError on either backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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

# No '%' and no ':name' in these texts: they pass through bind-parameter and
# paramstyle processing online, and are printed verbatim offline.
_POSTGRESQL_GUARDS = (
    """
    CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION USING
            MESSAGE = 'ledger_entries is append-only, refused ' || TG_OP,
            ERRCODE = 'integrity_constraint_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER ledger_entries_no_update_or_delete BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()
    """,
    """
    CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only()
    """,
)


def _bigint(name: str, *, zero: bool = False, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=nullable, server_default="0" if zero else None)


def _timestamp(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _dialect() -> str:
    # get_context() works offline too (sql_script), where there is no bind.
    return op.get_context().dialect.name


def upgrade() -> None:
    # Batch: SQLite cannot add a CHECK constraint in place, so it copies the table.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(_bigint("held_micros", zero=True))
        batch.create_check_constraint("ck_api_keys_held_not_negative", "held_micros >= 0")
    op.add_column("ledger_entries", _bigint("held_delta_micros", zero=True))
    _guard_ledger()

    op.create_table(
        "holds",
        sa.Column("request_id", sa.String(255), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=False),
        _bigint("amount_micros"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(200), nullable=False),
        sa.Column("upstream_model", sa.String(200), nullable=False),
        _bigint("charged_micros", zero=True),
        _bigint("balance_after_micros", nullable=True),
        _timestamp("created_at"),
        _timestamp("closed_at", nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_holds_account_id_accounts"),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name="fk_holds_api_key_id_api_keys"),
        sa.CheckConstraint("amount_micros >= 0", name="ck_holds_amount_not_negative"),
        sa.CheckConstraint(
            "charged_micros >= 0 AND charged_micros <= amount_micros", name="ck_holds_charged_within_amount"
        ),
        sa.CheckConstraint("status IN ('open', 'settled', 'released')", name="ck_holds_status"),
    )
    op.create_index("ix_holds_status_instance_id", "holds", ["status", "instance_id"])

    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(255), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(200), nullable=False),
        sa.Column("upstream_model", sa.String(200), nullable=False),
        _bigint("prompt_tokens"),
        _bigint("completion_tokens"),
        _bigint("cached_tokens"),
        _bigint("reasoning_tokens"),
        _bigint("cost_micros"),
        _bigint("held_micros"),
        sa.Column("status", sa.String(32), nullable=False),
        _bigint("latency_ms"),
        _bigint("time_to_first_token_ms", nullable=True),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("clamped", sa.Boolean(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(["request_id"], ["holds.request_id"], name="fk_usage_records_request_id_holds"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_usage_records_account_id_accounts"),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name="fk_usage_records_api_key_id_api_keys"),
    )
    op.create_index(
        "ix_usage_records_account_id_created_at_request_id",
        "usage_records",
        ["account_id", "created_at", "request_id"],
    )

    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), primary_key=True),
        _timestamp("started_at"),
        _timestamp("heartbeat_at"),
    )


def _guard_ledger() -> None:
    dialect = _dialect()
    statements: tuple[str, ...]
    if dialect == "sqlite":
        statements = _SQLITE_GUARDS
    elif dialect == "postgresql":
        statements = _POSTGRESQL_GUARDS
    else:
        raise NotImplementedError(f"no append-only guard for the {dialect} dialect")
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_table("usage_records")
    op.drop_table("holds")
    if _dialect() == "sqlite":
        op.execute("DROP TRIGGER ledger_entries_no_delete")
        op.execute("DROP TRIGGER ledger_entries_no_update")
    else:
        op.execute("DROP TRIGGER ledger_entries_no_truncate ON ledger_entries")
        op.execute("DROP TRIGGER ledger_entries_no_update_or_delete ON ledger_entries")
        op.execute("DROP FUNCTION ledger_entries_append_only()")
    op.drop_column("ledger_entries", "held_delta_micros")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("ck_api_keys_held_not_negative", type_="check")
        batch.drop_column("held_micros")
