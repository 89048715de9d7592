"""The upstream HTTP/1.1 client: a keep-alive connection pool and `post`.

Built for one job, provider calls: POST a JSON body, get a streamed
response. No redirects (a 3xx is just a status), no cookies, no proxies or
.netrc from the environment, HTTP/1.1 only. Idle connections are kept per
origin, newest reused first, dropped after `idle_expiry` seconds or as soon
as the server closes them (the Protocol is told; nothing is polled). TLS
verifies the certificate and the host name (SNI) against certifi's CA bundle,
as httpx does with trust_env off.

No request is ever retried here: a keep-alive connection the server closes
just as a request goes out fails with ServerDisconnected (before any answer),
which the routing layer may retry like any connect failure.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from gateway_core.providers.http_connection import Connection, Exchange
from gateway_core.providers.http_errors import (
    ClientClosed,
    ConnectFailed,
    ConnectTimeout,
    DeadlineExceeded,
    InvalidRequest,
    PoolTimeout,
)
from gateway_core.providers.http_response import UpstreamResponse

# Parsed URLs kept (providers use a handful; Gemini one per model).
_URL_CACHE_SIZE = 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(slots=True)
class CallTimeouts:
    """One call's limits, in seconds, and its total deadline on the event loop's clock (or None).

    read is the longest silence while a response (its head or more body) is
    awaited; write the longest stall while the request is sent; pool the
    longest wait for a free connection; connect covers TCP and TLS.
    """

    connect: float
    read: float
    write: float
    pool: float
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class _Target:
    """A parsed request URL: where to connect and what to put in the request line."""

    origin: tuple[str, str, int]  # scheme, host, port
    head_start: str  # "POST <path> HTTP/1.1\r\nhost: <host>\r\n"


def default_ssl_context() -> ssl.SSLContext:
    """Certificate and host-name verification against certifi's CA bundle, HTTP/1.1 by ALPN
    (what httpx's transport used, with trust_env off)."""
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


class UpstreamClient:
    """A pool of keep-alive connections to upstreams, shared by every provider. One per process.

    Create it inside the running event loop; `aclose()` closes every connection.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        max_idle_connections: int,
        idle_expiry_seconds: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._max_idle = max_idle_connections
        self._idle_expiry = idle_expiry_seconds
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], deque[Connection]] = {}
        self._idle_count = 0
        self._connections: set[Connection] = set()  # every counted connection, open or opening
        self._opening = 0  # slots taken by connects still under way
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._targets: dict[str, _Target] = {}
        self._closed = False

    @property
    def connection_count(self) -> int:
        """Connections open or opening (for tests and metrics)."""
        return len(self._connections) + self._opening

    @property
    def idle_count(self) -> int:
        """Open connections waiting in the pool."""
        return self._idle_count

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeouts: CallTimeouts,
                   ) -> UpstreamResponse:
        """POSTs body with headers (plus host and content-length) and returns once the
        response head is in; the body is then read from the response, which must be closed."""
        if self._closed:
            raise ClientClosed("the upstream client is closed")
        target = self._targets.get(url) or self._parse(url)
        head = _request_head(target.head_start, headers, len(body))
        connection = await self._acquire(target.origin, timeouts)
        try:
            connection.send(head, body, Exchange(timeouts.read, timeouts.write, timeouts.deadline))
            await connection.wait_sent()
            await connection.wait_headers()
        except BaseException:
            connection.close()
            self._release(connection)
            raise
        return UpstreamResponse(connection, self._release)

    async def aclose(self) -> None:
        """Closes every connection, idle or busy, and fails waiters for one."""
        self._closed = True
        for connection in list(self._connections):
            connection.close()
        self._idle.clear()
        self._idle_count = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ClientClosed("the upstream client is closed"))
        # Let the transports' connection_lost callbacks run before the loop may close.
        await asyncio.sleep(0)

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- the pool ---

    async def _acquire(self, origin: tuple[str, str, int], timeouts: CallTimeouts) -> Connection:
        loop = asyncio.get_running_loop()
        pool_until: float | None = None  # the pool timeout bounds all waiting for one request, in total
        while True:
            now = loop.time()
            if timeouts.deadline is not None and now >= timeouts.deadline:
                raise DeadlineExceeded("the caller's deadline passed")  # before anything is sent
            connection = self._take_idle(origin, now)
            if connection is not None:
                return connection
            if self.connection_count >= self._max_connections:
                self._evict_idle()
            if self.connection_count < self._max_connections:
                return await self._connect(loop, origin, timeouts)
            if self._closed:
                raise ClientClosed("the upstream client is closed")
            if pool_until is None:
                pool_until = loop.time() + timeouts.pool
            await self._wait_for_slot(loop, pool_until, timeouts.deadline)

    def _take_idle(self, origin: tuple[str, str, int], now: float) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be closed by now
            self._idle_count -= 1
            if connection.closed:
                continue
            if now - connection.idle_since > self._idle_expiry:
                self._forget(connection)
                connection.close()
                continue
            return connection
        return None

    def _evict_idle(self) -> None:
        """Closes the longest-idle connection of any origin, to make room for another origin's."""
        oldest: Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is not None:
            self._idle[oldest.origin].popleft()
            self._idle_count -= 1
            self._forget(oldest)
            oldest.close()

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, pool_until: float,
                             deadline: float | None) -> None:
        """Waits until a connection is released or closed (then the caller looks again)."""
        waiter = loop.create_future()
        self._waiters.append(waiter)
        deadline_first = deadline is not None and deadline < pool_until
        try:
            async with asyncio.timeout_at(deadline if deadline_first else pool_until):
                await waiter
        except TimeoutError:
            if deadline_first:
                raise DeadlineExceeded("the caller's deadline passed") from None
            raise PoolTimeout("no upstream connection became free in time") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken, then cancelled: the free connection is the next waiter's
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int],
                       timeouts: CallTimeouts) -> Connection:
        scheme, host, port = origin
        limit = timeouts.connect
        deadline_first = timeouts.deadline is not None and timeouts.deadline - loop.time() < limit
        if deadline_first:
            assert timeouts.deadline is not None
            limit = timeouts.deadline - loop.time()
        self._opening += 1
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                if scheme == "https":
                    if self._ssl is None:
                        self._ssl = default_ssl_context()
                    _, connection = await loop.create_connection(
                        lambda: Connection(loop, origin, self._on_closed), host, port,
                        ssl=self._ssl, server_hostname=host, ssl_handshake_timeout=max(limit, 0.001),
                    )
                else:
                    _, connection = await loop.create_connection(
                        lambda: Connection(loop, origin, self._on_closed), host, port,
                    )
        except TimeoutError:
            if deadline_first:
                raise DeadlineExceeded("the caller's deadline passed") from None
            raise ConnectTimeout("connecting to the upstream took too long") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectFailed(f"could not connect to the upstream ({type(exc).__name__})") from None
        finally:
            self._opening -= 1
        if connection.closed:  # lost between connect and now
            raise ConnectFailed("could not connect to the upstream (closed at once)")
        self._connections.add(connection)
        if self._closed:
            connection.close()
            raise ClientClosed("the upstream client is closed")
        return connection

    def _release(self, connection: Connection) -> None:
        """Back to the idle pool if it can carry another request; otherwise it is being closed."""
        if connection.reusable and not self._closed and self._idle_count < self._max_idle:
            connection.finish_exchange()
            idle = self._idle.get(connection.origin)
            if idle is None:
                idle = self._idle[connection.origin] = deque()
            idle.append(connection)
            self._idle_count += 1
            self._wake_one()
        elif not connection.closed:
            connection.close()

    def _on_closed(self, connection: Connection) -> None:
        """connection_lost: the slot is free (and an idle connection leaves the pool)."""
        if not connection.counted:
            return
        idle = self._idle.get(connection.origin)
        if idle is not None and connection in idle:
            idle.remove(connection)
            self._idle_count -= 1
        self._forget(connection)

    def _forget(self, connection: Connection) -> None:
        if connection.counted:
            connection.counted = False
            self._connections.discard(connection)
            self._wake_one()

    def _parse(self, url: str) -> _Target:
        try:
            parts = urlsplit(url)
            scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
            if host and not host.isascii():
                host = host.encode("idna").decode("ascii")
        except (ValueError, UnicodeError):
            raise InvalidRequest("the upstream URL is not a valid http(s) URL") from None
        if scheme not in _DEFAULT_PORTS or not host or parts.username is not None:
            raise InvalidRequest("the upstream URL is not a plain http(s) URL")
        port = port or _DEFAULT_PORTS[scheme]
        shown = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            shown = f"{shown}:{port}"
        path = quote(parts.path or "/", safe="/:@!$&'()*+,;=-._~%")
        if parts.query:
            path = f"{path}?{quote(parts.query, safe='/:@!$&()*+,;=-._~%?')}"
        target = _Target((scheme, host, port), f"POST {path} HTTP/1.1\r\nhost: {shown}\r\n")
        if len(self._targets) >= _URL_CACHE_SIZE:
            self._targets.clear()
        self._targets[url] = target
        return target


def _request_head(start: str, headers: Mapping[str, str], length: int) -> bytes:
    """The request head, refusing any header that could split it (CR, LF, NUL) or is not ASCII."""
    lines = [start]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"content-length: {length}\r\n\r\n")
    head = "".join(lines)
    # Every line break must be one of ours: one per header plus the blank line ending the head.
    if head.count("\n") != len(headers) + 4 or head.count("\r") != len(headers) + 4 or "\0" in head:
        raise InvalidRequest("an upstream request header holds a line break or NUL")
    try:
        return head.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidRequest("an upstream request header is not ASCII") from None
