"""The OpenAI-compatible HTTP routes: each turns one HTTP request into core gRPC calls.

No policy lives here. Authentication, limits, routing and metering are the
core's; the facade forwards the caller's Authorization header as gRPC metadata
and translates JSON <-> protobuf both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import grpc
import orjson
from fastapi import APIRouter, Request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from gateway_core.pb.gateway.v1 import chat_pb2_grpc, metering_pb2_grpc
from http_facade.bounds import check_bounds
from http_facade.convert_request import ChatCall, parse_json_object, to_chat_request
from http_facade.convert_response import completion_json
from http_facade.disconnect import ClientDisconnected, unless_disconnected
from http_facade.edge_limits import EdgeLimits
from http_facade.errors import ApiError, from_rpc_error, rate_limit_headers
from http_facade.middleware import request_id_of
from http_facade.observe import mark_core_reached, with_trace_context
from http_facade.sse import DONE, SSE_HEADERS, EventStreamResponse, chat_events

JSON = "application/json"
TRACE_HEADERS = ("traceparent", "tracestate")
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


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    """OpenAI chat completions, streamed (SSE) or whole."""
    facade: Facade = request.state.facade
    request_id = request_id_of(request.scope)
    try:
        payload = parse_json_object(await read_body(request, facade.max_body_bytes))
        check_bounds(payload, facade.limits)
        chat = to_chat_request(payload, request_id)
        metadata = call_metadata(request, request_id)
        if chat.stream:
            return await _stream_completion(facade, request, chat, metadata)
        call = facade.chat.CreateChatCompletion(
            chat.request, metadata=metadata, timeout=facade.call_timeout_seconds
        )
        response = await unless_disconnected(call, request.receive, call.cancel)
        limit_headers = rate_limit_headers(await call.initial_metadata() or ())
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return Response(completion_json(response), media_type=JSON, headers=limit_headers)


async def _stream_completion(
    facade: Facade, request: Request, chat: ChatCall, metadata: list[tuple[str, str]]
) -> Response:
    """Starts the stream, waiting for the core's first message before committing to a 200.

    Until that message arrives the core may still refuse (bad key, no balance,
    unknown model), and such refusals must be real HTTP errors, not SSE events.
    """
    call = facade.chat.StreamChatCompletion(
        chat.request, metadata=metadata, timeout=facade.call_timeout_seconds
    )
    first = await unless_disconnected(call.read(), request.receive, call.cancel)
    if first is grpc.aio.EOF:  # the core ended the stream without a single message
        return Response(DONE, media_type="text/event-stream", headers=SSE_HEADERS)
    events = chat_events(call, cast(pb.StreamChatCompletionResponse, first), include_usage=chat.include_usage)
    response = EventStreamResponse(events, on_close=call.cancel, heartbeat_seconds=facade.heartbeat_seconds)
    response.headers.update(rate_limit_headers(await call.initial_metadata() or ()))
    return response


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """The models the caller's key may use."""
    models = await _models(request)
    body = {"object": "list", "data": [_model_json(model) for model in models]}
    return Response(orjson.dumps(body), media_type=JSON)


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    """One model, if the caller's key may use it; ids may contain "/"."""
    for model in await _models(request):
        if model.id == model_id:
            return Response(orjson.dumps(_model_json(model)), media_type=JSON)
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


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, or a 413 as soon as it is known to exceed limit bytes.

    Counts while reading, so a chunked body without Content-Length is cut off
    too, before it is buffered in full.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected() from None
    return b"".join(chunks)


def call_metadata(request: Request, request_id: str) -> list[tuple[str, str]]:
    """gRPC metadata for a core call: the caller's Authorization as-is, and the request id."""
    metadata = [("x-request-id", request_id)]
    authorization = request.headers.get("authorization")
    # gRPC metadata must be printable ASCII; anything else cannot be a key of
    # ours, so it is left out and the core answers 401 as for a missing key.
    if authorization and authorization.isascii() and authorization.isprintable():
        metadata.append(("authorization", authorization))
    # W3C trace context is the only client header that may travel on to the upstream.
    for name in TRACE_HEADERS:
        value = request.headers.get(name)
        if value and len(value) <= 512 and value.isascii() and value.isprintable():
            metadata.append((name, value))
    mark_core_reached(request.scope)
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


def _model_json(model: pb.Model) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


def _too_large(limit: int) -> ApiError:
    # Closing the connection spares the client from uploading the rest.
    return ApiError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
        headers={"connection": "close"},
    )
