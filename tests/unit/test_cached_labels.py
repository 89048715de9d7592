"""CachedLabels: the hot path's metric children are the metric's own, looked up once."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gateway_core import metrics


def test_a_cached_child_is_the_metrics_own_child_and_counts_in_the_registry() -> None:
    cached = metrics.CachedLabels(metrics.UPSTREAM_ATTEMPTS)
    labels = {"provider": "cache-test", "route": "r1", "outcome": "ok"}
    before = REGISTRY.get_sample_value("tollgate_upstream_attempts_total", labels) or 0.0
    child = cached.labels("cache-test", "r1", "ok")
    assert child is metrics.UPSTREAM_ATTEMPTS.labels(**labels)
    assert cached.labels("cache-test", "r1", "ok") is child, "looked up once, then reused"
    child.inc()
    cached.labels("cache-test", "r1", "ok").inc(2)
    assert REGISTRY.get_sample_value("tollgate_upstream_attempts_total", labels) == before + 3


def test_different_label_values_get_different_children() -> None:
    cached = metrics.CachedLabels(metrics.GATEWAY_OVERHEAD)
    assert cached.labels("unary") is not cached.labels("stream")
    assert cached.labels("unary") is metrics.GATEWAY_OVERHEAD.labels(mode="unary")
