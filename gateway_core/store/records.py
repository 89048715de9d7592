"""Immutable snapshots of rows: what the Store hands to the rest of the core.

ORM objects stay inside the worker thread and its session; callers get these
plain frozen values, safe to pass between threads and tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway_core.store import models


@dataclass(frozen=True)
class AccountRecord:
    """An account and its money, as of one read."""

    id: str
    display_name: str
    balance_micros: int
    held_micros: int
    created_at: datetime
    updated_at: datetime

    @property
    def available_micros(self) -> int:
        """What new requests can still reserve."""
        return self.balance_micros - self.held_micros

    @classmethod
    def from_row(cls, row: models.Account) -> AccountRecord:
        return cls(
            id=row.id,
            display_name=row.display_name,
            balance_micros=row.balance_micros,
            held_micros=row.held_micros,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key's public data and limits (never its secret or hash)."""

    id: str
    account_id: str
    display_name: str
    allowed_models: tuple[str, ...]
    rpm_limit: int
    tpm_limit: int
    spend_limit_micros: int
    spent_micros: int
    expire_time: datetime | None
    created_at: datetime
    revoked_at: datetime | None
    redacted: str

    def state(self, now: datetime) -> str:
        """'revoked', 'expired' or 'active' at the given aware time."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expire_time is not None and self.expire_time <= now:
            return "expired"
        return "active"

    @classmethod
    def from_row(cls, row: models.ApiKey) -> ApiKeyRecord:
        return cls(
            id=row.id,
            account_id=row.account_id,
            display_name=row.display_name,
            allowed_models=tuple(row.allowed_models),
            rpm_limit=row.rpm_limit,
            tpm_limit=row.tpm_limit,
            spend_limit_micros=row.spend_limit_micros,
            spent_micros=row.spent_micros,
            expire_time=row.expire_time,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            redacted=row.redacted,
        )


@dataclass(frozen=True)
class ApiKeyCredential:
    """What authentication needs: the stored hash next to the key's data."""

    key: ApiKeyRecord
    key_hash: str = field(repr=False)


@dataclass(frozen=True)
class LedgerEntryRecord:
    """One ledger entry."""

    id: int
    account_id: str
    kind: models.LedgerKind
    amount_micros: int
    balance_after_micros: int
    request_id: str | None
    note: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.LedgerEntry) -> LedgerEntryRecord:
        assert row.id is not None, "ledger entry read before flush"
        return cls(
            id=row.id,
            account_id=row.account_id,
            kind=models.LedgerKind(row.kind),
            amount_micros=row.amount_micros,
            balance_after_micros=row.balance_after_micros,
            request_id=row.request_id,
            note=row.note,
            created_at=row.created_at,
        )
