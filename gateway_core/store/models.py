"""The database tables. Migrations in migrations/versions must match these exactly.

Money and token counts are BIGINT micro-USD / counts; every timestamp is an
aware UTC datetime. Balances change only together with a ledger entry.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKeyConstraint, Index, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from gateway_core.store.types import BigIntegerPK, JSONList, UTCDateTime

_ZERO = {"server_default": "0"}


class LedgerKind(enum.StrEnum):
    """What a ledger entry records; stored as its string value."""

    TOP_UP = "top_up"
    HOLD = "hold"
    SETTLE = "settle"
    RELEASE = "release"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class Account(SQLModel, table=True):
    """A customer account holding a prepaid balance.

    held_micros is the part reserved by requests in flight. The CHECK lets a
    hold be one conditional UPDATE (`... WHERE balance_micros - held_micros >= :h`)
    while the database itself guarantees the balance never goes negative.
    """

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(
            "held_micros >= 0 AND held_micros <= balance_micros",
            name="ck_accounts_held_within_balance",
        ),
        Index("ix_accounts_created_at_id", "created_at", "id"),
    )

    id: str = Field(sa_type=String(32), primary_key=True)
    display_name: str = Field(sa_type=String(200))
    balance_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    held_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class ApiKey(SQLModel, table=True):
    """An API key: its public id, the hash of the full key, and its limits."""

    __tablename__ = "api_keys"
    __table_args__ = (
        ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_api_keys_account_id_accounts"),
        Index("ix_api_keys_created_at_id", "created_at", "id"),
        Index("ix_api_keys_account_id_created_at_id", "account_id", "created_at", "id"),
    )

    id: str = Field(sa_type=String(32), primary_key=True)
    account_id: str = Field(sa_type=String(32))
    display_name: str = Field(default="", sa_type=String(200))
    key_hash: str = Field(sa_type=String(64), unique=True, index=True)
    allowed_models: list[str] = Field(default_factory=list, sa_type=JSONList, sa_column_kwargs={"server_default": "[]"})
    rpm_limit: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    tpm_limit: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    spend_limit_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    spent_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    expire_time: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    redacted: str = Field(sa_type=String(64))


class LedgerEntry(SQLModel, table=True):
    """One append-only change to an account's money.

    (kind, request_id) is unique so a top-up, hold or settlement with a given
    request id happens at most once; NULL request ids never conflict.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_ledger_entries_account_id_accounts"),
        UniqueConstraint("kind", "request_id", name="uq_ledger_entries_kind_request_id"),
        Index("ix_ledger_entries_account_id_id", "account_id", "id"),
    )

    id: int | None = Field(default=None, sa_type=BigIntegerPK, primary_key=True)
    account_id: str = Field(sa_type=String(32))
    kind: str = Field(sa_type=String(16))
    amount_micros: int = Field(sa_type=BigInteger)
    balance_after_micros: int = Field(sa_type=BigInteger)
    request_id: str | None = Field(default=None, sa_type=String(255), nullable=True)
    note: str = Field(default="", sa_type=String(1000))
    created_at: datetime = Field(sa_type=UTCDateTime)
