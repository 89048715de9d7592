"""The OpenAI-compatible HTTP routes served by FastAPI: each turns one HTTP request into core gRPC calls.

The two busiest, chat completions and the model list, are plain ASGI
endpoints in hot_routes.py; the rest are here.

No policy lives here. Authentication, limits, routing and metering are the
core's; the facade forwards the caller's Authorization header as gRPC metadata
and translates JSON <-> protobuf both ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from fastapi import APIRouter, Request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.responses import Response
from starlette.types import Scope

from gateway_core.deadline_timer import DeadlineTimer
from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from gateway_core.pb.gateway.v1 import chat_pb2_grpc, metering_pb2_grpc
from http_facade.asgi_io import wanted_headers
from http_facade.edge_limits import EdgeLimits
from http_facade.errors import ApiError, from_rpc_error
from http_facade.middleware import request_id_of
from http_facade.observe import mark_core_reached, with_trace_context

JSON = "application/json"
TRACE_HEADERS = ("traceparent", "tracestate")
_TRACE_HEADER_NAMES = tuple(name.encode() for name in TRACE_HEADERS)
# Readiness must answer quickly even when the core hangs.
READY_TIMEOUT_SECONDS = 2.0
# 499 is nginx's "client closed request"; nobody reads it, but access logs do.
CLIENT_CLOSED_REQUEST = 499

router = APIRouter()


@dataclass(frozen=True, slots=True)
class Facade:
    """What the routes share for the app's lifetime: stubs on one channel, and limits."""

    chat: chat_pb2_grpc.ChatServiceStub
    metering: metering_pb2_grpc.MeteringServiceStub
    health: health_pb2_grpc.HealthStub
    call_timeout_seconds: float
    max_body_bytes: int
    heartbeat_seconds: float
    limits: EdgeLimits = EdgeLimits()
    # One timer for every stream's heartbeat (event_stream._Heartbeat), not one per stream.
    heartbeats: DeadlineTimer = field(default_factory=DeadlineTimer)


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    """One model, if the caller's key may use it; ids may contain "/"."""
    for model in await _models(request):
        if model.id == model_id:
            return Response(orjson.dumps(model_json(model)), media_type=JSON)
    raise ApiError(
        404,
        f"The model `{model_id}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


@router.get("/healthz")
async def healthz() -> Response:
    """Liveness: the process answers HTTP."""
    return Response(b'{"status":"ok"}', media_type=JSON)


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Readiness: the core answers grpc.health.v1 Check with SERVING."""
    facade: Facade = request.state.facade
    try:
        reply = await facade.health.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=READY_TIMEOUT_SECONDS
        )
        ready = reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        ready = False
    if ready:
        return Response(b'{"status":"ok"}', media_type=JSON)
    return Response(b'{"status":"unavailable"}', status_code=503, media_type=JSON)


def call_metadata(request: Request, request_id: str) -> list[tuple[str, str]]:
    """gRPC metadata for a core call from a FastAPI route (see core_metadata)."""
    return core_metadata(request.scope, wanted_headers(request.scope), request_id)


def core_metadata(scope: Scope, headers: Mapping[bytes, str], request_id: str) -> list[tuple[str, str]]:
    """gRPC metadata for a core call: the caller's Authorization as-is, and the request id.

    headers are the ones asgi_io.wanted_headers picked out of the scope.
    """
    metadata = [("x-request-id", request_id)]
    authorization = headers.get(b"authorization")
    # gRPC metadata must be printable ASCII; anything else cannot be a key of
    # ours, so it is left out and the core answers 401 as for a missing key.
    if authorization and authorization.isascii() and authorization.isprintable():
        metadata.append(("authorization", authorization))
    # W3C trace context is the only client header that may travel on to the upstream.
    for name in _TRACE_HEADER_NAMES:
        value = headers.get(name)
        if value and len(value) <= 512 and value.isascii() and value.isprintable():
            metadata.append((name.decode(), value))
    mark_core_reached(scope)
    return with_trace_context(metadata)


async def _models(request: Request) -> list[pb.Model]:
    facade: Facade = request.state.facade
    request_id = request_id_of(request.scope)
    try:
        reply = await facade.chat.ListModels(
            pb.ListModelsRequest(),
            metadata=call_metadata(request, request_id),
            timeout=facade.call_timeout_seconds,
        )
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    return list(reply.models)


def model_json(model: pb.Model) -> dict[str, Any]:
    """One model as OpenAI's `model` object."""
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}
