"""Parsers for each configuration section: raw TOML values in, validated values out.

Each parser records problems (one line each, naming the key) instead of
raising, so that start-up reports every mistake at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway_core.config_model import (
    ADDRESS_PATTERN,
    DEFAULT_BASE_URLS,
    MICROS_PER_USD,
    MODEL_KEYS,
    PROVIDER_KEYS,
    ROUTE_KEYS,
    PROVIDER_TYPES,
    VAR_PATTERN,
    VENDORS,
    DatabaseSettings,
    MeteringSettings,
    ModelSettings,
    ProviderSettings,
    Route,
    RoutingSettings,
)

class Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f"{key}: {message}")


def expand(value: Any, key: str, env: Mapping[str, str], problems: Problems) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.add(key, f"environment variable {name} is not set")
            return ""

        return VAR_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand(v, f"{key}.{k}" if key else k, env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, f"{key}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


def price_to_micros(value: object) -> int:
    """USD per 1M tokens (TOML number or decimal string) to integer micro-USD per 1M.

    Decimal, never float arithmetic: 0.15 must become exactly 150_000.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number of USD per 1M tokens")
    try:
        amount = Decimal(str(value)) * MICROS_PER_USD
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not amount.is_finite():
        raise ValueError("must be finite")
    if amount < 0:
        raise ValueError("must not be negative")
    if amount != amount.to_integral_value():
        raise ValueError("has more precision than one micro-USD per 1M tokens")
    return int(amount)


def check_address(table: Mapping[str, Any], name: str, default: str, problems: Problems) -> str:
    value = table.get(name, default)
    if not isinstance(value, str) or not (m := ADDRESS_PATTERN.match(value)) or int(m.group(2)) > 65535:
        problems.add(f"server.{name}", f"{value!r} is not HOST:PORT")
        return default
    return value


def table(raw: Mapping[str, Any], name: str, problems: Problems, known: frozenset[str] | None = None) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, "must be a table")
        return {}
    for extra in sorted(set(value) - known) if known is not None else ():
        problems.add(f"{name}.{extra}", "unknown setting")
    return value


def number(table: Mapping[str, Any], key: str, name: str, default: float, problems: Problems) -> float:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        problems.add(f"{key}.{name}", "must be a positive number")
        return default
    return float(value)


def providers(raw: Any, problems: Problems) -> dict[str, ProviderSettings]:
    providers: dict[str, ProviderSettings] = {}
    if not isinstance(raw, list):
        problems.add("providers", "must be an array of tables ([[providers]])")
        return providers
    for i, item in enumerate(raw):
        key = f"providers[{i}]"
        if not isinstance(item, dict):
            problems.add(key, "must be a table")
            continue
        name, type_ = item.get("name"), item.get("type")
        if not isinstance(name, str) or not name:
            problems.add(f"{key}.name", "is required")
            continue
        if name in providers:
            problems.add(f"{key}.name", f"duplicate provider {name!r}")
        if type_ not in PROVIDER_TYPES:
            problems.add(f"{key}.type", f"{type_!r} is not one of {', '.join(sorted(PROVIDER_TYPES))}")
            continue
        base_url = item.get("base_url", DEFAULT_BASE_URLS.get(type_, ""))
        if type_ != "mock" and (not isinstance(base_url, str) or not re.match(r"^https?://[^\s/]+", base_url)):
            problems.add(f"{key}.base_url", f"{base_url!r} is not an http(s) URL")
        for extra in sorted(set(item) - PROVIDER_KEYS):
            problems.add(f"{key}.{extra}", "unknown setting")
        providers[name] = ProviderSettings(
            name=name,
            type=type_,
            base_url=str(base_url).rstrip("/"),
            api_key=_choice(item, key, "api_key", None, "", problems),
            connect_timeout_seconds=number(item, key, "connect_timeout_seconds", 10.0, problems),
            read_timeout_seconds=(read := number(item, key, "read_timeout_seconds", 600.0, problems)),
            first_token_timeout_seconds=number(item, key, "first_token_timeout_seconds", read, problems),
            idle_timeout_seconds=number(item, key, "idle_timeout_seconds", read, problems),
            total_timeout_seconds=number(item, key, "total_timeout_seconds", 1800.0, problems),
            vendor=_choice(item, key, "vendor", VENDORS, "", problems),
            max_tokens_field=_choice(item, key, "max_tokens_field", {"", "max_tokens", "max_completion_tokens"}, "", problems),
            unsupported_params=_names(item, key, "unsupported_params", problems),
            unsupported_param_policy=_choice(item, key, "unsupported_param_policy", {"reject", "drop"}, "reject", problems),
            anthropic_version=_choice(item, key, "anthropic_version", None, "2023-06-01", problems),
        )
    return providers


