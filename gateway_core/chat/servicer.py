"""ChatService: adapts gRPC calls to the chat pipeline and its errors to rich statuses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import grpc
from opentelemetry import trace

from gateway_core.auth import Authenticator
from gateway_core.chat.pipeline import ChatPipeline
from gateway_core.errors import GatewayError, Reason, abort
from gateway_core.handoff import EMPTY
from gateway_core.observability.chat_calls import CallObserver, observe_call
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc
from gateway_core.routing import Router

log = logging.getLogger("tollgate.chat")
_INTERNAL = GatewayError(Reason.INTERNAL, "internal error")


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """gateway.v1.ChatService over the chat pipeline."""

    def __init__(
        self,
        pipeline: ChatPipeline,
        authenticator: Authenticator,
        router: Router,
        *,
        tracer: trace.Tracer | None = None,
        known_models: frozenset[str] = frozenset(),
    ) -> None:
        self._pipeline = pipeline
        self._auth = authenticator
        self._router = router
        self._tracer = tracer
        # Metric labels name only configured models; anything else a client sends is "unknown".
        self._known_models = known_models

    async def CreateChatCompletion(
        self, request: chat_pb2.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.CreateChatCompletionResponse:
        metadata = context.invocation_metadata() or ()
        with self._observe("unary", request.model, metadata) as observer:
            try:
                # One call for admit + complete: the pipeline runs hold, upstream and settle in one task.
                response = await self._pipeline.unary(request, metadata, context.time_remaining(), observer.admitted)
                if headers := _limit_headers(observer):  # no coroutine for the usual call without limits
                    await context.send_initial_metadata(headers)
                observer.usage(response.usage.prompt_tokens, response.usage.completion_tokens)
                return response
            except GatewayError as error:
                observer.failed(error)
                await _send_limit_headers(context, observer)
                await abort(context, error)
            except Exception:  # noqa: BLE001 - the boundary: log once, answer generically
                log.exception("unexpected failure in CreateChatCompletion")
                observer.crashed()
                await _send_limit_headers(context, observer)
                await abort(context, _INTERNAL)
        raise AssertionError("unreachable")  # abort always raises

    async def StreamChatCompletion(
        self, request: chat_pb2.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        metadata = context.invocation_metadata() or ()
        headers_sent = False
        with self._observe("stream", request.model, metadata) as observer:
            try:
                run = await self._pipeline.start_stream(
                    request, metadata, context.time_remaining(), observer.admitted)
                try:
                    # Pulled from the run directly: a queued chunk costs no coroutine (poll), only a wait does.
                    while True:
                        chunk = run.poll()
                        if chunk is EMPTY:
                            chunk = await run.wait()
                        if chunk is None:
                            break
                        if not headers_sent:  # the first chunk: the hold is written, its limit headers go first
                            headers_sent = True
                            if headers := _limit_headers(observer):  # no coroutine for a call without limits
                                await context.send_initial_metadata(headers)
                        if chunk.HasField("usage"):  # type: ignore[union-attr]
                            observer.usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)  # type: ignore[union-attr]
                        yield chunk  # type: ignore[misc]
                finally:
                    run.close()  # the stream ended for us, or we left: the run finishes and settles alone
            except GatewayError as error:
                observer.failed(error)
                if not headers_sent:  # admitted, then failed before any chunk: the headers go with the error
                    await _send_limit_headers(context, observer)
                await abort(context, error)
            except Exception:  # noqa: BLE001 - the boundary: log once, answer generically
                log.exception("unexpected failure in StreamChatCompletion")
                observer.crashed()
                if not headers_sent:
                    await _send_limit_headers(context, observer)
                await abort(context, _INTERNAL)

    def _observe(self, mode: str, model: str, metadata: Sequence[tuple[str, Any]]) -> ContextManager[CallObserver]:
        """Metrics, the access-log line and (with tracing) the core span of one chat call."""
        return observe_call(
            self._tracer, mode=mode, requested_model=model, known_models=self._known_models, metadata=metadata
        )

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


def _limit_headers(observer: CallObserver) -> Sequence[tuple[str, str]]:
    """x-ratelimit-* of an admitted call (none if it was not admitted or has no limits)."""
    admission = observer.admission
    return admission.limit_headers if admission is not None else ()


async def _send_limit_headers(context: grpc.aio.ServicerContext, observer: CallObserver) -> None:
    """x-ratelimit-* of an admitted call, as initial metadata ahead of its answer, first chunk or error."""
    if headers := _limit_headers(observer):
        await context.send_initial_metadata(headers)
