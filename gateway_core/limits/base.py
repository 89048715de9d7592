"""The limiter interface: what to check, and what the answer says.

Rates use GCRA (the generic cell rate algorithm) over a one-minute period:
one timestamp per counter (the "theoretical arrival time"), no window edges
where a client could send twice its limit, exact remaining/reset values for
OpenAI's x-ratelimit-* headers, and a cost that can be corrected afterwards
(a token estimate replaced by real usage) by moving that timestamp. A fixed
window would allow 2x bursts at the boundary; a sliding log costs memory per
request. Concurrency is a set of leases (request ids) per counter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PERIOD_SECONDS = 60.0


class LimiterUnavailable(Exception):
    """The counter store (Redis) could not be reached in time."""


@dataclass(frozen=True)
class RateCheck:
    """Spend `cost` units of a per-minute `limit` on the counter `key`."""

    key: str
    limit: int
    cost: int


@dataclass(frozen=True)
class SlotCheck:
    """Take one of `limit` concurrent slots on the counter `key`."""

    key: str
    limit: int


@dataclass(frozen=True)
class RateState:
    """A rate counter after a decision: for the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_seconds: float


@dataclass(frozen=True)
class Verdict:
    """The answer to one admit: all checks passed (and were spent), or none was spent."""

    allowed: bool
    # Index into rates + slots of the first check that refused (-1 when allowed).
    refused: int
    retry_after_seconds: float
    rates: tuple[RateState, ...]


class Limiter(Protocol):
    """Counters shared by every request of one process (memory) or every replica (Redis)."""

    async def admit(self, rates: Sequence[RateCheck], slots: Sequence[SlotCheck], lease_id: str) -> Verdict:
        """Atomically spends every rate and takes every slot, or changes nothing."""
        ...

    async def correct(self, rate: RateCheck) -> None:
        """Adds rate.cost (may be negative) to a counter after the fact, never refusing."""
        ...

    async def release(self, slot_keys: Sequence[str], lease_id: str) -> None:
        """Gives back the slots lease_id took; releasing twice is harmless."""
        ...

    async def close(self) -> None:
        """Frees connections."""
        ...


def gcra_step(tat: float, now: float, limit: int, cost: int) -> tuple[float, float]:
    """(new theoretical arrival time, seconds until allowed; 0 = allowed now).

    The counter is full again at tat; each unit moves tat by period/limit and a
    request is allowed while tat stays within one period of now.
    """
    interval = PERIOD_SECONDS / limit
    new_tat = max(tat, now) + cost * interval
    allow_at = new_tat - PERIOD_SECONDS
    return new_tat, max(allow_at - now, 0.0)


def gcra_state(tat: float, now: float, limit: int) -> RateState:
    """Remaining units and seconds until the counter is full again."""
    interval = PERIOD_SECONDS / limit
    used = max(tat - now, 0.0)
    # The epsilon keeps float error (59.999999...) from costing a whole unit.
    remaining = int((PERIOD_SECONDS - used) / interval + 1e-6)
    return RateState(limit=limit, remaining=max(min(remaining, limit), 0), reset_seconds=used)
