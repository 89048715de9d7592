"""The facade's own HTTP/1.1 protocol (edge_protocol.py) over real sockets, under a real uvicorn server.

What the e2e suites do not reach: pipelining, Expect: 100-continue, HTTP/1.0,
HEAD, chunked request bodies, a client leaving mid-request (the app must see
http.disconnect), an app failing before it answers, flow control on a large
response to a slow reader, and uvicorn's shutdown closing idle connections.
A small ASGI app stands in for the facade so each behaviour is seen directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from http_facade.edge_limits import EdgeLimits
from http_facade.edge_protocol import EdgeHttpProtocol
from http_facade.serving import uvicorn_config

BIG = 16 * 1024 * 1024  # beyond what the kernel's socket buffers take in


class _App:
    """Answers by path; records what it saw for the tests to check."""

    def __init__(self) -> None:
        self.disconnected = threading.Event()
        self.seen_versions: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        self.seen_versions.append(scope["http_version"])
        if path == "/fail":
            raise RuntimeError("the app broke before answering")
        if path == "/early":  # answers without reading the body
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            body += message["body"]
            if not message["more_body"]:
                break
        if path == "/wait":  # answers only if the client stays: watches for http.disconnect
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
            return
        if path == "/slow":
            await asyncio.sleep(0.5)
        if path == "/big":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % BIG)]})
            for _ in range(BIG // 65536):
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        answer = json.dumps({"method": scope["method"], "path": path, "query": scope["query_string"].decode(),
                             "body": body.decode(), "version": scope["http_version"]}).encode()
        headers = [(b"content-type", b"application/json")]
        if path == "/chunked":  # no content-length: the protocol chunks it
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer[:5], "more_body": True})
            await send({"type": "http.response.body", "body": answer[5:]})
            return
        headers.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


class _Served:
    def __init__(self, app: _App, server: uvicorn.Server, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.server = server
        self.port = port
        self.loop = loop

    def connect(self) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port))
        conn.settimeout(10)
        return conn


@pytest.fixture()
def served() -> Iterator[_Served]:
    with _serving(EdgeLimits(keep_alive_seconds=30.0)) as running:
        yield running


@contextlib.contextmanager
def _serving(limits: EdgeLimits) -> Iterator[_Served]:
    app = _App()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, limits, log_level="critical", lifespan="on", access_log=False))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(sockets=[sock]),))
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield _Served(app, server, sock.getsockname()[1], loop)
    finally:
        server.should_exit = True
        thread.join(15)
        loop.close()
        sock.close()


def _read_response(conn: socket.socket, buffer: bytearray,
                   head_only: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response from conn (status line, lower-cased headers, decoded body); leftovers stay in buffer."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed mid-head: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    status, *lines = head.split(b"\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}

    def take(size: int) -> bytes:
        while len(buffer) < size:
            chunk = conn.recv(65536)
            assert chunk, "connection closed mid-body"
            buffer.extend(chunk)
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    if head_only:
        return status, headers, b""
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            while b"\r\n" not in buffer:
                buffer += conn.recv(65536)
            line, _, rest = bytes(buffer).partition(b"\r\n")
            buffer[:] = rest
            size = int(line, 16)
            body += take(size + 2)[:-2]
            if size == 0:
                return status, headers, body
    return status, headers, take(int(headers.get(b"content-length", b"0")))


def _closed(conn: socket.socket, within: float = 5.0) -> bool:
    conn.settimeout(within)
    try:
        return conn.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_pipelined_requests_are_answered_in_order(served: _Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"POST /a?n=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\none"
                     b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nthree")
        buffer = bytearray()
        answers = [json.loads(_read_response(conn, buffer)[2]) for _ in range(3)]
    assert [(a["path"], a["body"]) for a in answers] == [("/a", "one"), ("/slow", ""), ("/c", "three")]
    assert answers[0]["query"] == "n=1"


def test_expect_100_continue_gets_its_interim_answer_before_the_body(served: _Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = conn.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(b"body")
        status, _, body = _read_response(conn, bytearray())
    assert status == b"HTTP/1.1 200 OK" and json.loads(body)["body"] == "body"


def test_http_1_0_is_answered_and_closed(served: _Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        status, headers, body = _read_response(conn, bytearray())
        assert status == b"HTTP/1.1 200 OK" and headers[b"connection"] == b"close"
        assert json.loads(body)["version"] == "1.0"
        assert _closed(conn)


def test_connection_close_is_honoured(served: _Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"GET /bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, headers, _ = _read_response(conn, bytearray())
        assert status == b"HTTP/1.1 200 OK" and headers[b"connection"] == b"close"
        assert _closed(conn)


def test_keep_alive_serves_many_requests_on_one_connection(served: _Served) -> None:
    with served.connect() as conn:
        buffer = bytearray()
        for n in range(20):
            conn.sendall(b"POST /k HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%d" % (len(str(n)), n))
            status, headers, body = _read_response(conn, buffer)
            assert status == b"HTTP/1.1 200 OK" and b"connection" not in headers and b"date" in headers
            assert json.loads(body)["body"] == str(n)


def test_head_gets_the_headers_without_the_body(served: _Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n")
        buffer = bytearray()
        status, headers, _ = _read_response(conn, buffer, head_only=True)
        assert status == b"HTTP/1.1 200 OK" and int(headers[b"content-length"]) > 0
        conn.sendall(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")  # nothing of HEAD's body came in between
        status, _, body = _read_response(conn, buffer)
    assert status == b"HTTP/1.1 200 OK" and json.loads(body)["path"] == "/after"


def test_a_chunked_request_body_is_reassembled(served: _Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.05)
        conn.sendall(b"6\r\n world\r\n0\r\n\r\n")
        status, _, body = _read_response(conn, bytearray())
    assert status == b"HTTP/1.1 200 OK" and json.loads(body)["body"] == "hello world"


def test_a_response_without_content_length_is_chunked(served: _Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = _read_response(conn, bytearray())
    assert headers[b"transfer-encoding"] == b"chunked" and json.loads(body)["path"] == "/chunked"


def test_a_client_leaving_mid_request_is_an_http_disconnect(served: _Served) -> None:
    conn = served.connect()
    conn.sendall(b"POST /wait HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    time.sleep(0.2)
    assert not served.app.disconnected.is_set()
    conn.close()
    assert served.app.disconnected.wait(5), "the app never saw http.disconnect"


def test_an_app_failing_before_it_answers_is_a_500(served: _Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = _read_response(conn, bytearray())
        assert status == b"HTTP/1.1 500 Internal Server Error" and body == b"Internal Server Error"
        assert headers[b"connection"] == b"close" and _closed(conn)


def test_a_malformed_request_gets_an_openai_400_and_the_connection_closes(served: _Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
        status, headers, body = _read_response(conn, bytearray())
        assert status == b"HTTP/1.1 400 Bad Request" and headers[b"connection"] == b"close"
        assert json.loads(body)["error"]["code"] == "invalid_http_request"
        assert headers[b"x-request-id"].startswith(b"req_")
        assert _closed(conn)


def test_a_large_response_reaches_a_slow_reader_whole(served: _Served, monkeypatch: pytest.MonkeyPatch) -> None:
    paused: list[bool] = []
    pause_writing = EdgeHttpProtocol.pause_writing

    def counted(self: EdgeHttpProtocol) -> None:
        paused.append(True)
        pause_writing(self)

    monkeypatch.setattr(EdgeHttpProtocol, "pause_writing", counted)
    with served.connect() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)  # the server's buffer fills and it must wait for this reader
        status, _, body = _read_response(conn, bytearray())
    assert status == b"HTTP/1.1 200 OK" and len(body) == BIG and body.count(b"x") == BIG
    assert paused, "the transport never asked the app to wait: flow control went untested"


def test_shutdown_closes_idle_connections_and_finishes_running_requests(served: _Served) -> None:
    idle = served.connect()
    idle.sendall(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
    _read_response(idle, bytearray())  # now idle, kept alive (30 s)
    busy = served.connect()
    busy.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.1)
    served.server.should_exit = True
    with idle, busy:
        assert _closed(idle, 5), "the idle keep-alive connection was not closed at shutdown"
        status, headers, body = _read_response(busy, bytearray())
        assert status == b"HTTP/1.1 200 OK" and headers[b"connection"] == b"close"
        assert json.loads(body)["path"] == "/slow"


def test_a_request_answered_before_its_body_ended_then_idles_under_keep_alive() -> None:
    """/early answers without reading its chunked body; once that body ends, the connection is idle
    and the keep-alive timeout closes it (it is not left open without any deadline)."""
    with _serving(EdgeLimits(keep_alive_seconds=0.5, body_timeout_seconds=30.0)) as served, served.connect() as conn:
        conn.sendall(b"GET /early HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        status, _, _ = _read_response(conn, bytearray())
        assert status == b"HTTP/1.1 200 OK"
        conn.sendall(b"1\r\na\r\n")
        time.sleep(0.3)
        conn.sendall(b"1\r\nb\r\n0\r\n\r\n")  # the body ends 0.3 s later, within the body deadline
        start = time.monotonic()
        assert _closed(conn, 10), "the idle connection was never closed"
        assert time.monotonic() - start < 5
