"""The [limits] section parser: where rate-limit counters live and what to do when Redis is down."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway_core.config_model import LimitSettings
from gateway_core.config_sections import Problems, number

_REDIS_URL = re.compile(r"^(redis|rediss|unix)://")
_POLICIES = ("open", "closed")


def limits_section(table: Mapping[str, Any], problems: Problems) -> LimitSettings:
    """Validated [limits]; unknown keys are reported by the caller's table()."""
    defaults = LimitSettings()
    url = table.get("redis_url", defaults.redis_url)
    if not isinstance(url, str) or (url and not _REDIS_URL.match(url)):
        problems.add("limits.redis_url", "must be empty (in-process counters) or a redis://, rediss:// or unix:// URL")
        url = defaults.redis_url
    policy = table.get("redis_failure_policy", defaults.redis_failure_policy)
    if policy not in _POLICIES:
        problems.add("limits.redis_failure_policy", 'must be "open" or "closed"')
        policy = defaults.redis_failure_policy
    return LimitSettings(
        redis_url=url,
        redis_failure_policy=str(policy),
        redis_connect_timeout_seconds=number(
            table, "limits", "redis_connect_timeout_seconds", defaults.redis_connect_timeout_seconds, problems
        ),
        redis_command_timeout_seconds=number(
            table, "limits", "redis_command_timeout_seconds", defaults.redis_command_timeout_seconds, problems
        ),
        concurrency_lease_seconds=number(
            table, "limits", "concurrency_lease_seconds", defaults.concurrency_lease_seconds, problems
        ),
    )
