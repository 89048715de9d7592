"""ChatService: adapts gRPC calls to the chat pipeline and its errors to rich statuses."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from gateway_core.auth import Authenticator
from gateway_core.chat.pipeline import ChatPipeline
from gateway_core.errors import GatewayError, Reason, abort
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc
from gateway_core.routing import Router

log = logging.getLogger("tollgate.chat")
_INTERNAL = GatewayError(Reason.INTERNAL, "internal error")


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """gateway.v1.ChatService over the chat pipeline."""

    def __init__(self, pipeline: ChatPipeline, authenticator: Authenticator, router: Router) -> None:
        self._pipeline = pipeline
        self._auth = authenticator
        self._router = router

    async def CreateChatCompletion(
        self, request: chat_pb2.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.CreateChatCompletionResponse:
        try:
            admission = await self._pipeline.admit(request, context.invocation_metadata() or (), context.time_remaining())
            if admission.limit_headers:
                await context.send_initial_metadata(admission.limit_headers)
            return await self._pipeline.complete(admission)
        except GatewayError as error:
            await abort(context, error)
        except Exception:  # noqa: BLE001 - the boundary: log once, answer generically
            log.exception("unexpected failure in CreateChatCompletion")
            await abort(context, _INTERNAL)
        raise AssertionError("unreachable")  # abort always raises

    async def StreamChatCompletion(
        self, request: chat_pb2.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        try:
            admission = await self._pipeline.admit(request, context.invocation_metadata() or (), context.time_remaining())
            if admission.limit_headers:
                await context.send_initial_metadata(admission.limit_headers)
            # aclosing: if gRPC closes this generator, the pipeline's own cleanup runs now, not at GC.
            async with contextlib.aclosing(self._pipeline.stream(admission)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except GatewayError as error:
            await abort(context, error)
        except Exception:  # noqa: BLE001 - the boundary: log once, answer generically
            log.exception("unexpected failure in StreamChatCompletion")
            await abort(context, _INTERNAL)

    async def ListModels(
        self, request: chat_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.ListModelsResponse:
        try:
            principal = await self._auth.authenticate(context.invocation_metadata() or ())
        except GatewayError as error:
            await abort(context, error)
            raise AssertionError("unreachable") from None
        return chat_pb2.ListModelsResponse(
            models=[
                chat_pb2.Model(id=m.name, created=self._router.loaded_at, owned_by=m.routes[0].provider)
                for m in self._router.visible_models(principal)
            ]
        )
