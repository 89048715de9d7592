"""Parsers for [logging], [metrics] and [tracing]: raw TOML in, ObservabilitySettings out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway_core.config_model import ADDRESS_PATTERN
from gateway_core.config_sections import Problems, table
from gateway_core.observability.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    LOGGING_KEYS,
    METRICS_KEYS,
    TRACING_KEYS,
    LoggingSettings,
    MetricsSettings,
    ObservabilitySettings,
    TracingSettings,
)


def observability(raw: Mapping[str, Any], problems: Problems) -> ObservabilitySettings:
    """All three sections; each problem names its key."""
    return ObservabilitySettings(
        logging=_logging(table(raw, "logging", problems, LOGGING_KEYS), problems),
        metrics=_metrics(table(raw, "metrics", problems, METRICS_KEYS), problems),
        tracing=_tracing(table(raw, "tracing", problems, TRACING_KEYS), problems),
    )


def _logging(section: Mapping[str, Any], problems: Problems) -> LoggingSettings:
    defaults = LoggingSettings()
    level = _one_of(section, "logging.level", "level", LOG_LEVELS, defaults.level, problems)
    format_ = _one_of(section, "logging.format", "format", LOG_FORMATS, defaults.format, problems)
    return LoggingSettings(level=level, format=format_)


def _metrics(section: Mapping[str, Any], problems: Problems) -> MetricsSettings:
    address = section.get("address", "")
    if not isinstance(address, str) or (
        address and (not (m := ADDRESS_PATTERN.match(address)) or int(m.group(2)) > 65535)
    ):
        problems.add("metrics.address", f"{address!r} is not HOST:PORT")
        address = ""
    token = section.get("token", "")
    if not isinstance(token, str) or (token and len(token) < 16):
        problems.add("metrics.token", "must be a string of at least 16 characters")
        token = ""
    return MetricsSettings(address=address, token=token)


def _tracing(section: Mapping[str, Any], problems: Problems) -> TracingSettings:
    defaults = TracingSettings()
    enabled = section.get("enabled", defaults.enabled)
    if not isinstance(enabled, bool):
        problems.add("tracing.enabled", "must be true or false")
        enabled = False
    endpoint = section.get("otlp_endpoint", defaults.otlp_endpoint)
    if not isinstance(endpoint, str) or (endpoint and not re.match(r"^https?://[^\s/]+", endpoint)):
        problems.add("tracing.otlp_endpoint", f"{endpoint!r} is not an http(s) URL")
        endpoint = ""
    name = section.get("service_name", defaults.service_name)
    if not isinstance(name, str) or not name:
        problems.add("tracing.service_name", "must be a non-empty string")
        name = defaults.service_name
    return TracingSettings(enabled=enabled, otlp_endpoint=endpoint, service_name=name)


def _one_of(
    section: Mapping[str, Any], key: str, name: str, allowed: frozenset[str], default: str, problems: Problems
) -> str:
    value = section.get(name, default)
    if not isinstance(value, str) or value.lower() not in allowed:
        problems.add(key, f"{value!r} is not one of {', '.join(sorted(allowed))}")
        return default
    return value.lower()
