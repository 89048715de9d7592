"""HotLabels: the hot path's faster counter and histogram children leave /metrics exactly as the
metric's own children would, and the children stay usable (and shared) both ways."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway_core import metrics

AMOUNTS = [0.0, 0.0001, 0.00025, 0.0003, 0.001, 0.0099999, 0.01, 0.5, 1.0, 3.0, 1e9, math.inf, -2.0, math.nan, 7]
BUCKETS = (0.0001, 0.00025, 0.001, 0.01, 1.0, 5.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    """/metrics text without the creation timestamps (which differ between two registries)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    counter = Counter("hot_test_total", "c", ["a", "b"], registry=registry)
    histogram = Histogram("hot_test_seconds", "h", ["mode"], buckets=BUCKETS, registry=registry)
    return counter, histogram


def test_hot_children_give_the_same_exposition_as_the_metrics_own() -> None:
    plain, hot = CollectorRegistry(), CollectorRegistry()
    plain_counter, plain_histogram = _metrics(plain)
    hot_counter, hot_histogram = _metrics(hot)
    counters, histograms = metrics.HotLabels(hot_counter), metrics.HotLabels(hot_histogram)
    for index, amount in enumerate(AMOUNTS):
        mode = ("unary", "stream")[index % 2]
        plain_histogram.labels(mode).observe(amount)
        histograms.labels(mode).observe(amount)
        if amount >= 0 and not math.isnan(amount) and not math.isinf(amount):
            plain_counter.labels("x", mode).inc(amount)
            counters.labels("x", mode).inc(amount)
    plain_counter.labels("y", "z").inc()
    counters.labels("y", "z").inc()
    assert _exposition(hot) == _exposition(plain)
    assert "hot_test_seconds_bucket" in "\n".join(_exposition(hot))


def test_a_hot_child_counts_into_the_metrics_own_child() -> None:
    registry = CollectorRegistry()
    counter, histogram = _metrics(registry)
    metrics.HotLabels(counter).labels("a", "b").inc(2)
    counter.labels("a", "b").inc(3)
    metrics.HotLabels(histogram).labels("m").observe(0.001)
    assert registry.get_sample_value("hot_test_total", {"a": "a", "b": "b"}) == 5
    assert registry.get_sample_value("hot_test_seconds_bucket", {"mode": "m", "le": "0.001"}) == 1
    assert registry.get_sample_value("hot_test_seconds_bucket", {"mode": "m", "le": "0.00025"}) == 0


def test_a_hot_counter_refuses_to_go_down_like_a_counter() -> None:
    counter, _ = _metrics(CollectorRegistry())
    with pytest.raises(ValueError):
        metrics.HotLabels(counter).labels("a", "b").inc(-1)


def test_other_metric_types_get_their_own_children() -> None:
    gauge = Gauge("hot_test_gauge", "g", ["a"], registry=CollectorRegistry())
    assert metrics.HotLabels(gauge).labels("x") is gauge.labels("x")


def test_the_hot_path_metrics_are_hot() -> None:
    assert type(metrics.HotLabels(metrics.REQUESTS).labels("m", "p", "r", "ok")).__name__ == "_HotCounter"
    assert type(metrics.HotLabels(metrics.GATEWAY_OVERHEAD).labels("unary")).__name__ == "_HotHistogram"


def test_a_hot_gauge_moves_the_gauges_own_value() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("hot_test_open", "g", registry=registry)
    hot = metrics.hot_gauge(gauge)
    assert type(hot).__name__ == "_HotGauge"
    hot.inc()
    hot.inc()
    gauge.inc(3)
    hot.dec()
    assert registry.get_sample_value("hot_test_open") == 4
    assert type(metrics.hot_gauge(metrics.STREAMS_IN_FLIGHT)).__name__ == "_HotGauge"
