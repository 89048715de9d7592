"""The facade's busiest routes as plain ASGI endpoints: POST /v1/chat/completions and GET /v1/models.

They answer exactly as the FastAPI routes did (same status, headers, bodies
and errors) but read the scope and write ASGI messages directly: FastAPI's
routing, dependency solving, Request and Response objects cost more per
request than everything else the facade does. dispatch.py sends these paths
here; the FastAPI app mounts the same endpoints, so a request takes one code
path whichever way it arrives.

No policy lives here either: the core authenticates, limits, routes and meters.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import orjson
from starlette.types import Receive, Scope, Send

from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from http_facade.asgi_io import raw_headers, read_body, send_body, send_error, wanted_headers
from http_facade.bounds import check_bounds
from http_facade.convert_request import parse_json_object, to_chat_request
from http_facade.convert_response import completion_json
from http_facade.disconnect import ClientDisconnected, DisconnectWatch, cancelled_by_disconnect, unless_disconnected
from http_facade.errors import ApiError, from_rpc_error, rate_limit_headers
from http_facade.event_stream import stream_chat
from http_facade.middleware import REQUEST_ID_SCOPE_KEY
from http_facade.routes import CLIENT_CLOSED_REQUEST, Facade, core_metadata, model_json
from http_facade.sse import DONE, SSE_HEADERS

_DONE_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")


async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    """OpenAI chat completions, streamed (SSE) or whole."""
    facade: Facade = scope["state"]["facade"]
    request_id: str = scope[REQUEST_ID_SCOPE_KEY]
    headers = wanted_headers(scope)
    try:
        body = await read_body(receive, headers.get(b"content-length"), facade.max_body_bytes)
        payload = parse_json_object(body)
        check_bounds(payload, facade.limits, body)
        chat = to_chat_request(payload, request_id)
        metadata = core_metadata(scope, headers, request_id)
        if chat.stream:
            await _stream(facade, chat.request, chat.include_usage, metadata, receive, send)
            return
        call = facade.chat.CreateChatCompletion(chat.request, metadata=metadata, timeout=facade.call_timeout_seconds)
        response = await unless_disconnected(call, receive, call.cancel)
        limits = _limit_headers_at_once(call)
        if limits is None:
            limits = await _limit_headers(call)
    except grpc.aio.AioRpcError as exc:
        await send_error(send, from_rpc_error(exc))
        return
    except ApiError as exc:
        await send_error(send, exc)
        return
    except ClientDisconnected:
        await send_body(send, CLIENT_CLOSED_REQUEST, b"", [], content_type=None)
        return
    await send_body(send, 200, completion_json(response), raw_headers(limits) if limits else [])


async def _stream(facade: Facade, request: pb.StreamChatCompletionRequest | pb.CreateChatCompletionRequest,
                  include_usage: bool, metadata: list[tuple[str, str]], receive: Receive, send: Send) -> None:
    """Starts the stream, waiting for the core's first message before committing to a 200.

    Until that message arrives the core may still refuse (bad key, no balance,
    unknown model), and such refusals must be real HTTP errors, not SSE events.
    """
    call = facade.chat.StreamChatCompletion(request, metadata=metadata, timeout=facade.call_timeout_seconds)
    # One watch for the whole stream, the wait for the first message included (one task, not two).
    watch = DisconnectWatch(receive, call.cancel)
    try:
        try:
            first = await call.read()
        except BaseException as exc:  # as unless_disconnected: the call never outlives the request
            call.cancel()
            if isinstance(exc, asyncio.CancelledError) and cancelled_by_disconnect(watch):
                raise ClientDisconnected() from None
            raise
        if first is grpc.aio.EOF:  # the core ended the stream without a single message
            headers = [(k.encode(), v.encode()) for k, v in SSE_HEADERS.items()]
            await send_body(send, 200, DONE, headers, content_type=_DONE_CONTENT_TYPE)
            return
        limits = _limit_headers_at_once(call)
        if limits is None:
            limits = await _limit_headers(call)
        await stream_chat(
            call,
            cast(pb.StreamChatCompletionResponse, first),
            include_usage=include_usage,
            heartbeat_seconds=facade.heartbeat_seconds,
            heartbeats=facade.heartbeats,
            headers=limits,
            receive=receive,
            send=send,
            watch=watch,
        )
    finally:
        watch.stop()


async def _limit_headers(call: Any) -> dict[str, str]:
    """The x-ratelimit-* headers of a core call's initial metadata, once its answer (or first message) is in."""
    initial = await call.initial_metadata()
    return rate_limit_headers(initial) if initial is not None else {}


def _limit_headers_at_once(call: Any) -> dict[str, str] | None:
    """As _limit_headers, without waiting, for an in-process call (initial_metadata_pairs), else None.

    The in-process call hands over its metadata pairs: no coroutine and no
    grpc.aio.Metadata per request.
    """
    pairs_now = getattr(call, "initial_metadata_pairs", None)
    return rate_limit_headers(pairs_now()) if pairs_now is not None else None


async def list_models(scope: Scope, receive: Receive, send: Send) -> None:
    """The models the caller's key may use."""
    facade: Facade = scope["state"]["facade"]
    metadata = core_metadata(scope, wanted_headers(scope), scope[REQUEST_ID_SCOPE_KEY])
    try:
        reply = await facade.chat.ListModels(
            pb.ListModelsRequest(), metadata=metadata, timeout=facade.call_timeout_seconds
        )
    except grpc.aio.AioRpcError as exc:
        await send_error(send, from_rpc_error(exc))
        return
    body = {"object": "list", "data": [model_json(model) for model in reply.models]}
    await send_body(send, 200, orjson.dumps(body), [])

