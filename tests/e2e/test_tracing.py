"""OpenTelemetry spans facade -> core -> upstream, and the traceparent the upstream receives.

The gateway runs with an SDK TracerProvider exporting to memory; the fake
upstream records the headers it was sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import RunningGateway, running_gateway, settings_for

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
HELLO = [{"role": "user", "content": "Hello, traces"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream(expected_key="sk-tracing-upstream") as fake:
        yield fake


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAIUpstream, exporter: InMemorySpanExporter
) -> Iterator[RunningGateway]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = settings_for(
        tmp_path_factory.mktemp("tracing"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url, "api_key": "sk-tracing-upstream"}],
        models=[
            {"name": "traced", "routes": [{"provider": "up", "model": "fake-text"}], "input_price": 1, "output_price": 1},
            {"name": "traced-broken", "routes": [{"provider": "up", "model": "fake-error-503"}],
             "input_price": 1, "output_price": 1},
        ],
    )
    with running_gateway(settings, tracer_provider=provider) as running:
        yield running
    provider.shutdown()


def _by_kind(spans: list[ReadableSpan], kind: SpanKind, name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.kind == kind and s.name == name]
    return span


def _finished(exporter: InMemorySpanExporter, last: str, timeout: float = 5.0) -> list[ReadableSpan]:
    """The finished spans once `last` is among them: the facade's span ends just after the client has its answer."""
    deadline = time.monotonic() + timeout
    while not any(s.name == last for s in exporter.get_finished_spans()):
        assert time.monotonic() < deadline, f"span {last!r} never finished"
        time.sleep(0.01)
    return list(exporter.get_finished_spans())


def _parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None, span.name
    return span.parent.span_id


@pytest.mark.parametrize("stream", [False, True])
def test_spans_chain_from_the_client_to_the_upstream(
    gateway: RunningGateway, upstream: FakeOpenAIUpstream, exporter: InMemorySpanExporter, stream: bool
) -> None:
    exporter.clear()
    secret = gateway.create_key()[2]
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=secret, max_retries=0) as sdk:
        if stream:
            chunks = list(sdk.chat.completions.create(
                model="traced", messages=HELLO, stream=True, stream_options={"include_usage": True},
                extra_headers={"traceparent": TRACEPARENT},
            ))
            usage = chunks[-1].usage
        else:
            usage = sdk.chat.completions.create(
                model="traced", messages=HELLO, extra_headers={"traceparent": TRACEPARENT}
            ).usage
    assert usage is not None
    spans = _finished(exporter, "POST /v1/chat/completions")
    facade = _by_kind(spans, SpanKind.SERVER, "POST /v1/chat/completions")
    core = _by_kind(spans, SpanKind.SERVER, "chat traced")
    client = _by_kind(spans, SpanKind.CLIENT, "chat fake-text")
    # One trace, continuing the caller's, each hop the child of the one before.
    assert {format(s.context.trace_id, "032x") for s in (facade, core, client)} == {CLIENT_TRACE_ID}
    assert _parent_id(facade) == int(CLIENT_SPAN_ID, 16)
    assert _parent_id(core) == facade.context.span_id
    assert _parent_id(client) == core.context.span_id
    # The upstream saw a traceparent whose parent is the gateway's upstream span.
    sent = upstream.last_request.headers["traceparent"]
    assert sent == f"00-{CLIENT_TRACE_ID}-{format(client.context.span_id, '016x')}-01"
    attributes = client.attributes or {}
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "fake-text"
    assert attributes["gen_ai.response.model"]
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"] > 0
    core_attributes = core.attributes or {}
    assert core_attributes["gen_ai.request.model"] == "traced"
    assert core_attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert core_attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert facade.attributes is not None and facade.attributes["http.response.status_code"] == 200


def test_an_upstream_failure_marks_the_spans_with_its_error_type(
    gateway: RunningGateway, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    secret = gateway.create_key()[2]
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=secret, max_retries=0) as sdk:
        with pytest.raises(openai.APIStatusError):
            sdk.chat.completions.create(model="traced-broken", messages=HELLO)
    spans = _finished(exporter, "POST /v1/chat/completions")
    # A 503 is retried on the same route, so there is one client span per upstream attempt.
    attempts = [s for s in spans if s.kind == SpanKind.CLIENT and s.name == "chat fake-error-503"]
    core = _by_kind(spans, SpanKind.SERVER, "chat traced-broken")
    assert attempts and core.status.status_code == StatusCode.ERROR
    for client in attempts:
        assert client.status.status_code == StatusCode.ERROR
        assert (client.attributes or {})["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert (core.attributes or {})["error.type"] == "UPSTREAM_UNAVAILABLE"


def test_without_tracing_the_clients_traceparent_passes_through(tmp_path: Path) -> None:
    with FakeOpenAIUpstream() as upstream:
        settings = settings_for(
            tmp_path,
            providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url, "api_key": "sk-untraced-up"}],
            models=[{"name": "plain", "routes": [{"provider": "up", "model": "fake-text"}],
                     "input_price": 1, "output_price": 1}],
        )
        with running_gateway(settings) as running:
            secret = running.create_key()[2]
            reply = httpx.post(
                f"{running.http_url}/v1/chat/completions",
                json={"model": "plain", "messages": HELLO},
                headers={"authorization": f"Bearer {secret}", "traceparent": TRACEPARENT},
            )
        assert reply.status_code == 200
        assert upstream.last_request.headers["traceparent"] == TRACEPARENT
