"""The [logging], [metrics] and [tracing] settings: frozen, validated by config_observability."""

from __future__ import annotations

from dataclasses import dataclass, field

LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})
LOG_FORMATS = frozenset({"json", "text"})


@dataclass(frozen=True)
class LoggingSettings:
    """How the process logs; TOLLGATE_LOG_LEVEL / TOLLGATE_LOG_FORMAT override both keys."""

    level: str = "info"
    # json: one object per line (the access log's fields as keys); text: for humans at a terminal.
    format: str = "json"


@dataclass(frozen=True)
class MetricsSettings:
    """Where Prometheus scrapes: the facade's /metrics always; a core alone needs `address`."""

    # HOST:PORT of a plain HTTP /metrics listener for `tollgate core`; "" means none.
    address: str = ""
    # When set, /metrics asks for `Authorization: Bearer <token>` (user API keys never work here).
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry export; off unless enabled."""

    enabled: bool = False
    # OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces ("" = the exporter's default).
    otlp_endpoint: str = ""
    service_name: str = "tollgate"


@dataclass(frozen=True)
class ObservabilitySettings:
    """The three sections together, as Settings carries them."""

    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)


LOGGING_KEYS = frozenset(LoggingSettings.__dataclass_fields__)
METRICS_KEYS = frozenset(MetricsSettings.__dataclass_fields__)
TRACING_KEYS = frozenset(TracingSettings.__dataclass_fields__)
