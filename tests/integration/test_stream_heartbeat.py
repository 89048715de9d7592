"""Heartbeats on one timer for every stream: each silent stream still gets its `: ping`, a busy one none.

The facade keeps one DeadlineTimer for the heartbeats of all its streams (a
stream adds an entry when it starts and drops it when it ends) instead of a
loop timer per stream. The scripted fake core runs on a real grpc.aio server;
the facade app is driven at the ASGI level, so the test can look at its timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest

from gateway_core.pb.gateway.v1 import chat_pb2_grpc
from http_facade.app import create_app
from http_facade.routes import Facade
from tests.facade_support import FakeChatService, Pause, text_deltas

PING = b": ping\n\n"


class AsgiFacade:
    """A facade app with its lifespan running; posts streamed requests and returns their bodies."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self.state: dict[str, Any] = {}
        self._stop = asyncio.Event()
        self._lifespan: asyncio.Future[None] | None = None

    @property
    def facade(self) -> Facade:
        facade: Facade = self.state["facade"]
        return facade

    async def __aenter__(self) -> AsgiFacade:
        started = asyncio.Event()
        sent_startup = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_startup
            if not sent_startup:
                sent_startup = True
                return {"type": "lifespan.startup"}
            await self._stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        self._lifespan = asyncio.ensure_future(
            self._app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}, receive, send))
        await asyncio.wait_for(started.wait(), 10)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._lifespan is not None
        await asyncio.wait_for(self._lifespan, 10)

    async def stream(self) -> bytes:
        raw = orjson.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080),
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"authorization", b"Bearer sk-tg-test-key"), (b"content-length", str(len(raw)).encode())],
            "state": dict(self.state),
        }
        body: list[bytes] = []
        done = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 200
            else:
                body.append(message.get("body", b""))

        try:
            await self._app(scope, receive, send)
        finally:
            done.set()
        return b"".join(body)


@pytest.fixture
async def core() -> AsyncIterator[tuple[FakeChatService, str]]:
    fake = FakeChatService()
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _texts(body: bytes) -> list[Any]:
    events = [event for event in body.split(b"\n\n") if event.startswith(b"data: {")]
    return [orjson.loads(event[6:])["choices"][0]["delta"].get("content") for event in events]


async def test_silent_streams_share_one_timer_and_each_gets_its_pings(core: tuple[FakeChatService, str]) -> None:
    fake, target = core
    first, *rest = text_deltas("late")
    fake.stream = [first, Pause(0.45), *rest]
    async with AsgiFacade(create_app(target, heartbeat_seconds=0.1)) as client:
        timer = client.facade.heartbeats
        streams = [asyncio.ensure_future(client.stream()) for _ in range(2)]
        deadline = asyncio.get_running_loop().time() + 5
        while len(timer) < 2:  # both streams started: an entry each on the one timer
            assert asyncio.get_running_loop().time() < deadline, "the streams never started"
            await asyncio.sleep(0.01)
        bodies = await asyncio.wait_for(asyncio.gather(*streams), 10)
        assert len(timer) == 0  # ended streams leave nothing behind
    for body in bodies:
        assert body.count(PING) >= 2  # re-armed after each ping while the core stays silent
        before, _, after = body.partition(PING)
        assert _texts(before) == [""] and _texts(after) == ["late", None]  # pings only in the silence
        assert body.endswith(b"data: [DONE]\n\n")


async def test_a_stream_that_writes_within_the_heartbeat_gets_no_ping(core: tuple[FakeChatService, str]) -> None:
    fake, target = core
    first, *rest = text_deltas("a", "b", "c", "d", "e")
    script: list[Any] = [first]
    for message in rest:
        script += [Pause(0.1), message]
    fake.stream = script  # ~0.6 s in all, never silent for more than 0.1 s
    async with AsgiFacade(create_app(target, heartbeat_seconds=0.4)) as client:
        body = await asyncio.wait_for(client.stream(), 10)
        assert len(client.facade.heartbeats) == 0
    assert PING not in body
    assert _texts(body) == ["", "a", "b", "c", "d", "e", None]
