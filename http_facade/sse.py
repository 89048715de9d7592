"""Server-sent events for streamed completions: gRPC server stream in, OpenAI SSE out.

The first gRPC message is read before the HTTP response starts (see routes),
so everything here happens after a 200: a failure becomes an in-band
`data: {"error": ...}` event, a silent core gets `: ping` comments so proxies
and clients keep the connection, and a client disconnect cancels the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import TypeAlias, cast

import grpc
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from http_facade.convert_response import ChunkEncoder
from http_facade.disconnect import wait_for_disconnect
from http_facade.errors import ApiError, from_rpc_error

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
SSE_HEADERS: Mapping[str, str] = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_SERVER_ERROR = ApiError(500, "The server had an error while processing your request.", type="server_error")

StreamCall: TypeAlias = grpc.aio.UnaryStreamCall[
    pb.StreamChatCompletionRequest, pb.StreamChatCompletionResponse
]


async def chat_events(
    call: StreamCall,
    first: pb.StreamChatCompletionResponse,
    *,
    include_usage: bool,
    heartbeat_seconds: float,
) -> AsyncGenerator[bytes, None]:
    """SSE bytes for one streamed completion, ending with [DONE] or an in-band error.

    Owns the call: whatever way the iteration ends (done, error, disconnect,
    aclose), the call is cancelled, which is a no-op once it has finished.
    """
    encoder = ChunkEncoder(first, include_usage=include_usage)
    read: asyncio.Future[object] | None = None
    try:
        for event in encoder.events(first):
            yield event
        while True:
            read = asyncio.ensure_future(call.read())
            # Wait on the same read across pings: cancelling a read cancels the call.
            while not (await asyncio.wait((read,), timeout=heartbeat_seconds))[0]:
                yield PING
            message = read.result()
            if message is grpc.aio.EOF:
                break
            for event in encoder.events(cast(pb.StreamChatCompletionResponse, message)):
                yield event
        yield DONE
    except grpc.aio.AioRpcError as exc:
        yield b"data: " + from_rpc_error(exc).body() + b"\n\n"
    except Exception:
        # A chunk we could not encode: the client still gets a well-formed end.
        yield b"data: " + _SERVER_ERROR.body() + b"\n\n"
    finally:
        call.cancel()
        if read is not None:
            if not read.done():
                read.cancel()
            elif not read.cancelled():
                read.exception()  # retrieved, so asyncio does not log it as lost


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response that stops, and closes its events, when the client leaves.

    Starlette only watches for disconnects on ASGI < 2.4 and uvicorn drops
    writes to a closed socket silently, so this listens for `http.disconnect`
    itself on every server. However it ends, it closes the events and calls
    on_close (which cancels the gRPC call, even if the events never started).
    """

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], object]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(send))
        disconnect = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait((stream, disconnect), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._on_close()
            stream.cancel()
            disconnect.cancel()
            await asyncio.gather(stream, disconnect, return_exceptions=True)
            await self._events.aclose()
        if stream.done() and not stream.cancelled():
            error = stream.exception()
            if error is not None and not isinstance(error, OSError):
                raise error

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for event in self._events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
