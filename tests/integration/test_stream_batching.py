"""Chunks that are ready together leave together: fewer writes, the same events.

The facade writes every message the in-process core has already produced in
one ASGI write (event_stream._events with UnaryStreamCall.read_nowait). What
the client reads must not change: each chunk its own `data:` event, in order,
the usage chunk last, then [DONE]; and a client that does not read still
holds the core back (the stream run's queue is bounded).

The real core (auth, hold, settle on SQLite, the OpenAI provider against the
fake upstream) and the real facade app are driven at the ASGI level, so the
test sees each write and decides when the client "reads".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_core.chat.stream_run import QUEUE_DEPTH
from gateway_core.server import Core, start_core
from http_facade.app import create_app
from tests.fakes.openai_event_upstream import EventStreamUpstream, finish, first, text, usage
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.fakes.plans import words
from tests.gateway_support import settings_for

WORDS = 400
REPLY = " ".join(f"w{i}" for i in range(WORDS))
# The reply word by word, all in one write. Each delta's fingerprint differs from its neighbours', so the
# core never merges them (it would merge text deltas of one read and one head): these tests are about the
# facade sharing writes between chunks that are ready together, so there must be many chunks.
REPLY_EVENTS = [first(), *(text(word, system_fingerprint=f"fp_{i % 2}") for i, word in enumerate(words(REPLY))),
                finish(), usage(5, WORDS)]


class AsgiClient:
    """Runs the facade app's lifespan and one request at a time; records every body write."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._state: dict[str, Any] = {}
        self._stop = asyncio.Event()
        self._lifespan: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiClient:
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
            self._app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": self._state}, receive, send))
        await asyncio.wait_for(started.wait(), 10)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._lifespan is not None
        await asyncio.wait_for(self._lifespan, 10)

    async def stream(self, key: str, body: dict[str, Any], writes: list[bytes], gate: asyncio.Event) -> int:
        """POSTs body; each body write is appended to writes, the first one only once gate is set."""
        raw = orjson.dumps(body)
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080),
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"authorization", b"Bearer " + key.encode()), (b"content-length", str(len(raw)).encode())],
            "state": dict(self._state),
        }
        status = 0
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
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                return
            await gate.wait()  # a client that does not read: the write (and so the writer) waits
            writes.append(message.get("body", b""))

        try:
            await self._app(scope, receive, send)
        finally:
            done.set()
        return status


def _events(writes: list[bytes]) -> list[bytes]:
    body = b"".join(writes)
    assert body.endswith(b"\n\n")
    return body[:-2].split(b"\n\n")


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Core, AsgiClient, str, FakeOpenAIUpstream]]:
    async with EventStreamUpstream({"reply": REPLY_EVENTS}) as upstream:
        settings = settings_for(
            tmp_path,
            providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url}],
            models=[{"name": "m", "routes": [{"provider": "up", "model": "reply@together"}],
                     "input_price": 1, "output_price": 1, "max_output_tokens": 4096},
                    {"name": "broken", "routes": [{"provider": "up", "model": "fake-midstream-error"}],
                     "input_price": 1, "output_price": 1}],
        )
        core = await start_core(settings, address="127.0.0.1:0", metrics_address="")
        try:
            created = await core.store.create_first_account(
                "batching", pepper=settings.key_pepper, credit_micros=10**12, request_id="credit", key_name="k")
            assert created is not None
            async with AsgiClient(create_app(core.local.channel())) as client:
                yield core, client, created[2], upstream
        finally:
            await core.stop(1.0)


async def test_ready_chunks_share_writes_and_reach_the_client_as_separate_events_in_order(
    gateway: tuple[Core, AsgiClient, str, FakeOpenAIUpstream],
) -> None:
    core, client, key, _ = gateway
    produced = _count_chunks(core)
    writes: list[bytes] = []
    gate = asyncio.Event()
    request = asyncio.ensure_future(client.stream(key, {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}}, writes, gate))
    # The client holds its first write back until the core has produced as much as it may ahead of it.
    await _until(lambda: produced[0] >= QUEUE_DEPTH)
    gate.set()
    assert await asyncio.wait_for(request, 30) == 200

    events = _events(writes)
    assert all(event.startswith(b"data: ") and b"\n" not in event for event in events)
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(event[6:]) for event in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == WORDS  # usage last
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == REPLY
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    # Chunks that were ready together went out together: far fewer writes than events.
    assert len(writes) <= len(events) // 4


async def test_a_client_that_does_not_read_holds_the_core_back(
    gateway: tuple[Core, AsgiClient, str, FakeOpenAIUpstream],
) -> None:
    core, client, key, _ = gateway
    produced = _count_chunks(core)
    writes: list[bytes] = []
    gate = asyncio.Event()
    request = asyncio.ensure_future(client.stream(key, {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}, writes, gate))
    await _until(lambda: produced[0] >= QUEUE_DEPTH)
    await asyncio.sleep(0.3)  # time enough to run far ahead, if anything let it
    # In the blocked write: the first message and what was queued with it (at most a queue's worth);
    # then a queue's worth in the stream run's queue, and one in the run's hands.
    assert produced[0] <= 1 + 2 * QUEUE_DEPTH + 1
    assert writes == []
    gate.set()
    assert await asyncio.wait_for(request, 30) == 200
    events = _events(writes)
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(event[6:]) for event in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == REPLY
    assert all("usage" not in chunk for chunk in chunks)  # not asked for: never sent


async def test_an_error_ready_with_the_chunks_before_it_ends_the_same_write_after_them(
    gateway: tuple[Core, AsgiClient, str, FakeOpenAIUpstream],
) -> None:
    core, client, key, _ = gateway
    writes: list[bytes] = []
    gate = asyncio.Event()
    request = asyncio.ensure_future(client.stream(key, {
        "model": "broken", "messages": [{"role": "user", "content": "hi"}], "stream": True}, writes, gate))
    await asyncio.sleep(0.5)  # the two chunks and the in-band failure are all produced meanwhile
    gate.set()
    assert await asyncio.wait_for(request, 30) == 200
    events = _events(writes)
    chunks = [orjson.loads(event[6:]) for event in events]
    assert [c["choices"][0]["delta"].get("content") is not None for c in chunks[:-1]] == [True, True]
    assert set(chunks[-1]) == {"error"}  # the in-band error, last, and no [DONE] after it
    assert b"[DONE]" not in b"".join(writes)


def _count_chunks(core: Core) -> list[int]:
    """Counts the chunks the real provider yields to the core (instrumentation only)."""
    provider = core.providers["up"]
    real_stream = provider.stream
    produced = [0]

    async def counting(call: Any) -> AsyncIterator[Any]:
        async for chunk in real_stream(call):
            produced[0] += 1
            yield chunk

    provider.stream = counting  # type: ignore[method-assign]
    return produced


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)
