"""Settings: TOML (or embedded defaults) to frozen dataclasses, validated once at start.

Every problem is collected and reported together, one line per problem, each
naming the key at fault (`models[1].routes[0].provider: unknown provider "x"`).
`${VAR}` and `${VAR:-default}` in any string expand from the environment; an
unset variable without a default is an error naming the key that used it.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

PROVIDER_TYPES = frozenset({"openai", "anthropic", "gemini", "mock"})
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
}
VENDORS = frozenset({"", "openai", "deepseek", "mistral", "groq", "vllm", "ollama"})
MICROS_PER_USD = 1_000_000
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class ConfigError(Exception):
    """The configuration is unusable; .problems has one line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Route:
    """One way to serve a model: a configured provider and its model id."""

    provider: str
    model: str


@dataclass(frozen=True)
class ModelSettings:
    """A model clients can name, its routes in order, and its prices.

    Prices are integer micro-USD per 1M tokens (0.15 USD/1M -> 150_000).
    """

    name: str
    routes: tuple[Route, ...]
    input_price_micros: int
    output_price_micros: int
    cached_input_price_micros: int | None = None
    max_output_tokens: int = 4096


@dataclass(frozen=True)
class ProviderSettings:
    """An upstream the operator pays for, and how to reach it."""

    name: str
    type: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 600.0
    # OpenAI-compatible dialect quirks; "" means detected from base_url.
    vendor: str = ""
    # "max_completion_tokens" or "max_tokens"; "" means what the vendor accepts.
    max_tokens_field: str = ""
    # Request parameters this upstream rejects, and what to do when a client sends one.
    unsupported_params: tuple[str, ...] = ()
    unsupported_param_policy: str = "reject"
    # Anthropic only: the anthropic-version header.
    anthropic_version: str = "2023-06-01"


_PROVIDER_KEYS = frozenset({
    "name", "type", "base_url", "api_key", "connect_timeout_seconds", "read_timeout_seconds", "vendor",
    "max_tokens_field", "unsupported_params", "unsupported_param_policy", "anthropic_version",
})


@dataclass(frozen=True)
class MeteringSettings:
    """How the gateway keeps metering honest when clients leave and processes die."""

    # After a client leaves mid-request, keep reading the upstream this long for its usage.
    drain_seconds: float = 5.0
    # At most this many such drains at once; beyond it the upstream is closed and usage estimated.
    max_concurrent_drains: int = 64
    # How often a core renews its lease and looks for holds left by dead cores.
    reconcile_interval_seconds: float = 5.0
    # A core whose lease is this old is dead; its open holds are released.
    orphan_after_seconds: float = 30.0


@dataclass(frozen=True)
class Settings:
    """Everything the core and the facade need, validated."""

    http_address: str = "127.0.0.1:8080"
    grpc_address: str = "127.0.0.1:50051"
    database_url: str = "sqlite:///tollgate.db"
    admin_token: str = field(default="", repr=False)
    admin_token_generated: bool = False
    key_pepper: str = field(default="", repr=False)
    key_cache_seconds: float = 2.0
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    models: Mapping[str, ModelSettings] = field(default_factory=dict)
    metering: MeteringSettings = field(default_factory=MeteringSettings)
    create_demo_account: bool = False


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f"{key}: {message}")


def _expand(value: Any, key: str, env: Mapping[str, str], problems: _Problems) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.add(key, f"environment variable {name} is not set")
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{key}.{k}" if key else k, env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{key}[{i}]", env, problems) for i, v in enumerate(value)]
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


def _check_address(table: Mapping[str, Any], name: str, default: str, problems: _Problems) -> str:
    value = table.get(name, default)
    if not isinstance(value, str) or not (m := _ADDRESS.match(value)) or int(m.group(2)) > 65535:
        problems.add(f"server.{name}", f"{value!r} is not HOST:PORT")
        return default
    return value


def _table(raw: Mapping[str, Any], name: str, problems: _Problems) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, "must be a table")
        return {}
    return value


def _number(table: Mapping[str, Any], key: str, name: str, default: float, problems: _Problems) -> float:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        problems.add(f"{key}.{name}", "must be a positive number")
        return default
    return float(value)


