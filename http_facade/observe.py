"""The facade's share of operability: GET /metrics, its access line, and its trace span.

The core writes the access-log line of every request that reaches it; the
facade writes one only for requests it answered alone (a 413, unparseable
JSON, an unknown path) — `call_metadata` marks a request as sent to the core.
With a tracer, every /v1 request gets a server span continuing the client's
traceparent, and the core call carries that span's context instead. The
EdgeMiddleware (edge.py) applies both to every request.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from http_facade.errors import ApiError

access_log = logging.getLogger("tollgate.access")
# Set in the ASGI scope once a request's call to the core is made.
CORE_REACHED_SCOPE_KEY = "tollgate.core_reached"
_REQUEST_ID_SCOPE_KEY = "tollgate.request_id"
_TRACE_HEADERS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()

metrics_router = APIRouter()


@metrics_router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process (core included under `tollgate serve`).

    Never authenticated by user API keys; with a metrics token configured it
    needs `Authorization: Bearer <token>`.
    """
    token: str = getattr(request.app.state, "metrics_token", "")
    if token and not hmac.compare_digest(
        request.headers.get("authorization", "").encode(), f"Bearer {token}".encode()
    ):
        raise ApiError(401, "A valid metrics token is required.", code="invalid_metrics_token")
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def mark_core_reached(scope: Scope) -> None:
    scope[CORE_REACHED_SCOPE_KEY] = True


def with_trace_context(metadata: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Core-call metadata naming the facade's current span as parent (unchanged without one)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return metadata
    return [(k, v) for k, v in metadata if k not in _TRACE_HEADERS] + sorted(carrier.items())


async def traced(tracer: trace.Tracer, app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                 status: Callable[[], int]) -> None:
    """Runs app inside the request's server span, continuing the client's traceparent.

    status() is the response status so far, read when the app is done.
    """
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ()) if k.decode("latin-1") in _TRACE_HEADERS}
    route = scope["path"]
    attributes = {"http.request.method": scope["method"], "url.path": route}
    with tracer.start_as_current_span(
        f"{scope['method']} {route}", context=_PROPAGATOR.extract(headers), kind=trace.SpanKind.SERVER,
        attributes=attributes,
    ) as span:
        try:
            await app(scope, receive, send)
        finally:
            code = status()
            span.set_attribute("http.response.status_code", code)
            if code >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))


def access_line(scope: Scope, status: int, started: float) -> None:
    """Logs the facade's access line for a request it answered without the core (see module doc)."""
    access_log.info("http request", extra=_line(scope, status, started))


def _line(scope: Scope, status: int, started: float) -> dict[str, Any]:
    return {
        "request_id": scope.get(_REQUEST_ID_SCOPE_KEY, ""),
        "method": scope.get("method", ""),
        "path": scope.get("path", "")[:200],
        "status": status,
        "latency_ms": int((time.monotonic() - started) * 1000),
    }
