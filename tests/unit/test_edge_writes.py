"""The edge protocol's writes: a response's head and body go out in one write, closing flushes first."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.server import ServerState

from http_facade.disconnect import DisconnectWatch
from http_facade.edge_cycle import BODY_FOLLOWS
from http_facade.edge_limits import EdgeLimits
from http_facade.edge_protocol import EdgeHttpProtocol
from http_facade.serving import uvicorn_config


class _Recording(asyncio.Transport):
    """Records what reaches the socket layer, as asyncio's own transport would send it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.events.append("write")

    def writelines(self, list_of_data: Any) -> None:  # one send of several buffers
        self.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.events.append("eof")

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def get_write_buffer_size(self) -> int:
        return 0


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    message = await receive()
    body = b"you sent " + message["body"]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _connected(app: Any = _hello) -> tuple[EdgeHttpProtocol, _Recording]:
    config = uvicorn_config(app, EdgeLimits(), lifespan="off")
    protocol = EdgeHttpProtocol(config, ServerState(), {})
    raw = _Recording()
    protocol.connection_made(raw)
    return protocol, raw


async def test_a_small_response_is_one_write() -> None:
    protocol, raw = _connected()
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(raw.writes) == 1, raw.writes
    head, _, body = raw.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ncontent-length: 11" in head
    assert body == b"you sent hi"
    protocol.connection_lost(None)


async def test_a_head_alone_leaves_at_the_end_of_the_step() -> None:
    protocol, raw = _connected()
    protocol.write_head(b"HTTP/1.1 200 OK\r\n\r\n")
    assert raw.writes == []
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]
    protocol.write(b"data: 1\n\n")  # later writes (a stream's chunks) go straight through
    assert raw.writes[-1] == b"data: 1\n\n"
    protocol.connection_lost(None)


async def test_a_large_body_leaves_with_its_head_in_one_send() -> None:
    protocol, raw = _connected()
    body = b"x" * 100_000
    protocol.write_head(b"HTTP/1.1 200 OK\r\n\r\n")
    protocol.write(body)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\n" + body]
    await asyncio.sleep(0)
    assert len(raw.writes) == 1, "the queued flush finds nothing left to send"
    protocol.connection_lost(None)


async def _stream_app(scope: Any, receive: Any, send: Any, *, promise: bool) -> None:
    """Starts a chunked response, optionally promising its first write in the same step (BODY_FOLLOWS)."""
    if scope["type"] != "http":
        return
    await receive()
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    if promise:
        start[BODY_FOLLOWS] = True
    await send(start)
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await asyncio.sleep(3600)  # a stream waiting for its next chunk


async def test_a_stream_head_promised_a_first_write_leaves_with_it_and_queues_no_flush() -> None:
    flushes: list[object] = []
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await _stream_app(scope, receive, send, promise=True)

    protocol, raw = _connected(app)
    original = protocol.write_head
    protocol.write_head = lambda head, *, flush_soon=True: (flushes.append(flush_soon),  # type: ignore[method-assign]
                                                             original(head, flush_soon=flush_soon))[1]
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    for _ in range(3):
        await asyncio.sleep(0)
    assert flushes == [False], "no flush callback for a head whose body follows in the same step"
    assert len(raw.writes) == 1
    head, _, body = raw.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
    assert body == b"9\r\ndata: 1\n\n\r\n"
    assert BODY_FOLLOWS.encode() not in raw.writes[0]  # the promise is no header
    protocol.connection_lost(None)
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()


async def test_a_stream_head_without_the_promise_still_gets_its_flush() -> None:
    flushes: list[object] = []
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await _stream_app(scope, receive, send, promise=False)

    protocol, raw = _connected(app)
    original = protocol.write_head
    protocol.write_head = lambda head, *, flush_soon=True: (flushes.append(flush_soon),  # type: ignore[method-assign]
                                                             original(head, flush_soon=flush_soon))[1]
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    for _ in range(3):
        await asyncio.sleep(0)
    assert flushes == [True]
    assert len(raw.writes) == 1  # the head still rode with the first write, which came first
    protocol.connection_lost(None)
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()


async def test_send_writes_before_it_returns_and_waits_only_for_room() -> None:
    sent: list[Any] = []
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        first = send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        sent.append(first)
        await first
        protocol.pause_writing()  # the client reads slowly: the next send waits for room
        waiting = asyncio.ensure_future(send({"type": "http.response.body", "body": b"done"}))
        await asyncio.sleep(0)
        sent.append(waiting.done())
        await release.wait()
        await waiting

    protocol, raw = _connected(app)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    for _ in range(3):
        await asyncio.sleep(0)
    assert not asyncio.iscoroutine(sent[0]), "a write that need not wait costs no coroutine"
    assert sent[1] is False and raw.writes == [], "a paused transport holds the body (and its head) back"
    protocol.resume_writing()
    release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(raw.writes) == 1 and raw.writes[0].endswith(b"\r\n\r\ndone")
    protocol.connection_lost(None)


async def test_closing_sends_what_is_held_before_the_eof() -> None:
    protocol, raw = _connected()
    protocol.write_head(b"HTTP/1.1 413 Payload Too Large\r\n\r\n")
    protocol.close()
    assert raw.writes == [b"HTTP/1.1 413 Payload Too Large\r\n\r\n"] and raw.events[:2] == ["write", "eof"]
    assert protocol.lingering and protocol.is_closing() and not raw.paused
    protocol.write(b"late")
    protocol.data_received(b"GET / HTTP/1.1\r\n\r\n")  # read and dropped while lingering
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 413 Payload Too Large\r\n\r\n"], "nothing goes out after the EOF"
    protocol.connection_lost(None)


async def test_a_disconnect_watch_on_the_edge_protocol_needs_no_task_and_fires_on_loss() -> None:
    cancelled = asyncio.Event()
    watches: list[DisconnectWatch] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        tasks_before = len(asyncio.all_tasks())
        watches.append(DisconnectWatch(receive, cancelled.set))
        assert len(asyncio.all_tasks()) == tasks_before, "the watch started a task"
        await cancelled.wait()

    protocol, _ = _connected(app)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    for _ in range(3):
        await asyncio.sleep(0)
    assert watches and not watches[0].seen and not cancelled.is_set()
    protocol.connection_lost(None)
    await asyncio.wait_for(cancelled.wait(), 1)
    assert watches[0].seen


async def test_a_stopped_disconnect_watch_stays_quiet() -> None:
    cancelled = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        DisconnectWatch(receive, cancelled.set).stop()
        await asyncio.sleep(3600)

    protocol, _ = _connected(app)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    for _ in range(3):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not cancelled.is_set()
    running = asyncio.all_tasks() - {asyncio.current_task()}
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


async def test_stopping_a_watch_twice_leaves_another_watch_of_the_request_armed() -> None:
    """A stream's route and its writer both stop the one watch: the second stop changes nothing."""
    stopped, armed = asyncio.Event(), asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        watch = DisconnectWatch(receive, stopped.set)
        DisconnectWatch(receive, armed.set)
        watch.stop()
        watch.stop()
        await asyncio.sleep(3600)

    protocol, _ = _connected(app)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    for _ in range(3):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    await asyncio.wait_for(armed.wait(), 1)
    assert not stopped.is_set()
    running = asyncio.all_tasks() - {asyncio.current_task()}
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