def _providers(raw: Any, problems: _Problems) -> dict[str, ProviderSettings]:
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
        for extra in sorted(set(item) - _PROVIDER_KEYS):
            problems.add(f"{key}.{extra}", "unknown setting")
        providers[name] = ProviderSettings(
            name=name,
            type=type_,
            base_url=str(base_url).rstrip("/"),
            api_key=_choice(item, key, "api_key", None, "", problems),
            connect_timeout_seconds=_number(item, key, "connect_timeout_seconds", 10.0, problems),
            read_timeout_seconds=_number(item, key, "read_timeout_seconds", 600.0, problems),
            vendor=_choice(item, key, "vendor", VENDORS, "", problems),
            max_tokens_field=_choice(item, key, "max_tokens_field", {"", "max_tokens", "max_completion_tokens"}, "", problems),
            unsupported_params=_names(item, key, "unsupported_params", problems),
            unsupported_param_policy=_choice(item, key, "unsupported_param_policy", {"reject", "drop"}, "reject", problems),
            anthropic_version=_choice(item, key, "anthropic_version", None, "2023-06-01", problems),
        )
    return providers


def _choice(
    item: Mapping[str, Any], key: str, name: str, allowed: frozenset[str] | set[str] | None, default: str,
    problems: _Problems,
) -> str:
    value = item.get(name, default)
    if not isinstance(value, str):
        problems.add(f"{key}.{name}", "must be a string")
        return default
    if allowed is not None and value not in allowed:
        problems.add(f"{key}.{name}", f"{value!r} is not one of {', '.join(repr(a) for a in sorted(allowed))}")
        return default
    return value


def _names(item: Mapping[str, Any], key: str, name: str, problems: _Problems) -> tuple[str, ...]:
    value = item.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.add(f"{key}.{name}", "must be a list of parameter names")
        return ()
    return tuple(value)


def _price(item: Mapping[str, Any], key: str, name: str, problems: _Problems, required: bool = True) -> int | None:
    if name not in item:
        if required:
            problems.add(f"{key}.{name}", "is required (USD per 1M tokens)")
        return None
    try:
        return price_to_micros(item[name])
    except ValueError as exc:
        problems.add(f"{key}.{name}", str(exc))
        return None


def _models(raw: Any, providers: Mapping[str, ProviderSettings], problems: _Problems) -> dict[str, ModelSettings]:
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
            if route["provider"] not in providers:
                problems.add(f"{rkey}.provider", f"unknown provider {route['provider']!r}")
            upstream = route.get("model", name)
            if not isinstance(upstream, str) or not upstream:
                problems.add(f"{rkey}.model", "must be a non-empty string")
                continue
            routes.append(Route(provider=route["provider"], model=upstream))
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


def _metering(table: Mapping[str, Any], problems: _Problems) -> MeteringSettings:
    defaults = MeteringSettings()
    for extra in sorted(set(table) - {f for f in MeteringSettings.__dataclass_fields__}):
        problems.add(f"metering.{extra}", "unknown setting")
    drains = table.get("max_concurrent_drains", defaults.max_concurrent_drains)
    if isinstance(drains, bool) or not isinstance(drains, int) or drains < 0:
        problems.add("metering.max_concurrent_drains", "must be a whole number >= 0")
        drains = defaults.max_concurrent_drains
    interval = _number(table, "metering", "reconcile_interval_seconds", defaults.reconcile_interval_seconds, problems)
    orphan_after = _number(table, "metering", "orphan_after_seconds", defaults.orphan_after_seconds, problems)
    if orphan_after < 2 * interval:
        problems.add("metering.orphan_after_seconds", "must be at least twice reconcile_interval_seconds")
    return MeteringSettings(
        drain_seconds=_number(table, "metering", "drain_seconds", defaults.drain_seconds, problems),
        max_concurrent_drains=drains,
        reconcile_interval_seconds=interval,
        orphan_after_seconds=orphan_after,
    )


