"""Tracing is off unless enabled, and enabling it without the OTLP exporter says what to install."""

from __future__ import annotations

import sys

import pytest

from gateway_core.observability import tracing
from gateway_core.observability.settings import TracingSettings


def test_off_by_default_builds_nothing() -> None:
    assert tracing.build_tracer_provider(TracingSettings()) is None
    assert tracing.tracer_of(None) is None


def test_enabled_without_the_exporter_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(RuntimeError, match=r"pip install 'tollgate\[otlp\]'"):
        tracing.build_tracer_provider(TracingSettings(enabled=True))


@pytest.mark.parametrize(
    "provider_type, vendor, name",
    [("openai", "", "openai"), ("anthropic", "", "anthropic"), ("gemini", "", "gcp.gemini"),
     ("openai", "mistral", "mistral_ai"), ("openai", "vllm", "openai"), ("mock", "", "mock")],
)
def test_provider_names_follow_the_semconv_registry(provider_type: str, vendor: str, name: str) -> None:
    assert tracing.genai_provider_name(provider_type, vendor) == name


def test_trace_headers_are_replaced_only_inside_a_span() -> None:
    pairs = [("x-request-id", "req_1"), ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01")]
    assert tracing.with_current_context(pairs) == pairs  # no current span: unchanged
