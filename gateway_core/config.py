"""Settings: TOML (or embedded defaults) to frozen dataclasses, validated once at start.

Every problem is collected and reported together, one line per problem, each
naming the key at fault (`models[1].routes[0].provider: unknown provider "x"`).
`${VAR}` and `${VAR:-default}` in any string expand from the environment; an
unset variable without a default is an error naming the key that used it.
The dataclasses live in config_model, the section parsers in config_sections.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway_core.config_defaults import embedded_defaults
from gateway_core.config_http import http_settings
from gateway_core.config_limits import limits_section
from gateway_core.config_model import (
    DEFAULT_BASE_URLS,
    MICROS_PER_USD,
    PROVIDER_TYPES,
    SECTION_KEYS,
    LimitSettings,
    MeteringSettings,
    ModelSettings,
    ProviderSettings,
    Route,
    RoutingSettings,
    Settings,
)
from gateway_core.config_observability import observability
from gateway_core.config_sections import database as database_settings
from gateway_core.config_sections import (
    Problems,
    check_address,
    expand,
    metering,
    models,
    number,
    price_to_micros,
    providers,
    routing,
    table,
)

__all__ = [
    "DEFAULT_BASE_URLS", "MICROS_PER_USD", "PROVIDER_TYPES", "ConfigError", "LimitSettings", "MeteringSettings",
    "ModelSettings", "ProviderSettings", "Route", "RoutingSettings", "Settings", "embedded_defaults",
    "embedded_settings", "load_settings",
    "parse_settings", "price_to_micros",
]


class ConfigError(Exception):
    """The configuration is unusable; .problems has one line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_settings(raw: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Validates a parsed TOML document; raises ConfigError listing every problem."""
    problems = Problems()
    raw = expand(dict(raw), "", env, problems)
    for section in sorted(set(raw) - set(SECTION_KEYS)):
        problems.add(section, "unknown section")
    server = table(raw, "server", problems, SECTION_KEYS["server"])
    database = table(raw, "database", problems, SECTION_KEYS["database"])
    admin = table(raw, "admin", problems, SECTION_KEYS["admin"])
    keys = table(raw, "keys", problems, SECTION_KEYS["keys"])
    demo = table(raw, "demo", problems, SECTION_KEYS["demo"])
    http_address = check_address(server, "http_address", "127.0.0.1:8080", problems)
    grpc_address = check_address(server, "grpc_address", "127.0.0.1:50051", problems)
    shutdown_grace_seconds = number(server, "server", "shutdown_grace_seconds", 30.0, problems)
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
    cache_seconds = number(keys, "keys", "cache_seconds", 2.0, problems)
    database_options = database_settings(database, problems)
    metering_settings = metering(table(raw, "metering", problems), problems)
    routing_settings = routing(table(raw, "routing", problems, SECTION_KEYS["routing"]), problems)
    limit_settings = limits_section(table(raw, "limits", problems, SECTION_KEYS["limits"]), problems)
    provider_settings = providers(raw.get("providers", []), problems)
    model_settings = models(raw.get("models", []), provider_settings, problems)
    observability_settings = observability(raw, problems)
    http = http_settings(table(raw, "http", problems, SECTION_KEYS["http"]), problems.add)
    if problems.lines:
        raise ConfigError(problems.lines)
    return Settings(
        http_address=http_address,
        grpc_address=grpc_address,
        database_url=str(url),
        database=database_options,
        admin_token=token,
        key_pepper=pepper,
        key_cache_seconds=cache_seconds,
        providers=provider_settings,
        models=model_settings,
        metering=metering_settings,
        routing=routing_settings,
        limits=limit_settings,
        create_demo_account=bool(demo.get("create_account", False)),
        shutdown_grace_seconds=shutdown_grace_seconds,
        observability=observability_settings,
        http=http,
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


def embedded_settings(env: Mapping[str, str]) -> Settings:
    """Embedded defaults; a missing admin token is generated for this run only."""
    settings = parse_settings(embedded_defaults(env), env)
    if settings.admin_token:
        return settings
    return replace(settings, admin_token=secrets.token_urlsafe(24), admin_token_generated=True)
