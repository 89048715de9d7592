"""Immutable snapshots of rows: what the Store hands to the rest of the core.

ORM objects stay inside the worker thread and its session; callers get these
plain frozen values, safe to pass between threads and tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway_core.metering.outcome import UsageStatus
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
    # Limits, 0 = none. budget_spent_micros is for budget_period (UTC YYYYMM).
    rpm_limit: int = 0
    tpm_limit: int = 0
    concurrency_limit: int = 0
    monthly_budget_micros: int = 0
    budget_period: int = 0
    budget_spent_micros: int = 0
    budget_held_micros: int = 0
    # Models the account's keys may use at most; empty means every model.
    allowed_models: tuple[str, ...] = ()

    @property
    def available_micros(self) -> int:
        """What new requests can still reserve."""
        return self.balance_micros - self.held_micros

    def budget_spent_in(self, period: int) -> int:
        """What counts against the monthly budget in the UTC month period (YYYYMM)."""
        return self.budget_spent_micros if self.budget_period >= period else 0

    @classmethod
    def from_row(cls, row: models.Account) -> AccountRecord:
        return cls(
            id=row.id,
            display_name=row.display_name,
            balance_micros=row.balance_micros,
            held_micros=row.held_micros,
            created_at=row.created_at,
            updated_at=row.updated_at,
            rpm_limit=row.rpm_limit,
            tpm_limit=row.tpm_limit,
            concurrency_limit=row.concurrency_limit,
            monthly_budget_micros=row.monthly_budget_micros,
            budget_period=row.budget_period,
            budget_spent_micros=row.budget_spent_micros,
            budget_held_micros=row.budget_held_micros,
            allowed_models=tuple(row.allowed_models),
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
    # What the key's requests in flight have reserved against its spend limit.
    held_micros: int = 0
    # Requests this key may have in flight at once; 0 = no limit.
    concurrency_limit: int = 0

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
            held_micros=row.held_micros,
            concurrency_limit=row.concurrency_limit,
        )


@dataclass(frozen=True)
class ApiKeyCredential:
    """What authentication needs: the stored hash next to the key's data."""

    key: ApiKeyRecord
    key_hash: str = field(repr=False)
    # The key's account's allowed models (empty: every model), read in the same lookup.
    account_allowed_models: tuple[str, ...] = ()


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
    # The entry's change to the account's held_micros (holds, settlements, releases).
    held_delta_micros: int = 0

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
            held_delta_micros=row.held_delta_micros,
        )


@dataclass(frozen=True)
class HoldRecord:
    """A hold and, once closed, how it ended (charged_micros, balance_after_micros)."""

    request_id: str
    account_id: str
    api_key_id: str
    amount_micros: int
    status: models.HoldStatus
    instance_id: str
    model: str
    provider: str
    upstream_model: str
    charged_micros: int
    balance_after_micros: int | None
    created_at: datetime
    closed_at: datetime | None

    @property
    def released_micros(self) -> int:
        """What closing the hold gave back to the available balance (0 while open)."""
        return 0 if self.status == models.HoldStatus.OPEN else self.amount_micros - self.charged_micros

    @classmethod
    def from_row(cls, row: models.Hold) -> HoldRecord:
        return cls(
            request_id=row.request_id,
            account_id=row.account_id,
            api_key_id=row.api_key_id,
            amount_micros=row.amount_micros,
            status=models.HoldStatus(row.status),
            instance_id=row.instance_id,
            model=row.model,
            provider=row.provider,
            upstream_model=row.upstream_model,
            charged_micros=row.charged_micros,
            balance_after_micros=row.balance_after_micros,
            created_at=row.created_at,
            closed_at=row.closed_at,
        )


@dataclass(frozen=True)
class Usage:
    """One request's usage record, as stored."""

    request_id: str
    account_id: str
    api_key_id: str
    model: str
    provider: str
    upstream_model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_micros: int
    held_micros: int
    status: UsageStatus
    latency_ms: int
    time_to_first_token_ms: int | None
    estimated: bool
    clamped: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.UsageRecord) -> Usage:
        return cls(
            request_id=row.request_id,
            account_id=row.account_id,
            api_key_id=row.api_key_id,
            model=row.model,
            provider=row.provider,
            upstream_model=row.upstream_model,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cached_tokens=row.cached_tokens,
            reasoning_tokens=row.reasoning_tokens,
            cost_micros=row.cost_micros,
            held_micros=row.held_micros,
            status=UsageStatus(row.status),
            latency_ms=row.latency_ms,
            time_to_first_token_ms=row.time_to_first_token_ms,
            estimated=row.estimated,
            clamped=row.clamped,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class ModelUsage:
    """Usage totals of one model over a window."""

    model: str
    request_count: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
