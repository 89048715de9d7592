"""The server under every fake upstream: a real HTTP/1.1 server on 127.0.0.1 that plays scripted plans.

A dialect subclasses FakeUpstream and configures it: its base_path, its Wire
(response headers, JSON and SSE framing), its default reply and its plan_for,
which turns one request into a plan (see plans.py). The server runs in its own
thread and event loop (asyncio + h11, so it can drop a connection mid-body the
way a crashing upstream does), records every request, and counts the
responses a client closed before they were complete.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import h11

from tests.fakes.plans import Plan, SseFraming, StreamPlan


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str  # the request target: path and query, as sent
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None when the body was not JSON
    connection: int = 0  # which TCP connection carried it (1, 2, ... in accept order)

    @property
    def target(self) -> str:
        """The request target (path and query, as sent); the same as path."""
        return self.path


@dataclass(frozen=True)
class Wire:
    """How a dialect's responses look on the wire, apart from the bodies its scripts write."""

    sse: SseFraming
    request_id_header: str  # a response header carrying a fresh id
    request_id_prefix: str = "req_fake_"
    json_content_type: str = "application/json"
    json_indent: int | None = None
    fixed_headers: tuple[tuple[str, str], ...] = ()  # sent with every response, after the id

    def headers(self, extra: dict[str, str], content_type: str) -> list[tuple[str, str]]:
        """A response's headers: content type, a fresh request id, the fixed ones, then the plan's own."""
        request_id = (self.request_id_header, f"{self.request_id_prefix}{time.monotonic_ns()}")
        return [("content-type", content_type), request_id, *self.fixed_headers, *extra.items()]

    def json_payload(self, body: Any) -> bytes:
        """A whole JSON body."""
        return json.dumps(body, indent=self.json_indent).encode()


class _Dropped(Exception):
    """The connection was aborted on purpose, or the client went away."""


class _ClientGone(_Dropped):
    """The client closed the connection before the response was complete."""


class FakeUpstream:
    """A scripted upstream server in a background thread. Start with `with`, `async with` or start()."""

    wire: ClassVar[Wire]
    base_path: ClassVar[str] = ""  # what base_url adds to http://127.0.0.1:PORT
    default_reply: ClassVar[str] = "Hello from the fake upstream!"
    thread_name: ClassVar[str] = "fake-upstream"

    def __init__(
        self,
        expected_key: str | None = None,
        *,
        reply: str | None = None,  # None: the dialect's default_reply
        slow_interval: float = 0.05,
        slow_chunks: int = 2000,
        hang_seconds: float = 60.0,
    ) -> None:
        self.expected_key = expected_key
        self.reply = self.default_reply if reply is None else reply
        self.slow_interval = slow_interval
        self.slow_chunks = slow_chunks
        self.hang_seconds = hang_seconds
        self.requests: list[RecordedRequest] = []
        # The usage each request was answered with, by the x-request-id the gateway sent.
        self.usage_sent: dict[str, dict[str, Any]] = {}
        self.disconnects = 0
        self.port = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections = 0

    def plan_for(self, method: str, target: str, headers: dict[str, str], body: Any) -> Plan:
        """The dialect's answer to one request (already recorded in self.requests)."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """The base URL a provider is configured with: http://127.0.0.1:PORT plus base_path."""
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request received."""
        return self.requests[-1]

    def start(self) -> Self:
        """Binds a free port and starts serving; returns self."""
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Stops serving, drops open connections and joins the thread."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None

    def wait_for_disconnects(self, count: int, timeout: float = 5.0) -> bool:
        """Blocks until at least `count` early client disconnects were seen (True) or timeout."""
        deadline = time.monotonic() + timeout
        while self.disconnects < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.disconnects >= count

    async def until_disconnects(self, count: int, timeout: float = 5.0) -> bool:
        """wait_for_disconnects for async tests (does not block the test's loop)."""
        deadline = time.monotonic() + timeout
        while self.disconnects < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.disconnects >= count

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()

    # --- server side (runs on the fake's own loop) ---

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve_connection, sock=self._sock)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        # socket.create_server listeners skip asyncio's TCP_NODELAY; without it every
        # response waits ~40 ms for the client's delayed ACK.
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(reader, writer, self.wire)
        self._connections += 1
        number = self._connections
        try:
            while (request := await connection.read_request()) is not None:
                await self._answer(connection, number, *request)
                if not await connection.next_cycle():
                    break
        except (_Dropped, ConnectionError, h11.ProtocolError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): the task ends here either way, and the server callback must not see it cancelled
        finally:
            self._tasks.discard(task)
            connection.close()

    async def _answer(self, connection: _Connection, number: int, request: h11.Request, raw: bytes) -> None:
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        method, target = request.method.decode(), request.target.decode()
        self.requests.append(RecordedRequest(method, target, headers, body, number))
        try:
            await connection.play(self.plan_for(method, target, headers, body))
        except _ClientGone:
            self.disconnects += 1
            raise _Dropped from None


