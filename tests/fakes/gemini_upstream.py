"""A fake Gemini API: a real HTTP/1.1 server on 127.0.0.1, scripted by the model id in the URL path.

    with FakeGeminiUpstream(expected_key="AIza...") as up:   # or `async with`
        provider_base_url = up.base_url                       # "http://127.0.0.1:PORT/v1beta"
        ...
        up.requests[-1].body["contents"]                      # what the gateway sent
        up.disconnects                                        # responses the client closed early

It runs in its own thread and event loop (asyncio + h11, so it can drop a
connection mid-body the way a crashing upstream does), speaks Gemini's exact
wire format (POST /v1beta/models/{model}:generateContent, and
:streamGenerateContent?alt=sse with `data: {...}\\r\\n\\r\\n` events, usageMetadata
repeated on each, and no [DONE]), requires the x-goog-api-key header (a missing
key is Google's 403, a wrong one its 400 API_KEY_INVALID; a `?key=` query
parameter is refused outright) and records every request. Usage is computed
from each request and kept by the gateway's x-request-id (`usage_sent`).
Scripts (unknown model ids act as "gemini-text"):

    gemini-text            the configured reply (`reply=`), 3 words an event; honours candidateCount,
                           maxOutputTokens (MAX_TOKENS) and responseMimeType application/json
                           (a JSON value fitting responseJsonSchema)
    gemini-tools           two parallel functionCalls, the first with a thoughtSignature; once the last
                           content holds functionResponses, plain text, but only if every step of the
                           current turn echoes its signature (else Gemini 3's 400)
    gemini-thinking        thoughtsTokenCount and cachedContentTokenCount; thought parts when
                           thinkingConfig.includeThoughts is on
    gemini-max-tokens      three words, then finishReason MAX_TOKENS
    gemini-safety          the prompt is blocked: promptFeedback.blockReason SAFETY, no candidates
    gemini-slow            one event every `slow_interval` seconds, `slow_chunks` of them
    gemini-hang            sends nothing until the client goes away (or `hang_seconds`)
    gemini-reset           two events (or half a JSON body), then the connection drops
    gemini-midstream-error two events, then `data: {"error": {...503...}}`
    gemini-error-NNN       HTTP NNN with Google's error body: 400 INVALID_ARGUMENT (quoting a URL), 403
                           quoting the key it was given, 404, 429 with a RetryInfo of 7s, 500, 503, 504
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import h11

from tests.fakes.gemini_scripts import Plan, StreamPlan, plan_for

DEFAULT_REPLY = "Hello from the fake Gemini! This reply arrives a few words at a time."


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None when the body was not JSON
    connection: int = 0  # which TCP connection carried it (1, 2, ... in accept order)


class _Dropped(Exception):
    """The connection was aborted on purpose, or the client went away."""


class _ClientGone(_Dropped):
    """The client closed the connection before the response was complete."""


class FakeGeminiUpstream:
    """A scripted Gemini API server in a background thread. Start with `with` or start()."""

    def __init__(
        self,
        expected_key: str | None = None,
        *,
        reply: str = DEFAULT_REPLY,
        slow_interval: float = 0.05,
        slow_chunks: int = 2000,
        hang_seconds: float = 60.0,
    ) -> None:
        self.expected_key = expected_key
        self.reply = reply
        self.slow_interval = slow_interval
        self.slow_chunks = slow_chunks
        self.hang_seconds = hang_seconds
        self.requests: list[RecordedRequest] = []
        # The final usageMetadata each request was answered with, by the x-request-id the gateway sent.
        self.usage_sent: dict[str, dict[str, Any]] = {}
        # Every thoughtSignature handed out; only these are accepted back.
        self.signatures: set[str] = set()
        self.disconnects = 0
        self.port = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections = 0

    @property
    def base_url(self) -> str:
        """The Gemini API base URL, ending in /v1beta."""
        return f"http://127.0.0.1:{self.port}/v1beta"

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request received."""
        return self.requests[-1]

    def start(self) -> FakeGeminiUpstream:
        """Binds a free port and starts serving; returns self."""
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-gemini-upstream", daemon=True)
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

    async def until_disconnects(self, count: int, timeout: float = 5.0) -> bool:
        """Waits (without blocking the test's loop) until `count` early client disconnects were seen."""
        deadline = time.monotonic() + timeout
        while self.disconnects < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.disconnects >= count

    def wait_for_disconnects(self, count: int, timeout: float = 5.0) -> bool:
        """until_disconnects for sync tests."""
        deadline = time.monotonic() + timeout
        while self.disconnects < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.disconnects >= count

    def __enter__(self) -> FakeGeminiUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeGeminiUpstream:
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
        connection = _Connection(reader, writer)
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
        plan = plan_for(self, method, target, headers, body)
        self.requests.append(RecordedRequest(method, target, headers, body, number))
        try:
            await connection.play(plan)
        except _ClientGone:
            self.disconnects += 1
            raise _Dropped from None


class _Connection:
    """One HTTP/1.1 connection: h11 state plus a watch for the client closing early."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
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
            # Settle the watch before anyone reads again: bytes it already read belong to the next request.
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
            payload = json.dumps(plan.body, indent=2).encode()  # Google pretty-prints whole answers
            headers = [*_headers(plan.headers, "application/json; charset=UTF-8"),
                       ("content-length", str(len(payload)))]
            await self._send(h11.Response(status_code=plan.status, headers=headers))
            if plan.drop_after_half:
                await self._send(h11.Data(data=payload[: len(payload) // 2]))
                await self._abort()
            await self._send(h11.Data(data=payload))
            await self._send(h11.EndOfMessage())
            return
        await self._send(h11.Response(status_code=200, headers=_headers({}, "text/event-stream")))
        for sent, event in enumerate(plan.events):
            if plan.drop_after is not None and sent == plan.drop_after:
                await self._abort()
            if sent and plan.interval:
                await self._wait(plan.interval)
            await self._send(h11.Data(data=b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\r\n\r\n"))
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


def _headers(extra: dict[str, str], content_type: str) -> list[tuple[str, str]]:
    return [("content-type", content_type), ("x-goog-request-id", f"fake{time.monotonic_ns()}"),
            ("server", "scaffolding on HTTPServer2"), *extra.items()]
