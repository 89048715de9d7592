"""The values that cross between the chat pipeline and the ledger: a hold, and what a request consumed."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class UsageStatus(enum.StrEnum):
    """How a metered request ended (gateway.v1.UsageStatus, stored as these strings)."""

    OK = "ok"
    CANCELLED = "cancelled"
    UPSTREAM_ERROR = "upstream_error"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class Hold:
    """Worst-case cost reserved on an account (and its key) before the upstream call."""

    request_id: str
    account_id: str
    api_key_id: str
    amount_micros: int


@dataclass(frozen=True)
class UsageOutcome:
    """What one admitted request consumed, as the chat pipeline measured it.

    cost_micros is already priced (metering.pricing) and at most the hold; the
    ledger clamps it to the hold again, defensively, and flags the record.
    """

    model: str
    provider: str
    upstream_model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_micros: int
    status: UsageStatus
    latency_ms: int
    time_to_first_token_ms: int | None
    estimated: bool
    clamped: bool = False


@dataclass(frozen=True)
class Settlement:
    """The result of settling a hold; a replay returns the first settlement's values."""

    request_id: str
    charged_micros: int
    released_micros: int
    balance_after_micros: int
    replayed: bool