def _choice(
    item: Mapping[str, Any], key: str, name: str, allowed: frozenset[str] | set[str] | None, default: str,
    problems: Problems,
) -> str:
    value = item.get(name, default)
    if not isinstance(value, str):
        problems.add(f"{key}.{name}", "must be a string")
        return default
    if allowed is not None and value not in allowed:
        problems.add(f"{key}.{name}", f"{value!r} is not one of {', '.join(repr(a) for a in sorted(allowed))}")
        return default
    return value


def _names(item: Mapping[str, Any], key: str, name: str, problems: Problems) -> tuple[str, ...]:
    value = item.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.add(f"{key}.{name}", "must be a list of parameter names")
        return ()
    return tuple(value)


def _whole(item: Mapping[str, Any], key: str, name: str, default: int, minimum: int, problems: Problems) -> int:
    value = item.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.add(f"{key}.{name}", f"must be a whole number >= {minimum}")
        return default
    return value


def _price(item: Mapping[str, Any], key: str, name: str, problems: Problems, required: bool = True) -> int | None:
    if name not in item:
        if required:
            problems.add(f"{key}.{name}", "is required (USD per 1M tokens)")
        return None
    try:
        return price_to_micros(item[name])
    except ValueError as exc:
        problems.add(f"{key}.{name}", str(exc))
        return None


def models(raw: Any, providers: Mapping[str, ProviderSettings], problems: Problems) -> dict[str, ModelSettings]:
    models: dict[str, ModelSettings] = {}
    if not isinstance(raw, list):
        problems.add("models", "must be an array of tables ([[models]])")
        return models
    for i, item in enumerate(raw):
        key = f"models[{i}]"
        if not isinstance(item, dict):
            problems.add(key, "must be a table")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name:
            problems.add(f"{key}.name", "is required")
            continue
        for extra in sorted(set(item) - MODEL_KEYS):
            problems.add(f"{key}.{extra}", "unknown setting")
        if name in models:
            problems.add(f"{key}.name", f"duplicate model {name!r}")
        routes: list[Route] = []
        raw_routes = item.get("routes")
        if not isinstance(raw_routes, list) or not raw_routes:
            problems.add(f"{key}.routes", "needs at least one route")
            raw_routes = []
        for j, route in enumerate(raw_routes):
            rkey = f"{key}.routes[{j}]"
            if not isinstance(route, dict) or not isinstance(route.get("provider"), str):
                problems.add(rkey, 'must be { provider = "...", model = "..." }')
                continue
            for extra in sorted(set(route) - ROUTE_KEYS):
                problems.add(f"{rkey}.{extra}", "unknown setting")
            if route["provider"] not in providers:
                problems.add(f"{rkey}.provider", f"unknown provider {route['provider']!r}")
            upstream = route.get("model", name)
            if not isinstance(upstream, str) or not upstream:
                problems.add(f"{rkey}.model", "must be a non-empty string")
                continue
            priority = _whole(route, rkey, "priority", j, 0, problems)
            weight = _whole(route, rkey, "weight", 1, 1, problems)
            routes.append(Route(provider=route["provider"], model=upstream, priority=priority, weight=weight))
        input_price = _price(item, key, "input_price", problems)
        output_price = _price(item, key, "output_price", problems)
        cached = _price(item, key, "cached_input_price", problems, required=False)
        max_output = item.get("max_output_tokens", 4096)
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output <= 0:
            problems.add(f"{key}.max_output_tokens", "must be a positive integer")
            max_output = 4096
        if input_price is None or output_price is None:
            continue
        models[name] = ModelSettings(
            name=name,
            routes=tuple(routes),
            input_price_micros=input_price,
            output_price_micros=output_price,
            cached_input_price_micros=cached,
            max_output_tokens=max_output,
        )
    return models


