"""Slow clients cannot hold the facade: raw-socket slowloris against a running gateway.

Deadlines here are short (1 s for headers, 1.5 s for a body, 1 s keep-alive) so
that each case finishes quickly; the bounds asserted leave room for a shared,
busy test machine but would fail by far without the deadlines (a dribbling
client is otherwise served forever).
"""

from __future__ import annotations

import json
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import RunningGateway, running_gateway, settings_for

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
KEEP_ALIVE = 1.0
MAX_HEADER_BYTES = 8192
# How late a deadline may fire on a loaded 2-core machine before the test calls it missed.
SLACK = 2.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAIUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("slow"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url}],
        models=[{"name": "m", "routes": [{"provider": "up", "model": "fake-text"}], "input_price": 1, "output_price": 1}],
        http={"header_timeout_seconds": HEADER_TIMEOUT, "body_timeout_seconds": BODY_TIMEOUT,
              "keep_alive_seconds": KEEP_ALIVE, "max_header_bytes": MAX_HEADER_BYTES},
    )
    with running_gateway(settings) as running:
        yield running


@pytest.fixture(scope="module")
def key(gateway: RunningGateway) -> str:
    return gateway.create_key()[2]


def _connect(gateway: RunningGateway) -> socket.socket:
    host, port = gateway.http_url.removeprefix("http://").rsplit(":", 1)
    conn = socket.create_connection((host, int(port)))
    conn.settimeout(10)
    return conn


def _dribble(conn: socket.socket, data: bytes, interval: float, give_up_after: float = 30.0) -> tuple[bytes, float]:
    """Sends data one byte per interval until the server answers or closes; (reply, seconds taken)."""
    start = time.monotonic()
    for byte in data:
        if select.select([conn], [], [], interval)[0]:
            break
        try:
            conn.sendall(bytes([byte]))
        except OSError:  # reset: the server gave up on us, which is the point
            break
        if time.monotonic() - start > give_up_after:
            break
    reply = _read_until_closed(conn)
    return reply, time.monotonic() - start


def _read_until_closed(conn: socket.socket) -> bytes:
    reply = b""
    try:
        while chunk := conn.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    return reply


def _read_health(conn: socket.socket) -> bytes:
    """One whole /healthz response from a kept-alive connection (head and body may come apart)."""
    reply = b""
    while not reply.endswith(b'{"status":"ok"}'):
        chunk = conn.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply


def _chat_request(key: str, body: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body))


BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
# The built-in mock provider, for latencies that are the gateway's own.
MOCK_BODY = json.dumps({"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}).encode()


def _error_code(reply: bytes) -> str:
    return str(json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"])


def test_dribbled_headers_get_408_at_the_header_deadline(gateway: RunningGateway, key: str) -> None:
    with _connect(gateway) as conn:
        reply, took = _dribble(conn, _chat_request(key, BODY) + BODY, interval=0.1)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert _error_code(reply) == "request_timeout"
    assert HEADER_TIMEOUT * 0.9 <= took <= HEADER_TIMEOUT + SLACK


def test_a_silent_connection_is_closed_at_the_header_deadline(gateway: RunningGateway) -> None:
    with _connect(gateway) as conn:
        start = time.monotonic()
        reply = _read_until_closed(conn)
        took = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert HEADER_TIMEOUT * 0.9 <= took <= HEADER_TIMEOUT + SLACK


def test_a_dribbled_body_gets_408_and_the_upstream_sees_nothing(gateway: RunningGateway, key: str,
                                                                upstream: FakeOpenAIUpstream) -> None:
    before = len(upstream.requests)
    with _connect(gateway) as conn:
        conn.sendall(_chat_request(key, BODY))
        reply, took = _dribble(conn, BODY, interval=0.1)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"x-request-id: req_" in reply and _error_code(reply) == "request_timeout"
    assert BODY_TIMEOUT * 0.9 <= took <= BODY_TIMEOUT + SLACK
    assert len(upstream.requests) == before


def test_a_slow_but_timely_body_is_served(gateway: RunningGateway, key: str) -> None:
    with _connect(gateway) as conn:
        conn.sendall(_chat_request(key, BODY))
        third = len(BODY) // 3
        for piece in (BODY[:third], BODY[third:2 * third], BODY[2 * third:]):
            time.sleep(BODY_TIMEOUT / 6)
            conn.sendall(piece)
        reply = conn.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]


def test_an_idle_keep_alive_connection_is_closed(gateway: RunningGateway) -> None:
    with _connect(gateway) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        first = _read_health(conn)
        start = time.monotonic()
        rest = _read_until_closed(conn)
        took = time.monotonic() - start
    assert first.startswith(b"HTTP/1.1 200 ") and rest == b""
    assert KEEP_ALIVE * 0.9 <= took <= KEEP_ALIVE + SLACK


def test_the_next_request_on_a_kept_alive_connection_has_its_own_header_deadline(gateway: RunningGateway) -> None:
    with _connect(gateway) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_health(conn).startswith(b"HTTP/1.1 200 ")
        reply, took = _dribble(conn, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: a\r\n" * 100, interval=0.1)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert took <= HEADER_TIMEOUT + SLACK


@pytest.mark.parametrize("piece_size", [MAX_HEADER_BYTES * 2, 1024], ids=["one read", "many reads"])
def test_oversized_headers_get_431(gateway: RunningGateway, piece_size: int) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"a" * (MAX_HEADER_BYTES * 2) + b"\r\n\r\n"
    with _connect(gateway) as conn:
        try:
            for i in range(0, len(request), piece_size):
                conn.sendall(request[i:i + piece_size])
        except OSError:
            pass  # closed on us mid-send, after the answer
        reply = _read_until_closed(conn)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert _error_code(reply) == "request_header_fields_too_large"


def test_headers_just_under_the_limit_are_fine(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.http_url}/healthz", headers={"X-Pad": "a" * (MAX_HEADER_BYTES - 500)})
    assert response.status_code == 200


def test_slowloris_does_not_slow_other_clients(gateway: RunningGateway, key: str) -> None:
    """200 connections dribbling headers; normal clients keep their latency; every slow one is cut off."""
    client = httpx.Client(base_url=gateway.http_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def latencies(count: int) -> list[float]:
        taken = []
        for _ in range(count):
            start = time.monotonic()
            response = client.post("/v1/chat/completions", content=MOCK_BODY)
            taken.append(time.monotonic() - start)
            assert response.status_code == 200, response.text
        return taken

    with client:
        latencies(5)  # warm-up
        baseline = latencies(30)
        slow = [_connect(gateway) for _ in range(200)]
        closed_after: list[float] = []
        stop = threading.Event()

        def dribble_all() -> None:
            start = time.monotonic()
            open_ = list(slow)
            request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: a\r\n" * 1000
            position = 0
            while open_ and not stop.is_set():
                for conn in select.select(open_, [], [], 0.2)[0]:
                    open_.remove(conn)  # an answer or EOF: the server is done with it
                    closed_after.append(time.monotonic() - start)
                for conn in open_:
                    try:
                        conn.sendall(request[position:position + 1])
                    except OSError:
                        open_.remove(conn)
                        closed_after.append(time.monotonic() - start)
                position += 1

        dribbler = threading.Thread(target=dribble_all, name="slowloris")
        dribbler.start()
        try:
            time.sleep(0.2)  # let the slow connections start dribbling
            during = latencies(30)
        finally:
            dribbler.join(timeout=HEADER_TIMEOUT + SLACK + 5)
            stop.set()
            for conn in slow:
                conn.close()
    base_p95 = statistics.quantiles(baseline, n=20)[-1]
    p50, p95 = statistics.median(during), statistics.quantiles(during, n=20)[-1]
    print(f"baseline p50={statistics.median(baseline) * 1000:.1f}ms p95={base_p95 * 1000:.1f}ms; "
          f"under slowloris p50={p50 * 1000:.1f}ms p95={p95 * 1000:.1f}ms")
    assert len(closed_after) == len(slow), "every slow connection was cut off"
    assert max(closed_after) <= HEADER_TIMEOUT + SLACK
    assert p95 <= max(3 * base_p95, base_p95 + 0.25), (baseline, during)


def test_answers_are_not_held_back_by_nagle(gateway: RunningGateway) -> None:
    """The facade's sockets have TCP_NODELAY; without it each answer (head, then body) waits ~40 ms
    for the client's delayed ACK, whatever the gateway does."""
    with _connect(gateway) as conn:
        taken = []
        for _ in range(21):
            start = time.monotonic()
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            _read_health(conn)
            taken.append(time.monotonic() - start)
    assert statistics.median(taken) < 0.025, taken


def test_an_endless_body_after_the_answer_is_cut_off_without_a_second_answer(gateway: RunningGateway) -> None:
    """A GET answered without reading its chunked body: the body deadline still closes the connection."""
    with _connect(gateway) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        start = time.monotonic()
        reply = b""
        closed = False
        while not closed and time.monotonic() - start < 30:  # keep sending after the answer
            try:
                conn.sendall(b"1\r\na\r\n")
                while select.select([conn], [], [], 0.1)[0]:
                    chunk = conn.recv(65536)
                    reply += chunk
                    if not chunk:
                        closed = True
                        break
            except OSError:
                closed = True
        took = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1") == 1, reply
    assert BODY_TIMEOUT * 0.9 <= took <= BODY_TIMEOUT + SLACK, took
