"""Writing one streamed completion as server-sent events, in the request's own task.

The core call is read and its messages written straight to ASGI `send` by one
plain loop in one coroutine: no async generator, no task per stream for the
writing, no timer work per chunk. Messages the in-process core has already
produced when one is written (chunks that came in one upstream read) go out
with it in one write, so a burst costs one socket write, not one per chunk;
nothing that has not arrived yet is ever waited for. Around it, one
DisconnectWatch cancels the call when the client leaves (the pending read then
raises CancelledError), and the facade's one heartbeat timer (a DeadlineTimer
shared by every stream, so a stream adds a dict entry, not a timer of its own)
writes a `: ping` comment while the core is silent for heartbeat_seconds, so
proxies and clients keep the connection.

Everything here happens after the 200 has been decided (routes wait for the
core's first message): a failure becomes an in-band `data: {"error": ...}`
event, then the stream ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from starlette.types import Message, Receive, Send

from gateway_core.deadline_timer import EARLY_SECONDS, DeadlineTimer
from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from http_facade.convert_response import ChunkEncoder
from http_facade.disconnect import DisconnectWatch, cancelled_by_disconnect
from http_facade.edge_cycle import BODY_FOLLOWS
from http_facade.errors import ApiError, from_rpc_error
from http_facade.sse import DONE, PING, SSE_HEADERS, StreamCall

_SERVER_ERROR = ApiError(500, "The server had an error while processing your request.", type="server_error")
_SERVER_ERROR_EVENT = b"data: " + _SERVER_ERROR.body() + b"\n\n"
# Events already produced are written together up to about this many bytes; the rest go in the next write.
BATCH_BYTES = 64 * 1024
EVENT_STREAM_HEADERS: list[tuple[bytes, bytes]] = [
    *((k.encode(), v.encode()) for k, v in SSE_HEADERS.items()),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]


class _Heartbeat:
    """`: ping` after heartbeat_seconds of silence, for one stream, on the facade's shared timer.

    The writer only records the time of its last write (`last_write`); when
    the stream's deadline on the shared timer comes, it is set again from that
    time if something was written meanwhile, so a busy stream costs nothing
    per chunk and a stream's start and end only add and remove a dict entry.
    A ping is written by a short-lived task, and never while a write is
    waiting on a slow client (the connection is not idle then).
    """

    __slots__ = ("_send", "_seconds", "_timer", "_loop", "last_write", "writing", "_pinging", "_stopped")

    def __init__(self, send: Send, seconds: float, timer: DeadlineTimer) -> None:
        self._send = send
        self._seconds = seconds
        self._timer = timer
        self._loop = asyncio.get_running_loop()
        self.last_write = self._loop.time()
        self.writing = False
        self._pinging: asyncio.Task[None] | None = None
        self._stopped = False
        timer.add(self, self.last_write + seconds, self._fire)

    def time(self) -> float:
        """The event loop's time (what last_write is set from)."""
        return self._loop.time()

    def _fire(self) -> None:
        now = self._loop.time()
        due = self.last_write + self._seconds
        if now + EARLY_SECONDS >= due:
            if not self.writing and self._pinging is None:
                self._pinging = self._loop.create_task(self._ping())
            due = now + self._seconds  # after a ping, or a write waiting on a slow client: a period later
        self._timer.add(self, due, self._fire)

    async def _ping(self) -> None:
        self.writing = True
        try:
            await self._send({"type": "http.response.body", "body": PING, "more_body": True})
        except OSError:
            pass  # the client is gone; the disconnect watch ends the stream
        finally:
            self.writing = False
            self.last_write = self._loop.time()
            self._pinging = None

    def stop(self) -> asyncio.Task[None] | None:
        """No new ping after this; returns the ping being written, if one is, for the caller to wait for
        (so nothing follows the end). Once stopped, stopping again only returns that ping."""
        if not self._stopped:
            self._stopped = True
            self._timer.remove(self)
        return self._pinging


