"""The gRPC server's own "shutting down" answer while the core drains.

grpc.aio's Server.stop(grace) stops taking calls at the transport at once: a
call already on its way is reset (RST_STREAM CANCEL), and clients see
CANCELLED, which they do not retry. So the core drains in two steps. First the
gate closes: the server still takes calls, and the gate answers each new one
UNAVAILABLE "the server is shutting down" (retryable, and what the in-process
channel answers too) while it counts the calls already running. Once those have
ended (or the grace is over) the core stops the server itself.

Health and reflection are not gated: health must keep answering NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc

SHUTTING_DOWN = "the server is shutting down"
# Services that keep answering while the gate is closed.
_UNGATED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class CallGate:
    """Counts the server's running calls; once closed, refuses new ones with UNAVAILABLE."""

    def __init__(self) -> None:
        self._closed = False
        self._running = 0
        self._idle: asyncio.Event | None = None

    @property
    def running(self) -> int:
        return self._running

    def close(self) -> None:
        """From now on new calls are refused; running ones go on."""
        self._closed = True

    async def wait_idle(self) -> None:
        """Returns once no counted call runs (at once if none does)."""
        while self._running:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The same handler, counted and refused by this gate."""
        if handler.request_streaming:  # no gated service takes a request stream
            return handler
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._gated_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._gated_unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _gated_unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def gated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self._closed:
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            self._running += 1
            try:
                return await behavior(request, context)
            finally:
                self._ended()

        return gated

    def _gated_stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def gated(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if self._closed:
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            self._running += 1
            try:
                # aclosing: when gRPC closes this generator, the servicer's own cleanup runs now, not at GC.
                async with contextlib.aclosing(behavior(request, context)) as messages:
                    async for message in messages:
                        yield message
            finally:
                self._ended()

        return gated

    def _ended(self) -> None:
        self._running -= 1
        if not self._running and self._idle is not None:
            self._idle.set()
            self._idle = None


class GatedServer:
    """Stands in for a grpc.aio.Server where generated add_*_to_server functions register
    handlers: each registration reaches the server with its handlers gated."""

    def __init__(self, server: grpc.aio.Server, gate: CallGate) -> None:
        self._server = server
        self._gate = gate

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        if f"/{service}.".startswith(_UNGATED_PREFIXES):
            self._server.add_registered_method_handlers(service, handlers)
            return
        gated = {name: self._gate.wrap(handler) for name, handler in handlers.items()}
        self._server.add_registered_method_handlers(service, gated)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GatedGeneric(handler, self._gate) for handler in handlers))


class _GatedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are gated (each wrapped once, then reused)."""

    def __init__(self, inner: grpc.GenericRpcHandler, gate: CallGate) -> None:
        self._inner = inner
        self._gate = gate
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = self._inner.service(handler_call_details)
        if handler is None or method.startswith(_UNGATED_PREFIXES):
            return handler
        wrapped = self._wrapped[method] = self._gate.wrap(handler)
        return wrapped
