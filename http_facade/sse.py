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
) -> AsyncGenerator[bytes, None]:
    """SSE bytes for one streamed completion, ending with [DONE] or an in-band error.

    Owns the call: whatever way the iteration ends (done, error, disconnect,
    aclose), the call is cancelled, which is a no-op once it has finished.
    Heartbeats are EventStreamResponse's: reads here are plain awaits, with no
    timer or task per chunk.
    """
    encoder = ChunkEncoder(first, include_usage=include_usage)
    try:
        for event in encoder.events(first):
            yield event
        while (message := await call.read()) is not grpc.aio.EOF:
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


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response that stops, and closes its events, when the client leaves.

    Starlette only watches for disconnects on ASGI < 2.4 and uvicorn drops
    writes to a closed socket silently, so this listens for `http.disconnect`
    itself on every server. However it ends, it closes the events and calls
    on_close (which cancels the gRPC call, even if the events never started).

    While the events are silent for heartbeat_seconds it writes a `: ping`
    comment, so proxies and clients keep the connection. One timer per stream
    does this, re-armed from the time of the last write, instead of a timed
    wait around every read.
    """

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], object],
                 heartbeat_seconds: float) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self._events = events
        self._on_close = on_close
        self._heartbeat_seconds = heartbeat_seconds
        self._last_write = 0.0
        self._writing = False

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
        loop = asyncio.get_running_loop()
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._last_write = loop.time()
        heartbeat = asyncio.ensure_future(self._heartbeat(send))
        try:
            async for event in self._events:
                self._writing = True
                await send({"type": "http.response.body", "body": event, "more_body": True})
                self._writing = False
                self._last_write = loop.time()
        finally:
            # Stopped before the last message: nothing may be sent after it.
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _heartbeat(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            silent_for = loop.time() - self._last_write
            if silent_for < self._heartbeat_seconds:  # an event went out meanwhile: wait from its time
                await asyncio.sleep(self._heartbeat_seconds - silent_for)
                continue
            if self._writing:  # a write waits on a slow client; the connection is not idle
                await asyncio.sleep(self._heartbeat_seconds)
                continue
            self._writing = True
            await send({"type": "http.response.body", "body": PING, "more_body": True})
            self._writing = False
            self._last_write = loop.time()
