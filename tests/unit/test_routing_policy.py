"""Routing's pure parts: circuit breakers, Retry-After waits, the retry budget, route order,
what is retried, operator-quota detection in each provider's error map, and the config keys."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from prometheus_client import REGISTRY

from gateway_core.chat.attempts import retryable
from gateway_core.chat.retry_budget import RetryBudget
from gateway_core.chat.route_health import BreakerState, RouteHealth
from gateway_core.chat.route_order import route_order, weighted_order
from gateway_core.config import ConfigError, Route, RoutingSettings, parse_settings
from gateway_core.errors import Reason
from gateway_core.providers.anthropic import error_map as anthropic_errors
from gateway_core.providers.base import ProviderError
from gateway_core.providers.gemini import error_map as gemini_errors
from gateway_core.providers.openai import error_map as openai_errors


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


A = Route("p", "unit-a")
B = Route("p", "unit-b")
C = Route("p", "unit-c")


def _health(**settings: float) -> tuple[RouteHealth, Clock]:
    clock = Clock()
    values = {"breaker_failure_threshold": 3, "breaker_cooldown_seconds": 10.0, "quota_cooldown_seconds": 300.0}
    return RouteHealth(RoutingSettings(**{**values, **settings}), clock), clock  # type: ignore[arg-type]


def _cooldowns(route: Route) -> float:
    return REGISTRY.get_sample_value("tollgate_route_cooldowns_total", {"provider": route.provider, "route": route.model}) or 0.0


def test_consecutive_failures_open_the_circuit_for_the_cooldown_then_one_probe_decides() -> None:
    health, clock = _health()
    opened_before = _cooldowns(A)
    for _ in range(2):
        health.failed(A, health.acquire(A), retry_after=None, quota_exhausted=False)
    assert health.state(A) == BreakerState.CLOSED and health.available(A)
    health.failed(A, health.acquire(A), retry_after=None, quota_exhausted=False)
    assert health.state(A) == BreakerState.OPEN and not health.available(A)
    assert _cooldowns(A) == opened_before + 1
    clock.now += 9.9
    assert not health.available(A)
    clock.now += 0.2
    assert health.state(A) == BreakerState.HALF_OPEN and health.available(A)
    assert health.acquire(A) is True, "the first caller after the cooldown is the probe"
    assert not health.available(A) and health.acquire(A) is False, "only one probe at a time"
    health.failed(A, True, retry_after=None, quota_exhausted=False)
    assert health.state(A) == BreakerState.OPEN, "a failed probe opens the circuit again"
    clock.now += 10.1
    probe = health.acquire(A)
    health.succeeded(A, probe)
    assert health.state(A) == BreakerState.CLOSED and health.available(A)


def test_a_probe_whose_client_left_frees_the_slot() -> None:
    health, clock = _health(breaker_failure_threshold=1)
    health.failed(B, False, retry_after=None, quota_exhausted=False)
    clock.now += 11
    assert health.acquire(B) is True
    health.release(B, True)
    assert health.available(B) and health.acquire(B) is True


def test_a_success_resets_the_consecutive_count() -> None:
    health, _ = _health()
    for _ in range(10):
        health.failed(C, False, retry_after=None, quota_exhausted=False)
        health.failed(C, False, retry_after=None, quota_exhausted=False)
        health.succeeded(C, False)
    assert health.state(C) == BreakerState.CLOSED


def test_retry_after_keeps_the_route_waiting_without_opening_it() -> None:
    health, clock = _health()
    health.failed(A, False, retry_after=2.5, quota_exhausted=False)
    assert health.state(A) == BreakerState.CLOSED and not health.available(A)
    assert health.wait_seconds(A) == pytest.approx(2.5)
    clock.now += 2.5
    assert health.available(A) and health.wait_seconds(A) == 0


def test_an_exhausted_quota_rests_the_route_for_the_quota_cooldown() -> None:
    health, clock = _health()
    health.failed(A, False, retry_after=None, quota_exhausted=True)
    assert health.state(A) == BreakerState.OPEN and health.wait_seconds(A) == pytest.approx(300)
    clock.now += 299
    assert not health.available(A)
    clock.now += 2
    assert health.available(A)


def test_the_retry_budget_allows_burst_plus_ratio_of_requests() -> None:
    budget = RetryBudget(ratio=0.25, burst=2)
    allowed = 0
    for _ in range(40):
        budget.on_request()
        while budget.try_retry():
            allowed += 1
    assert allowed == 2 + 40 // 4 - 1  # the burst, then one retry per four requests (the bucket starts full)
    assert RetryBudget(ratio=0.2, burst=0).try_retry() is False


def test_priority_defaults_to_position_and_weights_split_equal_priorities() -> None:
    rng = random.Random(7)
    routes = [Route("p", "heavy", 0, 3), Route("p", "light", 0, 1), Route("p", "backup", 1, 100)]
    firsts = Counter(weighted_order(routes, rng)[0].model for _ in range(4000))
    assert set(firsts) == {"heavy", "light"}, "a lower priority is never first while a higher one exists"
    assert 2800 <= firsts["heavy"] <= 3200  # 3/4 of 4000
    assert all(weighted_order(routes, rng)[-1].model == "backup" for _ in range(100))


def test_open_routes_go_last_and_the_longest_open_first() -> None:
    health, clock = _health(breaker_failure_threshold=1)
    routes = [Route("p", "o1", 0), Route("p", "o2", 1), Route("p", "o3", 2)]
    health.failed(routes[1], False, retry_after=None, quota_exhausted=False)
    clock.now += 1
    health.failed(routes[0], False, retry_after=None, quota_exhausted=False)
    assert [r.model for r in route_order(routes, health, random.Random(1))] == ["o3", "o2", "o1"]
    health.failed(routes[2], False, retry_after=None, quota_exhausted=False)
    assert [r.model for r in route_order(routes, health, random.Random(1))] == ["o2", "o1", "o3"]


@pytest.mark.parametrize(("error", "expected"), [
    (ProviderError(Reason.UPSTREAM_UNAVAILABLE, "x", upstream_status=503), True),
    (ProviderError(Reason.UPSTREAM_UNAVAILABLE, "x", upstream_status=529), True),
    (ProviderError(Reason.UPSTREAM_RATE_LIMITED, "x", upstream_status=429), True),
    (ProviderError(Reason.UPSTREAM_TIMEOUT, "x"), True),
    (ProviderError(Reason.UPSTREAM_UNAVAILABLE, "upstream unreachable"), True),
    (ProviderError(Reason.UPSTREAM_ERROR, "broke off"), True),
    (ProviderError(Reason.INVALID_REQUEST, "x", upstream_status=400), False),
    (ProviderError(Reason.INVALID_REQUEST, "x", upstream_status=422), False),
    (ProviderError(Reason.UPSTREAM_ERROR, "auth", upstream_status=401), False),
    (ProviderError(Reason.UPSTREAM_ERROR, "auth", upstream_status=403), False),
    (ProviderError(Reason.UPSTREAM_ERROR, "nf", upstream_status=404), False),
    (ProviderError(Reason.REQUEST_TOO_LARGE, "big", upstream_status=413), False),
    (ProviderError(Reason.UPSTREAM_RATE_LIMITED, "q", upstream_status=429, quota_exhausted=True), True),
])
def test_what_is_retried(error: ProviderError, expected: bool) -> None:
    assert retryable(error) is expected


def test_openai_insufficient_quota_is_the_operators_not_a_rate_limit() -> None:
    body = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                      "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
    quota = openai_errors.map_error(429, json.dumps(body).encode())
    assert quota.quota_exhausted and quota.reason == Reason.UPSTREAM_RATE_LIMITED
    limit = {"error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    plain = openai_errors.map_error(429, json.dumps(limit).encode(), "3")
    assert not plain.quota_exhausted and plain.retry_after_seconds == 3


def test_anthropic_low_credit_400_is_the_operators_quota_not_the_callers_bad_request() -> None:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is too low to "
            "access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."},
            "request_id": "req_011CbrFTcXhtiMzr3s6EocF7"}
    error = anthropic_errors.map_error(400, json.dumps(body).encode())
    assert error.quota_exhausted and error.reason == Reason.UPSTREAM_RATE_LIMITED
    assert "credit" not in error.message
    other = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: field required"}}
    assert anthropic_errors.map_error(400, json.dumps(other).encode()).reason == Reason.INVALID_REQUEST


def _gemini_429(*quota_ids: str) -> bytes:
    return json.dumps({"error": {"code": 429, "message": "You exceeded your current quota, please check your plan "
                                 "and billing details.", "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": q}
            for q in quota_ids]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}}).encode()


def test_gemini_daily_quota_is_the_operators_and_a_per_minute_limit_is_not() -> None:
    daily = gemini_errors.map_error(429, _gemini_429("GenerateRequestsPerDayPerProjectPerModel-FreeTier"))
    assert daily.quota_exhausted and daily.reason == Reason.UPSTREAM_RATE_LIMITED
    minute = gemini_errors.map_error(429, _gemini_429("GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                                                      "GenerateRequestsPerDayPerProjectPerModel-FreeTier"))
    assert not minute.quota_exhausted and minute.retry_after_seconds == 7


def _raw(**extra: object) -> dict[str, object]:
    return {"providers": [{"name": "p", "type": "mock"}],
            "models": [{"name": "m", "input_price": 1, "output_price": 1,
                        "routes": [{"provider": "p", "model": "a"}, {"provider": "p", "model": "b", "weight": 4},
                                   {"provider": "p", "model": "c", "priority": 0}]}], **extra}


def test_route_priority_defaults_to_position_and_weight_to_one() -> None:
    routes = parse_settings(_raw(), {}).models["m"].routes
    assert [(r.model, r.priority, r.weight) for r in routes] == [("a", 0, 1), ("b", 1, 4), ("c", 0, 1)]


def test_routing_settings_and_provider_timeouts() -> None:
    raw = _raw(routing={"max_attempts": 5, "retry_budget_ratio": 0.1})
    raw["providers"] = [{"name": "p", "type": "mock", "read_timeout_seconds": 30, "total_timeout_seconds": 90}]
    settings = parse_settings(raw, {})
    assert settings.routing.max_attempts == 5 and settings.routing.retry_budget_ratio == 0.1
    provider = settings.providers["p"]
    assert (provider.first_token_timeout_seconds, provider.idle_timeout_seconds, provider.total_timeout_seconds) == (
        30, 30, 90), "first-token and idle limits default to the read timeout"


def test_bad_routing_keys_are_each_reported() -> None:
    raw = _raw(routing={"max_attempts": 0, "retry_budget_ratio": 2, "retries": 1})
    raw["models"][0]["routes"][0]["weight"] = 0  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, {})
    problems = "\n".join(caught.value.problems)
    for key in ("routing.max_attempts", "routing.retry_budget_ratio", "routing.retries", "routes[0].weight"):
        assert key in problems, problems
