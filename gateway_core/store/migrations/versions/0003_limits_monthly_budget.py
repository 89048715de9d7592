"""Account limits (allowed models, rpm, tpm, concurrency), a monthly budget per account, key concurrency.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Hand-written to match models.py. budget_period is the UTC month (YYYYMM) that
budget_spent_micros belongs to; the hold's conditional UPDATE rolls it over,
so no background job resets budgets.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACCOUNT_COLUMNS = (
    "rpm_limit",
    "tpm_limit",
    "concurrency_limit",
    "monthly_budget_micros",
    "budget_period",
    "budget_spent_micros",
    "budget_held_micros",
)


def _bigint_zero(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        for name in _ACCOUNT_COLUMNS:
            batch.add_column(_bigint_zero(name))
        batch.add_column(sa.Column("allowed_models", sa.Text(), nullable=False, server_default="[]"))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(_bigint_zero("concurrency_limit"))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("concurrency_limit")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("allowed_models")
        for name in reversed(_ACCOUNT_COLUMNS):
            batch.drop_column(name)
