"""OpenTelemetry tracing, off unless [tracing] enabled: the SDK is imported only then.

Spans follow the GenAI semantic conventions (gen_ai.* attributes, span name
"{operation} {model}"). Context travels as W3C trace context: HTTP headers into
the facade, gRPC metadata into the core, HTTP headers to the upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway_core.observability.settings import TracingSettings

TRACER_NAME = "tollgate"
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
# GenAI semantic convention attribute names (OpenTelemetry semconv, gen_ai registry).
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # the older name of gen_ai.provider.name, still read by many backends
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
ERROR_TYPE = "error.type"
CHAT = "chat"

_PROPAGATOR = TraceContextTextMapPropagator()
# gen_ai.provider.name's well-known values, by provider type and OpenAI-compatible vendor.
_GENAI_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}
_GENAI_VENDORS = {"deepseek": "deepseek", "mistral": "mistral_ai", "groq": "groq"}


def genai_provider_name(provider_type: str, vendor: str = "") -> str:
    """The semconv gen_ai.provider.name of a configured provider (its type when not well known)."""
    return _GENAI_VENDORS.get(vendor) or _GENAI_PROVIDERS.get(provider_type, provider_type)


def build_tracer_provider(settings: TracingSettings) -> Any:
    """An SDK TracerProvider exporting over OTLP/HTTP in batches, or None when tracing is off.

    Needs `pip install 'tollgate[otlp]'` (opentelemetry-sdk and the OTLP exporter).
    """
    if not settings.enabled:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "[tracing] enabled needs the OpenTelemetry SDK and OTLP exporter: pip install 'tollgate[otlp]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint) if settings.otlp_endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def tracer_of(provider: Any) -> trace.Tracer | None:
    """The gateway's tracer from a TracerProvider, or None (tracing off: no span is ever made)."""
    if provider is None:
        return None
    tracer: trace.Tracer = provider.get_tracer(TRACER_NAME)
    return tracer


def extract(pairs: Iterable[tuple[str, Any]]) -> Context:
    """The caller's trace context from headers or gRPC metadata (lower-case names)."""
    carrier = {name: value for name, value in pairs if name in TRACE_HEADERS and isinstance(value, str)}
    return _PROPAGATOR.extract(carrier)


def with_current_context(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """pairs with the trace headers replaced by the current span's context (when there is one)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return list(pairs)
    return [(k, v) for k, v in pairs if k not in TRACE_HEADERS] + sorted(carrier.items())
