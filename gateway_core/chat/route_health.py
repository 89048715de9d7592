"""What the process has learned about each route's health: circuit breakers and Retry-After.

A route is one (provider, upstream model) pair. Its circuit breaker is closed
while it answers; after `failure_threshold` consecutive failures it opens for
`cooldown` seconds and is skipped; then it is half-open and lets exactly one
probe through; the probe's success closes it, its failure opens it again. An
upstream's Retry-After (or an exhausted operator quota) makes the route wait
at least that long before anyone calls it again, without counting as a
breaker trip unless the failures add up.

One RouteHealth per core, shared by every request; asyncio single-threaded,
so no locks.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway_core.config import Route, RoutingSettings
from gateway_core.metrics import COOLDOWNS

Clock = Callable[[], float]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class RouteKey:
    """A route's identity for health: the provider and its model id."""

    provider: str
    model: str

    @classmethod
    def of(cls, route: Route) -> RouteKey:
        return cls(route.provider, route.model)


class _Breaker:
    """One route's state. Not thread-safe; owned by RouteHealth."""

    def __init__(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.open_until = 0.0
        self.probe_in_flight = False
        # Not before this time (monotonic): the upstream asked us to wait (Retry-After, quota).
        self.not_before = 0.0


class RouteHealth:
    """Circuit breakers and Retry-After waits for every route; safe to share between requests."""

    def __init__(self, settings: RoutingSettings, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        # Keyed by (provider, model), RouteKey's fields: a plain tuple hashes in C, and this runs
        # several times per request (a frozen dataclass key cost more than the lookup).
        self._breakers: dict[tuple[str, str], _Breaker] = {}

    def _get(self, route: Route) -> _Breaker:
        key = (route.provider, route.model)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = _Breaker()
        return breaker

    def state(self, route: Route) -> BreakerState:
        """The breaker's state now (an open breaker past its cooldown reads as half-open)."""
        breaker = self._get(route)
        if breaker.state == BreakerState.OPEN and self._clock() >= breaker.open_until:
            return BreakerState.HALF_OPEN
        return breaker.state

    def available(self, route: Route) -> bool:
        """Whether a call may go to the route now without forcing it (see `acquire`)."""
        breaker = self._get(route)
        now = self._clock()
        if now < breaker.not_before:
            return False
        state = self.state(route)
        return state == BreakerState.CLOSED or (state == BreakerState.HALF_OPEN and not breaker.probe_in_flight)

    def wait_seconds(self, route: Route) -> float:
        """How long until the route's own Retry-After (or quota cooldown) has passed; 0 if it has."""
        return max(self._get(route).not_before - self._clock(), 0.0)

    def opened_at(self, route: Route) -> float:
        """When the route's breaker last opened (0 if never): the oldest opening is tried first."""
        return self._get(route).opened_at

    def acquire(self, route: Route) -> bool:
        """Marks the start of a call; True if it is the half-open probe (whose result decides the breaker)."""
        breaker = self._get(route)
        if self.state(route) == BreakerState.HALF_OPEN and not breaker.probe_in_flight:
            breaker.state = BreakerState.HALF_OPEN
            breaker.probe_in_flight = True
            return True
        return False

    def release(self, route: Route, probe: bool) -> None:
        """The call ended without a verdict (the client left): free the probe slot."""
        if probe:
            self._get(route).probe_in_flight = False

    def succeeded(self, route: Route, probe: bool) -> None:
        """The route answered: whatever its state, it is healthy again."""
        breaker = self._get(route)
        breaker.state = BreakerState.CLOSED
        breaker.consecutive_failures = 0
        if probe:
            breaker.probe_in_flight = False

    def failed(self, route: Route, probe: bool, *, retry_after: float | None, quota_exhausted: bool) -> None:
        """A failure that says something about the route (never the caller's own bad request)."""
        breaker = self._get(route)
        now = self._clock()
        breaker.consecutive_failures += 1
        if retry_after is not None:
            breaker.not_before = max(breaker.not_before, now + retry_after)
        if quota_exhausted:
            self._open(route, breaker, now, self._settings.quota_cooldown_seconds)
            breaker.not_before = max(breaker.not_before, breaker.open_until)
        elif probe or (
            breaker.state == BreakerState.CLOSED
            and breaker.consecutive_failures >= self._settings.breaker_failure_threshold
        ):
            self._open(route, breaker, now, self._settings.breaker_cooldown_seconds)
        if probe:
            breaker.probe_in_flight = False

    def _open(self, route: Route, breaker: _Breaker, now: float, cooldown: float) -> None:
        breaker.state = BreakerState.OPEN
        breaker.opened_at = now
        breaker.open_until = now + cooldown
        breaker.probe_in_flight = False
        COOLDOWNS.labels(route.provider, route.model).inc()
