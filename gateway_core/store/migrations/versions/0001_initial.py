"""Accounts, API keys and the ledger.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Hand-written to match models.py; tests compare the migrated schema with the
models. Plain SQLAlchemy types only (no app imports), so this file stays valid
whatever later code does: datetimes are DateTime(timezone=True) (the models'
UTCDateTime), JSON lists are Text.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _bigint_zero(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")


def _timestamp(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        _bigint_zero("balance_micros"),
        _bigint_zero("held_micros"),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint(
            "held_micros >= 0 AND held_micros <= balance_micros",
            name="ck_accounts_held_within_balance",
        ),
    )
    op.create_index("ix_accounts_created_at_id", "accounts", ["created_at", "id"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("allowed_models", sa.Text(), nullable=False, server_default="[]"),
        _bigint_zero("rpm_limit"),
        _bigint_zero("tpm_limit"),
        _bigint_zero("spend_limit_micros"),
        _bigint_zero("spent_micros"),
        _timestamp("expire_time", nullable=True),
        _timestamp("created_at"),
        _timestamp("revoked_at", nullable=True),
        sa.Column("redacted", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_api_keys_account_id_accounts"),
    )
    op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
    op.create_index("ix_api_keys_created_at_id", "api_keys", ["created_at", "id"])
    op.create_index("ix_api_keys_account_id_created_at_id", "api_keys", ["account_id", "created_at", "id"])

    op.create_table(
        "ledger_entries",
        # SQLite auto-increments only an INTEGER PRIMARY KEY (a rowid alias).
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("balance_after_micros", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("note", sa.String(1000), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_ledger_entries_account_id_accounts"),
        sa.UniqueConstraint("kind", "request_id", name="uq_ledger_entries_kind_request_id"),
    )
    op.create_index("ix_ledger_entries_account_id_id", "ledger_entries", ["account_id", "id"])


def downgrade() -> None:
    op.drop_table("ledger_entries")
    op.drop_table("api_keys")
    op.drop_table("accounts")