async def stream_chat(call: StreamCall, first: pb.StreamChatCompletionResponse, *, include_usage: bool,
                      heartbeat_seconds: float, heartbeats: DeadlineTimer, headers: Mapping[str, str],
                      receive: Receive, send: Send, watch: DisconnectWatch | None = None) -> None:
    """Sends the 200 and every event of call (first already read), ending with [DONE] or an in-band error.

    Owns the call: however the stream ends (done, error, client gone, this task
    cancelled by a shutdown cut), the call is cancelled, a no-op once finished.
    A client that disconnects ends it quietly; the response is then left
    unfinished, which the server expects of a gone client. `watch`, if given,
    is the caller's DisconnectWatch for this call (cancelling it), used
    instead of starting another; it is stopped here either way. heartbeats is
    the facade's timer for every stream's pings.
    """
    if watch is None:
        watch = DisconnectWatch(receive, call.cancel)
    start_headers = EVENT_STREAM_HEADERS.copy()
    if headers:
        start_headers += ((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    # The first events are written in this same step (nothing below waits before that write).
    start: Message = {"type": "http.response.start", "status": 200, "headers": start_headers, BODY_FOLLOWS: True}
    # Made at the first wait for the core: a stream whose every message is there at once (a short answer
    # that arrived whole) never waits, so it needs no ping and no entry on the heartbeat timer.
    heartbeat: _Heartbeat | None = None
    try:
        await send(start)
        encoder = ChunkEncoder(first, include_usage=include_usage)
        read_ready: Callable[[], Any] | None = getattr(call, "read_nowait", None)
        message: Any = first
        head_held = True  # until the first body write, which BODY_FOLLOWS promised for this step
        while True:
            data, last = _ready_events(encoder, message, read_ready)
            if last is not None:
                break
            if data or head_held:
                head_held = False
                if heartbeat is None:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                else:
                    heartbeat.writing = True
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    heartbeat.writing = False
                    heartbeat.last_write = heartbeat.time()
            if heartbeat is None:  # silence is timed from here (just after the last write)
                heartbeat = _Heartbeat(send, heartbeat_seconds, heartbeats)
            try:
                message = await call.read()
            except grpc.aio.AioRpcError as exc:
                last = b"data: " + from_rpc_error(exc).body() + b"\n\n"
                break
            except Exception:  # not CancelledError (a BaseException): the client left, see below
                last = _SERVER_ERROR_EVENT
                break
            if message is grpc.aio.EOF:
                last = DONE
                break
        if heartbeat is not None:
            pinging = heartbeat.stop()
            if pinging is not None:
                await asyncio.gather(pinging, return_exceptions=True)
        await send({"type": "http.response.body", "body": last, "more_body": False})
    except asyncio.CancelledError:
        if not cancelled_by_disconnect(watch):
            raise
    except OSError:
        pass  # some servers raise on writing to a closed connection: the client is gone
    finally:
        watch.stop()
        call.cancel()
        if heartbeat is not None:
            pinging = heartbeat.stop()
            if pinging is not None:
                await asyncio.gather(pinging, return_exceptions=True)


def _ready_events(encoder: ChunkEncoder, message: Any, read_ready: Callable[[], Any] | None) -> tuple[bytes, bytes | None]:
    """(events to write now, None) for message and the messages already produced after it; or
    (b"", what ends the stream: those events, then [DONE] or an error) once the end is among them.

    Messages the core has already produced (an in-process call's read_nowait)
    join message's events in one write: chunks that arrived together from the
    upstream leave together, and a message that is not there yet is never
    waited for, so nothing is held back.
    """
    try:
        data = encoder.encode(message)
    except Exception:
        # A chunk we could not encode: the client still gets a well-formed end.
        return b"", _SERVER_ERROR_EVENT
    if read_ready is None:
        return data, None
    parts = [data]
    size = len(data)
    while size < BATCH_BYTES:
        try:
            message = read_ready()
        except grpc.aio.AioRpcError as exc:
            return b"", b"".join(parts) + b"data: " + from_rpc_error(exc).body() + b"\n\n"
        except Exception:  # not CancelledError (a BaseException): the client left, see stream_chat
            return b"", b"".join(parts) + _SERVER_ERROR_EVENT
        if message is None:
            break
        if message is grpc.aio.EOF:
            return b"", b"".join(parts) + DONE
        try:
            data = encoder.encode(message)
        except Exception:
            return b"", b"".join(parts) + _SERVER_ERROR_EVENT
        parts.append(data)
        size += len(data)
    return (parts[0] if len(parts) == 1 else b"".join(parts)), None
