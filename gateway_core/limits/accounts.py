"""Account limits, read from the store and cached per process with bounded staleness.

A change made through AdminService reaches every replica within
`cache_seconds` (the same bound as key revocation).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway_core.store.records import AccountRecord

DEFAULT_ENTRIES = 10_000


@dataclass(frozen=True)
class AccountLimits:
    """An account's rate and concurrency limits; 0 means none."""

    rpm_limit: int = 0
    tpm_limit: int = 0
    concurrency_limit: int = 0


class AccountLookup(Protocol):
    """The one store method account limits need."""

    async def get_account(self, account_id: str) -> AccountRecord: ...


class AccountLimitsCache:
    """Account id -> AccountLimits, each entry at most cache_seconds old. One per process."""

    def __init__(
        self,
        store: AccountLookup,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = DEFAULT_ENTRIES,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, AccountLimits]] = OrderedDict()

    async def get(self, account_id: str) -> AccountLimits:
        cached = self._cache.get(account_id)
        if cached is not None and self._clock() - cached[0] < self._cache_seconds:
            return cached[1]
        record = await self._store.get_account(account_id)
        limits = AccountLimits(record.rpm_limit, record.tpm_limit, record.concurrency_limit)
        self._cache[account_id] = (self._clock(), limits)
        self._cache.move_to_end(account_id)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return limits