def parse_settings(raw: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Validates a parsed TOML document; raises ConfigError listing every problem."""
    problems = _Problems()
    raw = _expand(dict(raw), "", env, problems)
    for section in sorted(set(raw) - {"server", "database", "admin", "keys", "metering", "providers", "models", "demo"}):
        problems.add(section, "unknown section")
    server = _table(raw, "server", problems)
    database = _table(raw, "database", problems)
    admin = _table(raw, "admin", problems)
    keys = _table(raw, "keys", problems)
    demo = _table(raw, "demo", problems)
    http_address = _check_address(server, "http_address", "127.0.0.1:8080", problems)
    grpc_address = _check_address(server, "grpc_address", "127.0.0.1:50051", problems)
    url = database.get("url", "sqlite:///tollgate.db")
    if not isinstance(url, str) or not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
        problems.add("database.url", f"{url!r} is not a sqlite:/// or postgresql:// URL")
    token = admin.get("token", "")
    if not isinstance(token, str):
        problems.add("admin.token", "must be a string")
        token = ""
    elif token and len(token) < 16:
        problems.add("admin.token", "must be at least 16 characters")
    pepper = keys.get("pepper", "")
    if not isinstance(pepper, str):
        problems.add("keys.pepper", "must be a string")
        pepper = ""
    cache_seconds = _number(keys, "keys", "cache_seconds", 2.0, problems)
    metering = _metering(_table(raw, "metering", problems), problems)
    providers = _providers(raw.get("providers", []), problems)
    models = _models(raw.get("models", []), providers, problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    return Settings(
        http_address=http_address,
        grpc_address=grpc_address,
        database_url=str(url),
        admin_token=token,
        key_pepper=pepper,
        key_cache_seconds=cache_seconds,
        providers=providers,
        models=models,
        metering=metering,
        create_demo_account=bool(demo.get("create_account", False)),
    )


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from a TOML file, or the embedded defaults when path is None."""
    env = os.environ if env is None else env
    if path is None:
        return embedded_settings(env)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML ({exc})"]) from None
    return parse_settings(raw, env)


def embedded_defaults(env: Mapping[str, str]) -> dict[str, Any]:
    """The configuration `tollgate serve` runs on without a file.

    The offline mock provider always; real providers when their usual
    environment variable holds a key. TOLLGATE_HTTP_ADDRESS,
    TOLLGATE_GRPC_ADDRESS and TOLLGATE_DATABASE_URL override the addresses
    and the database.
    """
    providers: list[dict[str, Any]] = [{"name": "mock", "type": "mock"}]
    models: list[dict[str, Any]] = [
        {"name": "mock-chat", "routes": [{"provider": "mock", "model": "chat"}], "input_price": 0.10, "output_price": 0.40},
        {"name": "mock-echo", "routes": [{"provider": "mock", "model": "echo"}], "input_price": 0.05, "output_price": 0.20},
    ]
    if env.get("OPENAI_API_KEY"):
        providers.append({
            "name": "openai",
            "type": "openai",
            "base_url": env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
            "api_key": "${OPENAI_API_KEY}",
        })
        models += [
            {"name": "gpt-4o-mini", "routes": [{"provider": "openai", "model": "gpt-4o-mini"}], "input_price": 0.15, "output_price": 0.60, "cached_input_price": 0.075},
            {"name": "gpt-4o", "routes": [{"provider": "openai", "model": "gpt-4o"}], "input_price": 2.50, "output_price": 10.00, "cached_input_price": 1.25},
            {"name": "gpt-4.1-mini", "routes": [{"provider": "openai", "model": "gpt-4.1-mini"}], "input_price": 0.40, "output_price": 1.60, "cached_input_price": 0.10},
        ]
    return {
        "server": {
            "http_address": env.get("TOLLGATE_HTTP_ADDRESS") or "127.0.0.1:8080",
            "grpc_address": env.get("TOLLGATE_GRPC_ADDRESS") or "127.0.0.1:50051",
        },
        "database": {"url": env.get("TOLLGATE_DATABASE_URL") or "sqlite:///tollgate.db"},
        "admin": {"token": env.get("TOLLGATE_ADMIN_TOKEN", "")},
        "keys": {"pepper": env.get("TOLLGATE_KEY_PEPPER", "")},
        "providers": providers,
        "models": models,
        "demo": {"create_account": True},
    }


def embedded_settings(env: Mapping[str, str]) -> Settings:
    """Embedded defaults; a missing admin token is generated for this run only."""
    settings = parse_settings(embedded_defaults(env), env)
    if settings.admin_token:
        return settings
    return replace(settings, admin_token=secrets.token_urlsafe(24), admin_token_generated=True)
