"""ChatService: authenticate -> validate -> route -> provider, for unary and streaming calls.

Servicer methods only adapt gRPC to the pipeline below. Metering (holds and
settlement) plugs in around the provider call; until then usage is reported
as the provider gave it, or estimated when it gave none.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc

from gateway_core.auth import Authenticator, Principal
from gateway_core.chat.validate import validate_request
from gateway_core.config import ModelSettings
from gateway_core.errors import GatewayError, Reason, abort
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc, types_pb2
from gateway_core.providers.base import ChatRequest, Provider, UpstreamCall
from gateway_core.routing import Router
from gateway_core.tokens import estimate_prompt_tokens, estimate_text_tokens

log = logging.getLogger("tollgate.chat")

# Keep this much of the caller's deadline for our own bookkeeping after upstream answers.
_DEADLINE_MARGIN_SECONDS = 0.05


@dataclass(frozen=True)
class Admitted:
    """A request that passed authentication, validation and routing."""

    principal: Principal
    model: ModelSettings
    provider: Provider
    call: UpstreamCall


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """gateway.v1.ChatService over the configured providers."""

    def __init__(self, authenticator: Authenticator, router: Router, providers: Mapping[str, Provider]) -> None:
        self._auth = authenticator
        self._router = router
        self._providers = providers

    async def CreateChatCompletion(
        self, request: chat_pb2.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.CreateChatCompletionResponse:
        try:
            admitted = await self._admit(request, context)
            response = await admitted.provider.complete(admitted.call)
            if not response.HasField("usage"):
                _estimate_completion_usage(response, request)
            response.provider = admitted.provider.name
            return response
        except GatewayError as error:
            await abort(context, error)
        except Exception:  # noqa: BLE001 - the boundary: log once, answer generically
            log.exception("unexpected failure in CreateChatCompletion")
            await abort(context, GatewayError(Reason.INTERNAL, "internal error"))
        raise AssertionError("unreachable")  # abort always raises

    async def StreamChatCompletion(
        self, request: chat_pb2.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        try:
            admitted = await self._admit(request, context)
            async for chunk in _stream_with_usage(admitted, request):
                yield chunk
        except GatewayError as error:
            await abort(context, error)
        except Exception:  # noqa: BLE001 - the boundary: log once, answer generically
            log.exception("unexpected failure in StreamChatCompletion")
            await abort(context, GatewayError(Reason.INTERNAL, "internal error"))

    async def ListModels(
        self, request: chat_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.ListModelsResponse:
        try:
            principal = await self._auth.authenticate(context.invocation_metadata())
        except GatewayError as error:
            await abort(context, error)
            raise AssertionError("unreachable") from None
        return chat_pb2.ListModelsResponse(
            models=[
                chat_pb2.Model(id=m.name, created=self._router.loaded_at, owned_by=m.routes[0].provider)
                for m in self._router.visible_models(principal)
            ]
        )

    async def _admit(self, request: ChatRequest, context: grpc.aio.ServicerContext) -> Admitted:
        metadata = context.invocation_metadata() or ()
        principal = await self._auth.authenticate(metadata)
        validate_request(request)
        model = self._router.resolve(request.model, principal)
        route = model.routes[0]
        request_id = request.request_id or _metadata_value(metadata, "x-request-id") or _new_request_id()
        remaining = context.time_remaining()
        call = UpstreamCall(
            request=request,
            upstream_model=route.model,
            client_model=request.model,
            request_id=request_id,
            timeout_seconds=None if remaining is None else max(remaining - _DEADLINE_MARGIN_SECONDS, 0.001),
        )
        return Admitted(principal, model, self._providers[route.provider], call)


async def _stream_with_usage(
    admitted: Admitted, request: ChatRequest
) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
    """The provider's chunks; ends with exactly one usage message, estimated if
    the upstream sent none. aclosing() makes cancellation close the upstream."""
    text_parts: list[str] = []
    template: chat_pb2.StreamChatCompletionResponse | None = None
    saw_usage = False
    started = time.monotonic()
    async with contextlib.aclosing(admitted.provider.stream(admitted.call)) as chunks:
        async for chunk in chunks:
            chunk.provider = admitted.provider.name
            if chunk.HasField("usage"):
                saw_usage = True
            if template is None:
                template = chunk
            for choice in chunk.choices:
                delta = choice.delta
                if delta.HasField("content"):
                    text_parts.append(delta.content)
                for tool_call in delta.tool_calls:
                    text_parts.append(tool_call.function.name + tool_call.function.arguments)
            yield chunk
    if not saw_usage:
        log.info("upstream sent no usage; estimating (request %s)", admitted.call.request_id)
        yield _estimated_usage_chunk(template, request, "".join(text_parts))
    log.debug("stream %s finished in %.3fs", admitted.call.request_id, time.monotonic() - started)


def _estimated_usage_chunk(
    template: chat_pb2.StreamChatCompletionResponse | None, request: ChatRequest, output: str
) -> chat_pb2.StreamChatCompletionResponse:
    prompt = estimate_prompt_tokens(request)
    completion = estimate_text_tokens(output)
    usage = types_pb2.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion, estimated=True
    )
    if template is None:
        return chat_pb2.StreamChatCompletionResponse(usage=usage)
    return chat_pb2.StreamChatCompletionResponse(
        id=template.id, created=template.created, model=template.model, provider=template.provider, usage=usage
    )


def _estimate_completion_usage(response: chat_pb2.CreateChatCompletionResponse, request: ChatRequest) -> None:
    output = "".join(
        choice.message.content + "".join(c.function.name + c.function.arguments for c in choice.message.tool_calls)
        for choice in response.choices
    )
    prompt = estimate_prompt_tokens(request)
    completion = estimate_text_tokens(output)
    response.usage.CopyFrom(
        types_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion, estimated=True)
    )


def _metadata_value(metadata: tuple[tuple[str, str | bytes], ...] | list[tuple[str, str | bytes]], key: str) -> str:
    for name, value in metadata:
        if name == key and isinstance(value, str):
            return value[:128]
    return ""


def _new_request_id() -> str:
    return "req_" + secrets.token_hex(16)
