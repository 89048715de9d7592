"""The order in which one request tries its model's routes.

Healthy routes come first: lowest priority value first, and among equal
priorities a weighted random order (each next route picked with probability
proportional to its weight, Efraimidis-Spirakis keys), so load spreads as
configured. Routes that may not be called now (circuit open, or waiting out
a Retry-After) follow, the one whose breaker opened longest ago first: if
every route is down, trying the oldest-opened one (the closest to its
half-open probe, with the longest time to recover) beats failing outright,
since a request that fails for sure is worse than one that may succeed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway_core.chat.route_health import RouteHealth
from gateway_core.config import Route


def weighted_order(routes: Sequence[Route], rng: random.Random) -> list[Route]:
    """By priority, then a weighted shuffle within each priority."""
    keyed = [(route.priority, -(rng.random() ** (1.0 / route.weight)), index, route) for index, route in enumerate(routes)]
    return [route for *_, route in sorted(keyed)]


def route_order(routes: Sequence[Route], health: RouteHealth, rng: random.Random) -> tuple[Route, ...]:
    """Every route of the model once: available ones in weighted order, then the rest, oldest-opened first."""
    if len(routes) == 1:  # the common case: nothing to order, and no random draw on the hot path
        return tuple(routes)
    ordered = weighted_order(routes, rng)
    up = {route: health.available(route) for route in ordered}
    available = [route for route in ordered if up[route]]
    resting = [route for route in ordered if not up[route]]
    resting.sort(key=lambda route: (health.wait_seconds(route) > 0, health.opened_at(route)))
    return (*available, *resting)
