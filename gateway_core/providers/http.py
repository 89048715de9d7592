"""The one pooled HTTP client every provider shares, per-call timeouts, and the I/O
helpers every provider client uses (bounded reads, transport errors, trace headers).

The server creates the client at start and closes it at stop; nothing here
runs at import time. Per-call limits come from the provider's settings and the
caller's gRPC deadline (`UpstreamCall.timeout_seconds`).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import orjson

from gateway_core.config import ProviderSettings
from gateway_core.errors import Reason
from gateway_core.providers.base import ProviderError, UpstreamCall, malformed
from gateway_core.providers.http_client import CallTimeouts, UpstreamClient
from gateway_core.providers.http_errors import InvalidRequest, UpstreamTimeout, UpstreamTransportError
from gateway_core.providers.http_response import ResponseHeaders, UpstreamResponse
from gateway_core.providers.sse import SseEvent

# Connections kept per process. Streams hold a connection for their whole
# life, so the ceiling is generous; idle ones are dropped before typical
# upstream load balancers (60 s and more) would drop them under us.
MAX_CONNECTIONS = 1000
MAX_KEEPALIVE_CONNECTIONS = 200
KEEPALIVE_EXPIRY_SECONDS = 30.0
# Waiting for a free pooled connection, and sending the request body.
POOL_TIMEOUT_SECONDS = 10.0
WRITE_TIMEOUT_SECONDS = 60.0


def make_http_client(*, ssl_context: ssl.SSLContext | None = None) -> UpstreamClient:
    """The shared upstream client: pooled keep-alive HTTP/1.1 that never follows redirects
    and ignores proxy and .netrc settings from the environment (it reads none).

    ssl_context replaces the default verification (certifi's CA bundle), for tests.
    """
    return UpstreamClient(
        max_connections=MAX_CONNECTIONS,
        max_idle_connections=MAX_KEEPALIVE_CONNECTIONS,
        idle_expiry_seconds=KEEPALIVE_EXPIRY_SECONDS,
        ssl_context=ssl_context,
    )


def user_agent() -> str:
    """`tollgate/<version>` for upstream requests."""
    try:
        version = metadata.version("tollgate")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"tollgate/{version}"


@dataclass(frozen=True)
class Deadline:
    """When one upstream call must be over, on the monotonic clock (None: never)."""

    at: float | None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """The deadline `seconds` from now; None for a caller without a deadline."""
        return cls(None if seconds is None else time.monotonic() + max(seconds, 0.0))

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a deadline."""
        return None if self.at is None else max(self.at - time.monotonic(), 0.0)

    def loop_time(self) -> float | None:
        """The deadline on the running event loop's clock, for asyncio.timeout_at."""
        remaining = self.remaining()
        return None if remaining is None else asyncio.get_running_loop().time() + remaining


def call_timeout(settings: ProviderSettings, deadline: Deadline) -> CallTimeouts:
    """The client's limits for one call: the configured ones, and the caller's deadline.

    `read` is the longest silence while a response is awaited; every wait of
    the call (pool, connect, send, head, body) also ends at the deadline.
    """
    return CallTimeouts(
        connect=settings.connect_timeout_seconds,
        read=settings.read_timeout_seconds,
        write=WRITE_TIMEOUT_SECONDS,
        pool=POOL_TIMEOUT_SECONDS,
        deadline=deadline.loop_time(),
    )


# Bounds on what an upstream may send: an answer, and an error body (kept for logs only).
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
# Our request id travels upstream for correlation only when it is this plain.
CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# W3C Trace Context (https://www.w3.org/TR/trace-context/): the only client headers
# that reach an upstream. The patterns admit no CR/LF, so nothing can be smuggled
# into the request head; tracestate is capped at the spec's 512 characters.
TRACE_HEADER_PATTERNS = {
    "traceparent": re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(?:-[\x21-\x7e]*)?"),
    "tracestate": re.compile(r"[\x20-\x7e]{1,512}"),
}


def trace_headers(forwarded: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The well-formed W3C trace-context headers among forwarded; everything else is ignored.

    The servicer already forwards nothing else; this allow-list is kept here
    too so a future caller of UpstreamCall cannot widen what reaches upstreams.
    """
    allowed: dict[str, str] = {}
    for name, value in forwarded:
        pattern = TRACE_HEADER_PATTERNS.get(name.lower())
        if pattern is not None and pattern.fullmatch(value) and name.lower() not in allowed:
            allowed[name.lower()] = value
    return allowed


class StreamEvents:
    """An upstream stream's events, each read within the caller's total deadline, on one timer.

    asyncio.timeout_at around every event armed and cancelled a timer per chunk
    (~12 % of gateway CPU on long streams). Here one loop.call_at handle, armed
    at the first read, fires once at the deadline: it cancels the reading task
    only while that task waits for an event (then the read raises the timeout,
    exactly like asyncio.timeout_at); between reads it marks the stream expired
    and the next read fails at once. Idle and first-token timeouts are enforced
    elsewhere (the client's read timeout, the attempts). Use as a context manager so
    the timer is dropped with the stream.
    """

    __slots__ = ("_events", "_ready", "_deadline", "_timer", "_reader", "_expired", "_cancelled_reader")

    def __init__(self, events: AsyncIterator[SseEvent], deadline: Deadline) -> None:
        self._events = events
        # An SseStream hands out events already decoded without waiting: nothing to time or cancel then.
        self._ready: Callable[[], SseEvent | None] | None = getattr(events, "ready", None)
        self._deadline = deadline
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._expired = False
        self._cancelled_reader = False

    def __enter__(self) -> StreamEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def next(self) -> SseEvent | None:
        """The next event, or None at the end of the body; a timeout past the deadline."""
        if self._timer is None and self._deadline.at is not None and not self._expired:
            when = self._deadline.loop_time()
            assert when is not None
            self._timer = asyncio.get_running_loop().call_at(when, self._expire)
        if self._expired:
            raise transport_error(TimeoutError(), responded=True)
        if self._ready is not None and (event := self._ready()) is not None:
            return event
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._reader = task
        try:
            # __anext__ itself, not anext(): no wrapper object per event.
            return await self._events.__anext__()
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            # Ours alone (no other cancellation pending): the deadline passed while waiting.
            if self._cancelled_reader and task.uncancel() <= cancelling:
                raise transport_error(TimeoutError(), responded=True) from None
            raise
        except UpstreamTransportError as exc:
            raise transport_error(exc, responded=True) from None
        finally:
            self._reader = None

    def _expire(self) -> None:
        self._expired = True
        self._timer = None
        if self._reader is not None:
            self._cancelled_reader = True
            self._reader.cancel()


async def drain(response: UpstreamResponse, deadline: Deadline, seconds: float) -> None:
    """Reads what follows a stream's last event (normally just the body's end), unparsed, so the
    pooled connection can be reused instead of closed; gives up after `seconds` or at the deadline."""
    try:
        if response.fully_received:  # all of it is here: nothing to wait for, nothing to time
            while await response.next_chunk() is not None:
                pass
            return
        remaining = deadline.remaining()
        async with asyncio.timeout(seconds if remaining is None else min(seconds, remaining)):
            while await response.next_chunk() is not None:
                pass
    except (UpstreamTransportError, TimeoutError, ProviderError):
        pass  # the answer is complete; the connection just won't be reused


async def read_body(response: UpstreamResponse, limit: int, *, truncate: bool) -> bytes:
    """The body, up to limit bytes: cut there (error bodies) or refused (answers)."""
    body = await response.read(limit, truncate=truncate)
    if body is None:
        raise ProviderError(Reason.UPSTREAM_ERROR, "upstream response is too large")
    return body


async def read_within(response: UpstreamResponse, deadline: Deadline, limit: int, *, truncate: bool) -> bytes:
    """read_body within the caller's deadline (the client enforces it), transport failures mapped."""
    try:
        return await read_body(response, limit, truncate=truncate)
    except UpstreamTransportError as exc:
        raise transport_error(exc, responded=True) from None


async def read_json(response: UpstreamResponse, deadline: Deadline) -> Any:
    """A whole JSON answer: bounded, within the deadline, malformed if it is not JSON."""
    raw = await read_within(response, deadline, MAX_RESPONSE_BYTES, truncate=False)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise malformed("response body is not JSON") from None


def transport_error(exc: Exception, *, responded: bool) -> ProviderError:
    """A transport failure as a ProviderError; only the failure's kind is kept (for operator logs)."""
    kind = type(exc).__name__  # for operator logs
    if isinstance(exc, (UpstreamTimeout, TimeoutError)):
        return ProviderError(Reason.UPSTREAM_TIMEOUT, "upstream timed out", upstream_body=kind)
    if responded:
        return ProviderError(Reason.UPSTREAM_ERROR, "upstream connection broke off mid-response", upstream_body=kind)
    if isinstance(exc, InvalidRequest):
        return ProviderError(Reason.UPSTREAM_ERROR, "upstream request failed", upstream_body=kind)
    if isinstance(exc, UpstreamTransportError):
        return ProviderError(Reason.UPSTREAM_UNAVAILABLE, "upstream unreachable", upstream_body=kind)
    return ProviderError(Reason.UPSTREAM_ERROR, "upstream request failed", upstream_body=kind)


# Maps an upstream's error status, body and headers to the gateway's vocabulary (each provider's map_error).
ErrorMapper = Callable[[int, bytes, ResponseHeaders], ProviderError]


def request_headers(
    call: UpstreamCall, *, stream: bool, user_agent: str, auth: Mapping[str, str]
) -> dict[str, str]:
    """Upstream request headers, built from scratch: the provider's auth, our correlation
    id and, of the client's, only well-formed trace context, never over ours."""
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "user-agent": user_agent,
        # A compressed event stream can sit in a decoder's buffer; tokens should not.
        # Whole answers may come compressed (what httpx asked for before).
        "accept-encoding": "identity" if stream else "gzip, deflate",
    }
    headers.update(auth)
    if CORRELATION_ID.fullmatch(call.request_id):
        headers["x-request-id"] = call.request_id
    for name, value in trace_headers(call.forward_headers).items():
        headers.setdefault(name, value)
    return headers


async def send_json(
    http: UpstreamClient,
    *,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: CallTimeouts,
    map_error: ErrorMapper,
    secret: str,
) -> UpstreamResponse:
    """POSTs body and returns the response with its headers read, for the caller to close;
    a non-2xx answer is read (bounded), closed and raised as the provider's mapped error.

    The caller's deadline travels in `timeout` and bounds every wait, body reads included.
    """
    try:
        response = await http.post(url, body, headers, timeout)
    except UpstreamTransportError as exc:
        raise transport_error(exc, responded=False) from None
    if 200 <= response.status < 300:
        return response
    try:
        raw = await read_body(response, MAX_ERROR_BODY_BYTES, truncate=True)
    except UpstreamTransportError:
        raw = b""  # the status alone decides the mapping
    finally:
        await response.aclose()
    error = map_error(response.status, raw, response.headers)
    if secret:  # belt and braces: bodies may echo the key in forms scrub() misses
        error.upstream_body = error.upstream_body.replace(secret, "[redacted]")
    raise error
