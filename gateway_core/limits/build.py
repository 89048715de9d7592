"""Builds the process's LimitEnforcer from [limits] settings."""

from __future__ import annotations

from gateway_core.config_model import LimitSettings
from gateway_core.limits.accounts import AccountLimitsCache, AccountLookup
from gateway_core.limits.base import Limiter
from gateway_core.limits.enforcer import LimitEnforcer
from gateway_core.limits.memory import MemoryLimiter
from gateway_core.limits.redis_limiter import RedisLimiter


def build_limiter(settings: LimitSettings) -> Limiter:
    """In-process counters, or Redis ones when redis_url is set. Connects lazily, on first use."""
    if not settings.redis_url:
        return MemoryLimiter()
    return RedisLimiter(
        settings.redis_url,
        connect_timeout_seconds=settings.redis_connect_timeout_seconds,
        command_timeout_seconds=settings.redis_command_timeout_seconds,
        lease_seconds=settings.concurrency_lease_seconds,
    )


def build_enforcer(settings: LimitSettings, accounts: AccountLookup, cache_seconds: float) -> LimitEnforcer:
    """The enforcer, with account limits cached for cache_seconds (the key cache's bound)."""
    return LimitEnforcer(
        build_limiter(settings), AccountLimitsCache(accounts, cache_seconds), settings.redis_failure_policy
    )
