"""Prometheus metrics shared by the core and the facade.

Every metric lives in the process-wide default registry, so `tollgate serve`
(core and facade in one process) exposes them all on the facade's `/metrics`.

Label values must come from bounded sets: configured model, provider and route
names, reason codes from `gateway_core.errors.Reason`, and small fixed words
("ok", "stream", ...). Never a key id, account id, request id or free text.
"""

from __future__ import annotations

import bisect
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

M = TypeVar("M", Counter, Gauge, Histogram)

# Latency buckets from 5 ms to 5 min: covers fast cached answers and long streams.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Gateway overhead is small by design: 100 µs .. 1 s.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

REQUESTS = Counter(
    "tollgate_requests_total",
    "Chat requests finished, by model, provider, route and status (a reason code or 'ok').",
    ["model", "provider", "route", "status"],
)
TOKENS = Counter(
    "tollgate_tokens_total",
    "Tokens billed, by model, provider and direction (prompt|completion).",
    ["model", "provider", "direction"],
)
COST_MICROS = Counter(
    "tollgate_cost_micros_total",
    "Micro-USD charged to accounts, by model and provider.",
    ["model", "provider"],
)
REQUEST_DURATION = Histogram(
    "tollgate_request_duration_seconds",
    "Time from admission to the last byte, by model, provider and mode (unary|stream).",
    ["model", "provider", "mode"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "tollgate_time_to_first_token_seconds",
    "Time from admission to the first content chunk of a stream, by model and provider.",
    ["model", "provider"],
    buckets=_LATENCY_BUCKETS,
)
GATEWAY_OVERHEAD = Histogram(
    "tollgate_gateway_overhead_seconds",
    "Time a request spent in the gateway itself (not waiting on the upstream), by mode.",
    ["mode"],
    buckets=_OVERHEAD_BUCKETS,
)
UPSTREAM_ATTEMPTS = Counter(
    "tollgate_upstream_attempts_total",
    "Upstream calls made, by provider, route and outcome (ok or a reason code).",
    ["provider", "route", "outcome"],
)
UPSTREAM_RETRIES = Counter(
    "tollgate_upstream_retries_total",
    "Upstream attempts beyond the first for one request, by model.",
    ["model"],
)
FALLBACKS = Counter(
    "tollgate_fallbacks_total",
    "Requests answered by a route other than their first choice, by model.",
    ["model"],
)
COOLDOWNS = Counter(
    "tollgate_route_cooldowns_total",
    "Times a route's circuit breaker opened, by provider and route.",
    ["provider", "route"],
)
REJECTIONS = Counter(
    "tollgate_rejections_total",
    "Requests refused before reaching upstream, by reason (rate_limit_exceeded, insufficient_quota, ...).",
    ["reason"],
)
STREAMS_IN_FLIGHT = Gauge(
    "tollgate_streams_in_flight",
    "Streaming responses currently open.",
)
HOLDS_OUTSTANDING = Gauge(
    "tollgate_holds_outstanding",
    "Holds taken by this process and not yet settled or released.",
)
LIMIT_STORE_FAILURES = Counter(
    "tollgate_limit_store_failures_total",
    "Rate-limit checks that could not reach the counter store (Redis), by the policy applied (open, closed).",
    ["policy"],
)


class CachedLabels(Generic[M]):
    """A metric's labelled children, looked up once per label tuple.

    `metric.labels(...)` validates and locks on every call (~5 µs); the hot path
    asks for the same few children per request, so each is kept here after the
    first lookup. Safe because label values come from bounded sets (see above)
    and no code removes children (`remove`/`clear` would orphan a cached one).
    """

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        """The child for these label values, in the metric's label order."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._child(self._metric.labels(*values))
        return child

    def _child(self, child: Any) -> Any:
        """What is kept and handed out for a newly looked-up child."""
        return child


class HotLabels(CachedLabels[M]):
    """CachedLabels for the per-request hot path: children that count without prometheus_client's
    per-call checks (observability check, a method call per step, a Python loop over buckets).

    `labels(...)` gives an object with the child's `inc(amount)` (counters) or `observe(amount)`
    (histograms) that changes the child's own values, under the same per-value lock, exactly
    as the child would: /metrics shows the same numbers. Where that cannot be done safely (a
    multiprocess value class, another metric type) the child itself is handed out.
    """

    def _child(self, child: Any) -> Any:
        return hot_child(child)


def hot_child(child: Any) -> Any:
    """A faster stand-in for a Counter or Histogram child, or the child itself."""
    if type(child) is Counter and type(child._value) is MutexValue:
        return _HotCounter(child._value)
    if (type(child) is Histogram and type(child._sum) is MutexValue
            and all(type(bucket) is MutexValue for bucket in child._buckets)):
        return _HotHistogram(child)
    return child


def hot_gauge(gauge: Gauge) -> Any:
    """A faster stand-in for an unlabelled Gauge's inc() and dec(), or the gauge itself."""
    if type(gauge._value) is MutexValue:
        return _HotGauge(gauge._value)
    return gauge


class _HotGauge:
    """Gauge.inc/dec by one on its value: the same lock, without the observability check and the
    method chain (a stream changes STREAMS_IN_FLIGHT twice)."""

    __slots__ = ("_value",)

    def __init__(self, value: MutexValue) -> None:
        self._value = value

    def inc(self) -> None:
        value = self._value
        with value._lock:
            value._value += 1

    def dec(self) -> None:
        value = self._value
        with value._lock:
            value._value -= 1


class _HotCounter:
    """Counter.inc on one child's value: same check, same lock, fewer calls."""

    __slots__ = ("_value",)

    def __init__(self, value: MutexValue) -> None:
        self._value = value

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        value = self._value
        with value._lock:
            value._value += amount


class _HotHistogram:
    """Histogram.observe on one child's values: its sum and the first bucket whose bound holds the
    amount (found by bisection instead of a loop), each under its own lock as the child does."""

    __slots__ = ("_child", "_sum", "_buckets", "_bounds")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._sum: MutexValue = child._sum
        self._buckets: list[MutexValue] = list(child._buckets)
        self._bounds: list[float] = list(child._upper_bounds)

    def observe(self, amount: float) -> None:
        index = bisect.bisect_left(self._bounds, amount)
        if amount != amount or index >= len(self._buckets):  # NaN (counted in no bucket): the child's way
            self._child.observe(amount)
            return
        total = self._sum
        with total._lock:
            total._value += amount
        bucket = self._buckets[index]
        with bucket._lock:
            bucket._value += 1
