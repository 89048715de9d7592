"""The upstream HTTP client (providers/http_client.py and friends) against real local servers.

Every scenario runs twice, on asyncio's own event loop and on uvloop (what
`tollgate serve` runs on), against raw asyncio servers on 127.0.0.1 that
write exact bytes: keep-alive, both body framings, every timeout, caps,
backpressure, cancellation, servers that close or reset at awkward moments,
and TLS with a throwaway CA (trustme).
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import trustme
import uvloop

from gateway_core.errors import Reason
from gateway_core.providers.http import make_http_client, transport_error
from gateway_core.providers.http_client import CallTimeouts, UpstreamClient
from gateway_core.providers.http_errors import (
    ConnectFailed,
    ConnectTimeout,
    DeadlineExceeded,
    InvalidRequest,
    PoolTimeout,
    ReadTimeout,
    ResponseBroken,
    ServerDisconnected,
    UpstreamTransportError,
    WriteTimeout,
)
from gateway_core.providers.sse import iter_sse

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUTS = CallTimeouts(connect=5.0, read=5.0, write=5.0, pool=5.0)
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Runs a scenario to the end on a fresh event loop of the parametrized kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(scenario: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.run(asyncio.wait_for(scenario, 30))

    return runner


class Server:
    """A raw TCP (or TLS) server on 127.0.0.1 playing `handler` on every connection it accepts."""

    def __init__(self, handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.closed = 0  # connections whose handler is over
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1/chat/completions"

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            self.closed += 1
            writer.close()  # after what was written has gone out (a handler that means to reset aborts)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request off the connection: its head and its (Content-Length) body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answer_every_request(response: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(response)
            await writer.drain()

    return handler


async def post(client: UpstreamClient, url: str, body: bytes = b"{}", timeouts: CallTimeouts = TIMEOUTS,
               headers: dict[str, str] | None = None) -> Any:
    return await client.post(url, body, headers or {"content-type": "application/json"}, timeouts)


async def body_of(response: Any, limit: int = 1 << 26) -> bytes:
    body = await response.read(limit, truncate=False)
    await response.aclose()
    assert body is not None
    return bytes(body)


def test_keep_alive_carries_many_requests_on_one_connection(run: Any) -> None:
    async def scenario() -> None:
        heads: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head, body = await read_request(reader)
                heads.append(head)
                assert body == b'{"n":1}'
                writer.write(OK)

        async with Server(handler) as server, make_http_client() as client:
            for _ in range(10):
                response = await post(client, server.url, b'{"n":1}', headers={"x-test": "yes"})
                assert response.status == 200 and response.headers["Content-Type"] == "application/json"
                assert await body_of(response) == b'{"ok":true}'
            assert server.connections == 1 and client.connection_count == 1 and client.idle_count == 1
        first = heads[0].decode()
        assert first.startswith("POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:")
        assert "\r\nx-test: yes\r\n" in first and "\r\ncontent-length: 7\r\n" in first

    run(scenario())


def test_chunked_and_content_length_bodies_and_until_close(run: Any) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n")
    until_close = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it until EOF"

    async def scenario() -> None:
        async with Server(answer_every_request(chunked)) as server, make_http_client() as client:
            response = await post(client, server.url)
            assert await body_of(response) == b"hello world"
            assert "x-trailer" not in response.headers and "transfer-encoding" in response.headers
            assert await body_of(await post(client, server.url)) == b"hello world"
            assert server.connections == 1  # a chunked body leaves the connection reusable

        async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(until_close)
            await writer.drain()

        async with Server(once) as server, make_http_client() as client:
            assert await body_of(await post(client, server.url)) == b"all of it until EOF"
            assert await body_of(await post(client, server.url)) == b"all of it until EOF"
            assert server.connections == 2  # a body ended by EOF ends its connection too

    run(scenario())


def test_connection_close_and_informational_responses(run: Any) -> None:
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi"
    early_hints = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK

    async def scenario() -> None:
        async with Server(answer_every_request(closing)) as server, make_http_client() as client:
            for _ in range(2):
                assert await body_of(await post(client, server.url)) == b"hi"
            assert server.connections == 2  # "connection: close" is honoured
        async with Server(answer_every_request(early_hints)) as server, make_http_client() as client:
            response = await post(client, server.url)
            assert response.status == 200 and "link" not in response.headers
            assert await body_of(response) == b'{"ok":true}'
            assert await body_of(await post(client, server.url)) == b'{"ok":true}'
            assert server.connections == 1

    run(scenario())


def test_bytes_after_a_whole_response_keep_the_response_but_end_the_connection(run: Any) -> None:
    async def scenario() -> None:
        for extra in (OK, b"\x00garbage\r\n\r\n"):  # a second answer to one request, or junk
            async with Server(answer_every_request(OK + extra)) as server, make_http_client() as client:
                for _ in range(2):
                    assert await body_of(await post(client, server.url)) == b'{"ok":true}'
                assert server.connections == 2

    run(scenario())


def test_an_idle_connection_closed_by_the_server_is_replaced_without_error(run: Any) -> None:
    async def scenario() -> None:
        async def answer_once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()

        async with Server(answer_once_then_close) as server, make_http_client() as client:
            assert await body_of(await post(client, server.url)) == b'{"ok":true}'
            for _ in range(100):  # the FIN arrives; the pool hears of it from the loop, polling nothing
                if client.connection_count == 0:
                    break
                await asyncio.sleep(0.01)
            assert client.connection_count == 0 and client.idle_count == 0
            assert await body_of(await post(client, server.url)) == b'{"ok":true}'
            assert server.connections == 2

    run(scenario())


def test_a_keep_alive_connection_closed_as_the_request_goes_out_is_a_retryable_disconnect(run: Any) -> None:
    async def scenario() -> None:
        async def answer_once_then_drop_the_next(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(OK)
            await read_request(reader)  # the server's idle timer fired just as this arrived

        async with Server(answer_once_then_drop_the_next) as server, make_http_client() as client:
            assert await body_of(await post(client, server.url)) == b'{"ok":true}'
            with pytest.raises(ServerDisconnected) as caught:
                await post(client, server.url)
            error = transport_error(caught.value, responded=False)
            assert error.reason == Reason.UPSTREAM_UNAVAILABLE  # routing may try again
            assert "127.0.0.1" not in str(caught.value) and str(server.port) not in str(caught.value)
            assert await body_of(await post(client, server.url)) == b'{"ok":true}'  # a fresh one works

    run(scenario())


def test_a_reset_mid_body_is_a_broken_response(run: Any) -> None:
    async def scenario() -> None:
        async def half_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 40)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()

        async with Server(half_then_reset) as server, make_http_client() as client:
            response = await post(client, server.url)
            with pytest.raises(ResponseBroken) as caught:
                await response.read(1000, truncate=False)
            assert transport_error(caught.value, responded=True).reason == Reason.UPSTREAM_ERROR
            await response.aclose()
            await asyncio.sleep(0.05)
            assert client.connection_count == 0

    run(scenario())


def test_connect_failures_and_connect_timeout(run: Any) -> None:
    async def scenario() -> None:
        async def never_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(10)

        async with make_http_client() as client:
            async with Server(never_handshake) as server:
                refused_port = server.port
            with pytest.raises(ConnectFailed):
                await post(client, f"http://127.0.0.1:{refused_port}/v1")
            async with Server(never_handshake) as server:  # plain TCP that never answers a TLS hello
                quick = CallTimeouts(connect=0.3, read=5.0, write=5.0, pool=5.0)
                started = asyncio.get_running_loop().time()
                with pytest.raises(ConnectTimeout):
                    await post(client, f"https://127.0.0.1:{server.port}/v1", timeouts=quick)
                assert asyncio.get_running_loop().time() - started < 3
            assert client.connection_count == 0

    run(scenario())


def test_read_timeout_before_the_head_and_between_body_bytes(run: Any) -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await asyncio.sleep(10)

        async def stalls_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(6):  # a byte every 0.1 s: slower than nothing, faster than the read timeout
                writer.write(b"1\r\nx\r\n")
                await asyncio.sleep(0.1)
            await asyncio.sleep(10)

        quick = CallTimeouts(connect=5.0, read=0.3, write=5.0, pool=5.0)
        async with make_http_client() as client:
            async with Server(silent) as server:
                with pytest.raises(ReadTimeout):
                    await post(client, server.url, timeouts=quick)
            async with Server(stalls_mid_body) as server:
                response = await post(client, server.url, timeouts=quick)
                received = b""
                with pytest.raises(ReadTimeout):
                    async for chunk in response:
                        received += chunk
                assert received == b"x" * 6  # the slow bytes never tripped the idle timeout
                await response.aclose()

    run(scenario())


def test_the_deadline_bounds_the_whole_exchange(run: Any) -> None:
    async def scenario() -> None:
        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            while True:
                writer.write(b"1\r\nx\r\n")
                await asyncio.sleep(0.05)

        async with Server(trickle) as server, make_http_client() as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            timeouts = CallTimeouts(connect=5.0, read=5.0, write=5.0, pool=5.0, deadline=started + 0.4)
            response = await post(client, server.url, timeouts=timeouts)
            with pytest.raises(DeadlineExceeded):
                async for _ in response:
                    pass
            assert 0.3 < loop.time() - started < 2
            await response.aclose()
            past = CallTimeouts(connect=5.0, read=5.0, write=5.0, pool=5.0, deadline=loop.time() - 1)
            with pytest.raises(DeadlineExceeded):
                await post(client, server.url, timeouts=past)
            assert server.connections == 1  # a request already out of time is never sent

    run(scenario())


def test_write_timeout_when_the_server_stops_reading(run: Any) -> None:
    async def scenario() -> None:
        async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            await asyncio.sleep(10)

        quick = CallTimeouts(connect=5.0, read=5.0, write=0.3, pool=5.0)
        async with Server(never_reads) as server, make_http_client() as client:
            with pytest.raises(WriteTimeout):
                await post(client, server.url, b"x" * (64 * 1024 * 1024), timeouts=quick)
            assert transport_error(WriteTimeout("t"), responded=False).reason == Reason.UPSTREAM_TIMEOUT

    run(scenario())


def test_pool_limit_and_pool_timeout(run: Any) -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
                await release.wait()
                writer.write(b"cd")

        client = UpstreamClient(max_connections=1, max_idle_connections=1, idle_expiry_seconds=30)
        async with Server(slow_body) as server, client:
            busy = await post(client, server.url)
            quick = CallTimeouts(connect=5.0, read=5.0, write=5.0, pool=0.2)
            with pytest.raises(PoolTimeout):
                await post(client, server.url, timeouts=quick)
            waiting = asyncio.create_task(post(client, server.url))
            await asyncio.sleep(0.05)
            assert not waiting.done() and client.connection_count == 1
            release.set()
            assert await body_of(busy) == b"abcd"
            assert await body_of(await waiting) == b"abcd"  # handed the connection the first released
            assert server.connections == 1

    run(scenario())


def test_oversized_bodies_are_capped(run: Any) -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 5000000\r\n\r\n" + b"y" * 5_000_000

    async def scenario() -> None:
        async with Server(answer_every_request(big)) as server, make_http_client() as client:
            response = await post(client, server.url)
            assert await response.read(1000, truncate=False) is None
            response = await post(client, server.url)
            assert await response.read(1000, truncate=True) == b"y" * 1000
            await asyncio.sleep(0.05)
            assert client.idle_count == 0 and server.connections == 2  # cut bodies close their connection

    run(scenario())


def test_compressed_answers_are_decoded_and_capped_after_decoding(run: Any) -> None:
    text = b'{"answer":"' + b"z" * 100_000 + b'"}'
    packed = gzip.compress(text)
    deflated = zlib.compress(text)

    def answer(encoding: bytes, body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-encoding: %s\r\ncontent-length: %d\r\n\r\n%s" % (
            encoding, len(body), body)

    async def scenario() -> None:
        async with make_http_client() as client:
            for encoding, body in ((b"gzip", packed), (b"deflate", deflated), (b"deflate", deflated[2:-4])):
                async with Server(answer_every_request(answer(encoding, body))) as server:
                    assert await body_of(await post(client, server.url)) == text
                    response = await post(client, server.url)
                    assert await response.read(50_000, truncate=False) is None  # a bomb never inflates past the cap
            async with Server(answer_every_request(answer(b"br", b"xx"))) as server:
                with pytest.raises(UpstreamTransportError):
                    await post(client, server.url)

    run(scenario())


def test_a_lagging_consumer_stops_the_socket_being_read(run: Any) -> None:
    size = 32 * 1024 * 1024

    async def scenario() -> None:
        sent_all = asyncio.Event()

        async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            for _ in range(size // 65536):
                writer.write(b"f" * 65536)
                await writer.drain()
            sent_all.set()

        async with Server(firehose) as server, make_http_client() as client:
            response = await post(client, server.url)
            await asyncio.sleep(0.3)
            assert not sent_all.is_set()  # the client stopped reading: the server is held back
            assert len(await body_of(response)) == size
            assert sent_all.is_set()

    run(scenario())


def test_cancelling_a_read_mid_stream_closes_the_connection(run: Any) -> None:
    async def scenario() -> None:
        gone = asyncio.Event()

        async def endless_events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            try:
                while True:
                    writer.write(b"f\r\ndata: {\"a\":1}\n\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.02)
            finally:
                gone.set()

        async with Server(endless_events) as server, make_http_client() as client:
            response = await post(client, server.url)

            async def consume() -> None:
                async for _ in iter_sse(response):
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await response.aclose()
            await asyncio.wait_for(gone.wait(), 5)  # the server saw the connection go
            assert client.idle_count == 0
            second = await post(client, server.url)
            assert server.connections == 2  # never handed back half-read
            await second.aclose()

    run(scenario())


def test_headers_that_could_split_the_request_are_refused_before_connecting(run: Any) -> None:
    async def scenario() -> None:
        async with Server(answer_every_request(OK)) as server, make_http_client() as client:
            for headers in ({"authorization": "Bearer k\r\nx-injected: 1"}, {"x-a": "line\nbreak"},
                            {"x-nul": "a\0b"}, {"x-text": "caf\u00e9"}):
                with pytest.raises(InvalidRequest):
                    await post(client, server.url, headers=headers)
            with pytest.raises(InvalidRequest):
                await post(client, "ftp://127.0.0.1/v1")
            assert server.connections == 0
            assert transport_error(InvalidRequest("x"), responded=False).reason == Reason.UPSTREAM_ERROR

    run(scenario())


def test_closing_the_client_fails_what_is_in_flight(run: Any) -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await asyncio.sleep(10)

        async with Server(silent) as server:
            client = make_http_client()
            pending = asyncio.create_task(post(client, server.url))
            await asyncio.sleep(0.1)
            await client.aclose()
            with pytest.raises(UpstreamTransportError):
                await pending
            with pytest.raises(UpstreamTransportError):
                await post(client, server.url)

    run(scenario())


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def tls_server_context(authority: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*names).configure_cert(context)
    return context


def trusting(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


def test_tls_verifies_the_certificate_and_the_host_name(run: Any, authority: trustme.CA) -> None:
    async def scenario() -> None:
        names: list[str | None] = []
        right = tls_server_context(authority, "127.0.0.1", "localhost")
        right.sni_callback = lambda connection, name, context: names.append(name)
        async with Server(answer_every_request(OK), ssl_context=right) as server:
            async with make_http_client(ssl_context=trusting(authority)) as client:
                for _ in range(3):
                    assert await body_of(await post(client, server.url)) == b'{"ok":true}'
                assert server.connections == 1  # TLS connections are kept alive too
                response = await post(client, f"https://localhost:{server.port}/v1")
                assert await body_of(response) == b'{"ok":true}'
                assert "localhost" in names  # the host name went out as SNI
            async with make_http_client() as client:  # the default trust store does not know this CA
                with pytest.raises(ConnectFailed):
                    await post(client, server.url)
        wrong = tls_server_context(authority, "upstream.example")
        async with Server(answer_every_request(OK), ssl_context=wrong) as server:
            async with make_http_client(ssl_context=trusting(authority)) as client:
                with pytest.raises(ConnectFailed) as caught:
                    await post(client, server.url)  # a valid certificate, for another name
                assert "127.0.0.1" not in str(caught.value)
                assert transport_error(caught.value, responded=False).reason == Reason.UPSTREAM_UNAVAILABLE

    run(scenario())
