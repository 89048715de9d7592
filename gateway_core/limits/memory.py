"""Limits counted in this process: exact, no I/O, lost on restart (which only forgives).

Not shared between replicas; use the Redis limiter for that. Safe on one event
loop: admit() has no await between checking and spending.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway_core.limits.base import RateCheck, SlotCheck, Verdict, gcra_state, gcra_step

# Every this many admits, counters that are full again are forgotten (bounds memory).
_SWEEP_EVERY = 1024


class MemoryLimiter:
    """GCRA rates and lease sets in dictionaries. One per process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._slots: dict[str, set[str]] = {}
        self._admits = 0

    async def admit(self, rates: Sequence[RateCheck], slots: Sequence[SlotCheck], lease_id: str) -> Verdict:
        now = self._clock()
        self._sweep(now)
        new_tats: list[float] = []
        for index, rate in enumerate(rates):
            new_tat, wait = gcra_step(self._tats.get(rate.key, now), now, rate.limit, rate.cost)
            if wait > 0:
                return self._refused(rates, now, index, wait)
            new_tats.append(new_tat)
        for index, slot in enumerate(slots):
            if len(self._slots.get(slot.key, ())) >= slot.limit:
                # Unknown when a slot frees; a second is a fair hint.
                return self._refused(rates, now, len(rates) + index, 1.0)
        for rate, new_tat in zip(rates, new_tats, strict=True):
            self._tats[rate.key] = new_tat
        for slot in slots:
            self._slots.setdefault(slot.key, set()).add(lease_id)
        return Verdict(True, -1, 0.0, tuple(gcra_state(t, now, r.limit) for r, t in zip(rates, new_tats, strict=True)))

    async def correct(self, rate: RateCheck) -> None:
        now = self._clock()
        new_tat, _ = gcra_step(self._tats.get(rate.key, now), now, rate.limit, rate.cost)
        self._tats[rate.key] = max(new_tat, now)

    async def release(self, slot_keys: Sequence[str], lease_id: str) -> None:
        for key in slot_keys:
            leases = self._slots.get(key)
            if leases is not None:
                leases.discard(lease_id)
                if not leases:
                    del self._slots[key]

    async def close(self) -> None:
        return None

    def in_flight(self, key: str) -> int:
        """How many slots of key are taken (for tests and diagnostics)."""
        return len(self._slots.get(key, ()))

    def _refused(self, rates: Sequence[RateCheck], now: float, index: int, wait: float) -> Verdict:
        states = tuple(gcra_state(self._tats.get(r.key, now), now, r.limit) for r in rates)
        return Verdict(False, index, wait, states)

    def _sweep(self, now: float) -> None:
        self._admits += 1
        if self._admits % _SWEEP_EVERY == 0:
            self._tats = {key: tat for key, tat in self._tats.items() if tat > now}


