"""Draining in EdgeMiddleware, on a tiny ASGI app: what draining and cutting do to requests in each state."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from http_facade.drain import Drain
from http_facade.edge import EdgeMiddleware

SSE = [(b"content-type", b"text/event-stream")]


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """/slow never answers; /stream sends one event and then hangs; anything else answers at once."""
    if scope["path"] == "/slow":
        await asyncio.Event().wait()
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await asyncio.Event().wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _client(drain: Drain) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=EdgeMiddleware(_app, drain)), base_url="http://t")


async def test_draining_refuses_new_requests_but_not_liveness() -> None:
    drain = Drain()
    async with _client(drain) as client:
        assert (await client.get("/ok")).status_code == 200
        drain.begin()
        refused = await client.get("/ok")
        assert refused.status_code == 503 and refused.headers["connection"] == "close"
        assert refused.headers["x-request-id"].startswith("req_")
        assert refused.json()["error"] == {
            "message": "The server is shutting down. Please retry your request.",
            "type": "server_error", "param": None, "code": "server_shutting_down",
        }
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
    assert drain.in_flight == 0


async def test_cut_answers_a_request_that_had_not_answered_yet_with_503() -> None:
    drain = Drain()
    async with _client(drain) as client:
        pending = asyncio.create_task(client.get("/slow"))
        while drain.in_flight == 0:
            await asyncio.sleep(0.01)
        assert drain.cut() == 1
        response = await asyncio.wait_for(pending, 5)
    assert response.status_code == 503 and response.json()["error"]["code"] == "server_shutting_down"
    assert response.headers["x-request-id"].startswith("req_")
    assert drain.in_flight == 0
    await asyncio.wait_for(drain.wait_idle(), 1)


async def test_cut_ends_a_started_stream_with_an_in_band_error() -> None:
    drain = Drain()
    async with _client(drain) as client:
        pending = asyncio.create_task(client.get("/stream"))
        while drain.in_flight == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        drain.cut()
        response = await asyncio.wait_for(pending, 5)
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e]
    assert events[0] == "data: one"
    assert '"code":"server_shutting_down"' in events[-1] and events[-1].startswith("data: {")
