"""The database tables. Migrations in migrations/versions must match these exactly.

Money and token counts are BIGINT micro-USD / counts; every timestamp is an
aware UTC datetime. Balances change only together with a ledger entry.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKeyConstraint, Index, String, text
from sqlmodel import Field, SQLModel

from gateway_core.store.types import BigIntegerPK, JSONList, UTCDateTime

_ZERO = {"server_default": "0"}

# Predicates of the partial indexes (migrations 0004, 0005). A query uses such an index only if its WHERE
# carries the very same terms (SQLite matches them textually): queries add these with sqlalchemy.text().
# No IN lists of three or more in what the money path evaluates per row (CHECKs, index predicates):
# SQLite builds a temporary b-tree of the list for every statement that runs one (migration 0005).
OPEN_HOLD = "status = 'open'"
# Ledger kinds whose at-most-once rule rests on the holds table instead of this index (see LedgerEntry).
NOT_A_REQUEST_ENTRY = "kind <> 'hold' AND kind <> 'settle' AND kind <> 'release'"


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
    # Limits (0 = none), migration 0003. The monthly budget is money, so it is
    # enforced by the hold's conditional UPDATE: budget_period is the UTC month
    # (YYYYMM) budget_spent_micros belongs to, rolled over by that same UPDATE.
    rpm_limit: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    tpm_limit: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    concurrency_limit: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    monthly_budget_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    budget_period: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    budget_spent_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    budget_held_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    # Model ids every key of the account may use at most; empty means every model.
    allowed_models: list[str] = Field(default_factory=list, sa_type=JSONList, sa_column_kwargs={"server_default": "[]"})


class ApiKey(SQLModel, table=True):
    """An API key: its public id, the hash of the full key, and its limits.

    held_micros is what the key's requests in flight have reserved, so a spend
    limit is one conditional UPDATE (`spent + held + :h <= spend_limit`) too.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("held_micros >= 0", name="ck_api_keys_held_not_negative"),
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
    held_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    expire_time: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    redacted: str = Field(sa_type=String(64))
    concurrency_limit: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)


class LedgerEntry(SQLModel, table=True):
    """One append-only change to an account's money.

    (kind, request_id) is unique so a top-up, hold or settlement with a given
    request id happens at most once; NULL request ids never conflict. For the
    request path's kinds (hold, settle, release) the holds table enforces it
    (migration 0004): a HOLD entry is written only in the transaction that
    inserts the hold (request_id is its primary key), SETTLE and RELEASE only
    in the one whose conditional UPDATE closes it (once). So the unique index
    covers the other kinds only, and the two or three entries of every request
    no longer land on random pages of an index as large as the ledger.
    held_delta_micros is the entry's change to the account's held_micros, so
    that per account sum(amount) == balance and sum(held_delta) == held.
    Triggers (migration 0002) refuse UPDATE and DELETE of these rows.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_ledger_entries_account_id_accounts"),
        Index(
            "uq_ledger_entries_kind_request_id",
            "kind",
            "request_id",
            unique=True,
            sqlite_where=text(NOT_A_REQUEST_ENTRY),
            postgresql_where=text(NOT_A_REQUEST_ENTRY),
        ),
        Index("ix_ledger_entries_account_id_id", "account_id", "id"),
    )

    id: int | None = Field(default=None, sa_type=BigIntegerPK, primary_key=True)
    account_id: str = Field(sa_type=String(32))
    kind: str = Field(sa_type=String(16))
    amount_micros: int = Field(sa_type=BigInteger)
    balance_after_micros: int = Field(sa_type=BigInteger)
    held_delta_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    request_id: str | None = Field(default=None, sa_type=String(255), nullable=True)
    note: str = Field(default="", sa_type=String(1000))
    created_at: datetime = Field(sa_type=UTCDateTime)


class HoldStatus(enum.StrEnum):
    """Where a hold is in its life; stored as its string value. Only 'open' ever changes."""

    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"


class Hold(SQLModel, table=True):
    """Money reserved for one admitted request, leased to the core process serving it.

    The row is also the settlement's record: once closed it keeps what was
    charged and the balance after, so a replayed settle returns the same numbers.
    model/provider/upstream_model let the reconciler name an abandoned request.
    """

    __tablename__ = "holds"
    __table_args__ = (
        ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_holds_account_id_accounts"),
        ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name="fk_holds_api_key_id_api_keys"),
        CheckConstraint("amount_micros >= 0", name="ck_holds_amount_not_negative"),
        CheckConstraint(
            "charged_micros >= 0 AND charged_micros <= amount_micros", name="ck_holds_charged_within_amount"
        ),
        CheckConstraint("status = 'open' OR status = 'settled' OR status = 'released'", name="ck_holds_status"),
        # Only open holds (migration 0004): the orphan sweep's lookup. A hold leaves it when it
        # closes, so it stays as small as the requests in flight instead of growing with every hold.
        Index(
            "ix_holds_open_instance_id",
            "instance_id",
            sqlite_where=text(OPEN_HOLD),
            postgresql_where=text(OPEN_HOLD),
        ),
    )

    request_id: str = Field(sa_type=String(255), primary_key=True)
    account_id: str = Field(sa_type=String(32))
    api_key_id: str = Field(sa_type=String(32))
    amount_micros: int = Field(sa_type=BigInteger)
    status: str = Field(sa_type=String(16))
    instance_id: str = Field(sa_type=String(64))
    model: str = Field(default="", sa_type=String(200))
    provider: str = Field(default="", sa_type=String(200))
    upstream_model: str = Field(default="", sa_type=String(200))
    charged_micros: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs=_ZERO)
    balance_after_micros: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class UsageRecord(SQLModel, table=True):
    """The metering record of one admitted request: exactly one per hold, written when it closes."""

    __tablename__ = "usage_records"
    __table_args__ = (
        # The FK to holds: no usage record without an admitted request.
        ForeignKeyConstraint(["request_id"], ["holds.request_id"], name="fk_usage_records_request_id_holds"),
        ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_usage_records_account_id_accounts"),
        ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name="fk_usage_records_api_key_id_api_keys"),
        Index("ix_usage_records_account_id_created_at_request_id", "account_id", "created_at", "request_id"),
    )

    request_id: str = Field(sa_type=String(255), primary_key=True)
    account_id: str = Field(sa_type=String(32))
    api_key_id: str = Field(sa_type=String(32))
    model: str = Field(sa_type=String(200))
    provider: str = Field(sa_type=String(200))
    upstream_model: str = Field(sa_type=String(200))
    prompt_tokens: int = Field(sa_type=BigInteger)
    completion_tokens: int = Field(sa_type=BigInteger)
    cached_tokens: int = Field(sa_type=BigInteger)
    reasoning_tokens: int = Field(sa_type=BigInteger)
    cost_micros: int = Field(sa_type=BigInteger)
    held_micros: int = Field(sa_type=BigInteger)
    status: str = Field(sa_type=String(32))
    latency_ms: int = Field(sa_type=BigInteger)
    time_to_first_token_ms: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    estimated: bool = Field(sa_type=Boolean)
    clamped: bool = Field(sa_type=Boolean)
    # When the request was admitted (the hold's time), in database time.
    created_at: datetime = Field(sa_type=UTCDateTime)


class Instance(SQLModel, table=True):
    """A running core process's lease: holds it owns stay open while its heartbeat is fresh.

    Both times are the database's clock, never a replica's (see store/clock.py).
    """

    __tablename__ = "instances"

    id: str = Field(sa_type=String(64), primary_key=True)
    started_at: datetime = Field(sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(sa_type=UTCDateTime)