class _Connection:
    """One HTTP/1.1 connection: h11 state plus a watch for the client closing early."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire) -> None:
        self._reader, self._writer, self._wire = reader, writer, wire
        self._h11 = h11.Connection(h11.SERVER)
        self._watch: asyncio.Task[bytes] | None = None

    async def read_request(self) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                self._h11.receive_data(await self._reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def close(self) -> None:
        """Stops watching and closes the socket."""
        if self._watch is not None:
            self._watch.cancel()
        self._writer.close()

    async def next_cycle(self) -> bool:
        """Gets ready for the next request on this connection, if it stays open."""
        if self._watch is not None:
            # Settle the watch before anyone reads again: a StreamReader allows one
            # waiter, and bytes the watch already read belong to the next request.
            watch, self._watch = self._watch, None
            watch.cancel()
            try:
                self._h11.receive_data(await watch)
            except asyncio.CancelledError:
                pass
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False

    async def play(self, plan: Plan) -> None:
        """Sends the planned response, watching for the client going away."""
        self._watch = asyncio.ensure_future(self._reader.read(65536))
        if plan.delay:
            await self._wait(plan.delay)
        if not isinstance(plan, StreamPlan):
            payload = self._wire.json_payload(plan.body)
            headers = [*self._wire.headers(plan.headers, self._wire.json_content_type),
                       ("content-length", str(len(payload)))]
            await self._send(h11.Response(status_code=plan.status, headers=headers))
            if plan.drop_after_half:
                await self._send(h11.Data(data=payload[: len(payload) // 2]))
                await self._abort()
            await self._send(h11.Data(data=payload))
            await self._send(h11.EndOfMessage())
            return
        await self._send(h11.Response(status_code=200, headers=self._wire.headers(plan.headers, "text/event-stream")))
        if plan.together:
            await self._send(h11.Data(data=b"".join(map(self._wire.sse.frame, plan.events)) + self._wire.sse.end()))
            await self._send(h11.EndOfMessage())
            return
        for sent, event in enumerate(plan.events):
            if plan.drop_after is not None and sent == plan.drop_after:
                await self._abort()
            if sent and plan.interval:
                await self._wait(plan.interval)
            await self._send(h11.Data(data=self._wire.sse.frame(event)))
        if end := self._wire.sse.end():
            await self._send(h11.Data(data=end))
        await self._send(h11.EndOfMessage())

    async def _wait(self, seconds: float) -> None:
        assert self._watch is not None
        await asyncio.wait({self._watch}, timeout=seconds)
        self._check_client()

    def _check_client(self) -> None:
        if self._watch is not None and self._watch.done():
            data = self._watch.result()
            if not data:
                raise _ClientGone
            self._h11.receive_data(data)  # a pipelined request: keep it for later
            self._watch = asyncio.ensure_future(self._reader.read(65536))

    async def _send(self, event: h11.Event) -> None:
        self._check_client()
        data = self._h11.send(event)
        if data:
            self._writer.write(data)
            try:
                await self._writer.drain()
            except ConnectionError:
                raise _ClientGone from None

    async def _abort(self) -> None:
        """Drops the connection mid-response, after what was sent has had time to leave."""
        await asyncio.sleep(0.02)
        self._writer.transport.abort()
        raise _Dropped