def metering(table: Mapping[str, Any], problems: Problems) -> MeteringSettings:
    defaults = MeteringSettings()
    for extra in sorted(set(table) - {f for f in MeteringSettings.__dataclass_fields__}):
        problems.add(f"metering.{extra}", "unknown setting")
    drains = table.get("max_concurrent_drains", defaults.max_concurrent_drains)
    if isinstance(drains, bool) or not isinstance(drains, int) or drains < 0:
        problems.add("metering.max_concurrent_drains", "must be a whole number >= 0")
        drains = defaults.max_concurrent_drains
    interval = number(table, "metering", "reconcile_interval_seconds", defaults.reconcile_interval_seconds, problems)
    orphan_after = number(table, "metering", "orphan_after_seconds", defaults.orphan_after_seconds, problems)
    if orphan_after < 2 * interval:
        problems.add("metering.orphan_after_seconds", "must be at least twice reconcile_interval_seconds")
    return MeteringSettings(
        drain_seconds=number(table, "metering", "drain_seconds", defaults.drain_seconds, problems),
        max_concurrent_drains=drains,
        reconcile_interval_seconds=interval,
        orphan_after_seconds=orphan_after,
    )


def routing(table: Mapping[str, Any], problems: Problems) -> RoutingSettings:
    """The [routing] section: attempts, retry budget and circuit breakers."""
    defaults = RoutingSettings()
    ratio = table.get("retry_budget_ratio", defaults.retry_budget_ratio)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        problems.add("routing.retry_budget_ratio", "must be a number from 0 to 1")
        ratio = defaults.retry_budget_ratio
    return RoutingSettings(
        max_attempts=_whole(table, "routing", "max_attempts", defaults.max_attempts, 1, problems),
        max_retry_wait_seconds=number(table, "routing", "max_retry_wait_seconds", defaults.max_retry_wait_seconds,
                                      problems),
        retry_budget_ratio=float(ratio),
        retry_budget_burst=_whole(table, "routing", "retry_budget_burst", defaults.retry_budget_burst, 0, problems),
        breaker_failure_threshold=_whole(table, "routing", "breaker_failure_threshold",
                                         defaults.breaker_failure_threshold, 1, problems),
        breaker_cooldown_seconds=number(table, "routing", "breaker_cooldown_seconds",
                                        defaults.breaker_cooldown_seconds, problems),
        quota_cooldown_seconds=number(table, "routing", "quota_cooldown_seconds", defaults.quota_cooldown_seconds,
                                      problems),
    )


def database(table: Mapping[str, Any], problems: Problems) -> DatabaseSettings:
    """The [database] keys besides url (checked by the caller)."""
    defaults = DatabaseSettings()

    def whole(name: str, default: int, least: int) -> int:
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            problems.add(f"database.{name}", f"must be a whole number >= {least}")
            return default
        return value

    migrate_on_start = table.get("migrate_on_start", defaults.migrate_on_start)
    if not isinstance(migrate_on_start, bool):
        problems.add("database.migrate_on_start", "must be true or false")
        migrate_on_start = defaults.migrate_on_start
    return DatabaseSettings(
        pool_size=whole("pool_size", defaults.pool_size, 1),
        max_overflow=whole("max_overflow", defaults.max_overflow, 0),
        pool_timeout_seconds=number(table, "database", "pool_timeout_seconds", defaults.pool_timeout_seconds, problems),
        migrate_on_start=migrate_on_start,
    )
