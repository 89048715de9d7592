"""The validated settings: frozen dataclasses shared by the core, the facade and the CLI."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway_core.observability.settings import LOGGING_KEYS, METRICS_KEYS, TRACING_KEYS, ObservabilitySettings
from gateway_core.config_http import HTTP_KEYS, HttpSettings

PROVIDER_TYPES = frozenset({"openai", "anthropic", "gemini", "mock"})
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
}
VENDORS = frozenset({"", "openai", "deepseek", "mistral", "groq", "vllm", "ollama"})
MICROS_PER_USD = 1_000_000
VAR_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ADDRESS_PATTERN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class Route:
    """One way to serve a model: a configured provider and its model id.

    Routes are tried lowest priority first; among equal priorities a route is
    picked first in proportion to its weight. Priority defaults to the route's
    position, so a plain list is tried in order.
    """

    provider: str
    model: str
    priority: int = 0
    weight: int = 1


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
    # The longest silence between two bytes of an answer (the upstream client's read timeout).
    read_timeout_seconds: float = 600.0
    # Routing's limits per attempt: until the first stream chunk, between two chunks,
    # and for the whole attempt (also capped by the caller's deadline).
    # The first two default to read_timeout_seconds, so older configurations keep their limits.
    first_token_timeout_seconds: float = 600.0
    idle_timeout_seconds: float = 600.0
    total_timeout_seconds: float = 1800.0
    # OpenAI-compatible dialect quirks; "" means detected from base_url.
    vendor: str = ""
    # "max_completion_tokens" or "max_tokens"; "" means what the vendor accepts.
    max_tokens_field: str = ""
    # Request parameters this upstream rejects, and what to do when a client sends one.
    unsupported_params: tuple[str, ...] = ()
    unsupported_param_policy: str = "reject"
    # Anthropic only: the anthropic-version header.
    anthropic_version: str = "2023-06-01"


PROVIDER_KEYS = frozenset({
    "name", "type", "base_url", "api_key", "connect_timeout_seconds", "read_timeout_seconds", "vendor",
    "first_token_timeout_seconds", "idle_timeout_seconds", "total_timeout_seconds",
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
class RoutingSettings:
    """How a request moves between a model's routes when upstreams fail."""

    # Upstream attempts one request may make, the first included.
    max_attempts: int = 3
    # Wait at most this long for a route's Retry-After before giving up on it.
    max_retry_wait_seconds: float = 10.0
    # Process-wide retry budget (a token bucket): each request adds this many tokens,
    # each retry takes one; the bucket holds at most retry_budget_burst.
    retry_budget_ratio: float = 0.2
    retry_budget_burst: int = 10
    # A route's circuit opens after this many consecutive failures, for this long.
    breaker_failure_threshold: int = 5
    breaker_cooldown_seconds: float = 30.0
    # How long a route whose operator quota is exhausted is left alone.
    quota_cooldown_seconds: float = 300.0


@dataclass(frozen=True)
class LimitSettings:
    """Where rate and concurrency counters live, and what happens when that store is down."""

    # "" keeps counters in process; "redis://host:6379/0" shares them between replicas.
    redis_url: str = field(default="", repr=False)
    # "open" admits (and logs) when Redis is unreachable; "closed" answers 503 limits_unavailable.
    redis_failure_policy: str = "open"
    redis_connect_timeout_seconds: float = 0.25
    redis_command_timeout_seconds: float = 0.25
    # A concurrency slot in Redis expires after this long even if its replica died holding it.
    concurrency_lease_seconds: float = 900.0


@dataclass(frozen=True)
class DatabaseSettings:
    """How a core uses its database beyond the URL: the connection pool, and migrating on start."""

    # Connections kept open (and worker threads); each replica holds up to pool_size + max_overflow.
    pool_size: int = 4
    # Extra connections under load (PostgreSQL only; SQLite has one writer anyway).
    max_overflow: int = 4
    # How long a query waits for a free connection before failing.
    pool_timeout_seconds: float = 30.0
    # Upgrade the schema at start; turn off when `tollgate migrate` runs as a deploy step.
    migrate_on_start: bool = True


DATABASE_POOL_KEYS = frozenset(DatabaseSettings.__dataclass_fields__)


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
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    create_demo_account: bool = False
    # How long SIGTERM lets in-flight requests and streams finish before cutting them.
    shutdown_grace_seconds: float = 30.0
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    http: HttpSettings = field(default_factory=HttpSettings)


MODEL_KEYS = frozenset({"name", "routes", "input_price", "output_price", "cached_input_price", "max_output_tokens"})
ROUTE_KEYS = frozenset({"provider", "model", "priority", "weight"})
# Every key each section accepts; anything else is reported, so a typo never passes silently.
SECTION_KEYS: Mapping[str, frozenset[str]] = {
    "server": frozenset({"http_address", "grpc_address", "shutdown_grace_seconds"}),
    "database": frozenset({"url", *DATABASE_POOL_KEYS}),
    "admin": frozenset({"token"}),
    "keys": frozenset({"pepper", "cache_seconds"}),
    "metering": frozenset(MeteringSettings.__dataclass_fields__),
    "routing": frozenset(RoutingSettings.__dataclass_fields__),
    "limits": frozenset(LimitSettings.__dataclass_fields__),
    "demo": frozenset({"create_account"}),
    "http": HTTP_KEYS,
    "providers": PROVIDER_KEYS,
    "models": MODEL_KEYS,
    "logging": LOGGING_KEYS,
    "metrics": METRICS_KEYS,
    "tracing": TRACING_KEYS,
}
