"""Builds the HTTP facade: a FastAPI app speaking OpenAI's API in front of the core's gRPC API.

Everything the app holds is created in its lifespan (one gRPC channel to the
core, closed on shutdown); nothing exists at import time, so several apps can
live in one process, as the tests do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from dataclasses import replace

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from grpc_health.v1 import health_pb2_grpc
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_core.in_process import InProcessChannel
from gateway_core.pb.gateway.v1 import chat_pb2_grpc, metering_pb2_grpc
from http_facade import hot_routes
from http_facade.billing import router as billing_router
from http_facade.dispatch import HotRouteDispatch
from http_facade.drain import Drain
from http_facade.edge import EdgeMiddleware
from http_facade.edge_limits import EdgeLimits
from http_facade.errors import ApiError, invalid_request
from http_facade.observe import metrics_router
from http_facade.routes import Facade, router

DEFAULT_MAX_BODY_BYTES = EdgeLimits.max_body_bytes
# Messages to and from our own core may exceed gRPC's 4 MiB default (a 32 MiB
# body of images, a long answer with logprobs); the facade bounds bodies itself.
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # A dns:/// target naming several core replicas (deploy/) gets calls spread over all of them.
    ("grpc.lb_policy_name", "round_robin"),
]


def create_app(
    core_target: str | InProcessChannel,
    *,
    call_timeout_seconds: float = 600.0,
    max_body_bytes: int | None = None,
    heartbeat_seconds: float = 15.0,
    drain: Drain | None = None,
    metrics_token: str = "",
    tracer_provider: Any = None,
    limits: EdgeLimits | None = None,
) -> ASGIApp:
    """The facade app, calling the core's gRPC API at core_target ("host:port"), or
    in-process through an InProcessChannel when it runs next to the core.

    call_timeout_seconds is the deadline of every core call (a whole stream
    drain, when given, is how the process's shutdown refuses and cuts requests.
    metrics_token, if set, guards GET /metrics; tracer_provider (an OpenTelemetry
    SDK TracerProvider) turns on the facade's spans. heartbeat_seconds is how long a stream may stay silent before a
    `: ping`; limits bound each request's size and shape (the `[http]`
    section), and max_body_bytes, when given, overrides limits.max_body_bytes.

    The result is an ASGI app: the FastAPI app behind HotRouteDispatch (dispatch.py).
    """
    limits = limits or EdgeLimits()
    if max_body_bytes is not None:
        limits = replace(limits, max_body_bytes=max_body_bytes)
    max_body_bytes = limits.max_body_bytes
    if call_timeout_seconds <= 0 or max_body_bytes <= 0 or heartbeat_seconds <= 0:
        raise ValueError("call_timeout_seconds, max_body_bytes and heartbeat_seconds must be positive")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Facade]]:
        channel = (
            core_target
            if isinstance(core_target, InProcessChannel)
            else grpc.aio.insecure_channel(core_target, options=_CHANNEL_OPTIONS)
        )
        try:
            yield {
                "facade": Facade(
                    chat=chat_pb2_grpc.ChatServiceStub(channel),
                    metering=metering_pb2_grpc.MeteringServiceStub(channel),
                    health=health_pb2_grpc.HealthStub(channel),
                    call_timeout_seconds=call_timeout_seconds,
                    max_body_bytes=max_body_bytes,
                    heartbeat_seconds=heartbeat_seconds,
                    limits=limits,
                )
            }
        finally:
            await channel.close()

    app = FastAPI(
        title="Tollgate",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        swagger_ui_oauth2_redirect_url=None,
        redirect_slashes=False,  # an API answers 404, not a redirect a POST may not follow
    )
    app.include_router(router)
    app.include_router(billing_router)
    app.include_router(metrics_router)
    for (method, path), endpoint in _HOT_ENDPOINTS.items():
        app.router.routes.append(Route(path, _Endpoint(endpoint), methods=[method]))
    app.state.metrics_token = metrics_token
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    tracer = None if tracer_provider is None else tracer_provider.get_tracer("tollgate")
    drain = drain or Drain()
    app.add_middleware(EdgeMiddleware, drain=drain, tracer=tracer)
    # The same edge in front of the hot endpoints, which skip the rest of FastAPI.
    hot = {key: EdgeMiddleware(endpoint, drain=drain, tracer=tracer) for key, endpoint in _HOT_ENDPOINTS.items()}
    return HotRouteDispatch(app, hot)


_HOT_ENDPOINTS: dict[tuple[str, str], ASGIApp] = {
    ("POST", "/v1/chat/completions"): hot_routes.chat_completions,
    ("GET", "/v1/models"): hot_routes.list_models,
}


class _Endpoint:
    """A plain ASGI endpoint as an object, which Starlette's Route mounts as-is (a function it would
    wrap as a request -> response handler)."""

    def __init__(self, endpoint: ASGIApp) -> None:
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._endpoint(scope, receive, send)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.to_response()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (unknown path, wrong method) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    if exc.status_code == 404:
        message = f"Invalid URL ({method} {path})"
    elif exc.status_code == 405:
        message = f"Method {method} is not allowed for {path}."
    else:
        message = str(exc.detail)
    code = "method_not_allowed" if exc.status_code == 405 else None
    return ApiError(exc.status_code, message, code=code, headers=exc.headers).to_response()


async def _validation_error(request: Request, exc: Exception) -> Response:
    """Never FastAPI's 422 shape; routes validate by hand, so this is only a safety net."""
    return invalid_request("The request could not be validated.").to_response()
